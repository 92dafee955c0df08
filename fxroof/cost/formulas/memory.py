"""Data movement without arithmetic: copies, concatenation, gathers, scatters, in-place writes,
tensor creation, and metadata-only ops.

Views have no formula each: annotate.py recognises any call whose output aliases an input and
gives it zero bytes, whatever the op is, and an op whose schema says it returns views of its
inputs (view, permute, expand, select, split...) costs nothing by a rule.
"""
from __future__ import annotations

import math

import torch

from fxroof.cost.formulas.registry import RULES, Entry, OpCall, formula
from fxroof.cost.record import Cost
from fxroof.graph.aten_ops import aten
from fxroof.graph.tensors import dtype_name, footprint, numel


@formula(aten.clone, aten._to_copy, aten.contiguous, aten.to, aten.lift_fresh_copy, aten.cat,
         aten.stack, aten.flip, aten.roll, aten.repeat, aten.tile, aten.repeat_interleave,
         aten.reflection_pad1d, aten.reflection_pad2d,
         aten.replication_pad1d, aten.replication_pad2d, aten.reflection_pad3d,
         aten.replication_pad3d, aten.masked_select, aten.nonzero,
         aten._local_scalar_dense, aten.item, aten.im2col, aten.col2im, aten.pixel_shuffle,
         aten.pixel_unshuffle, aten.channel_shuffle, aten.native_channel_shuffle, aten.rot90,
         aten.block_diag, aten.diag_embed, aten._stack, aten._chunk_cat, aten.max_unpool2d,
         aten.max_unpool3d, aten.nonzero_static, aten._pack_padded_sequence, aten._lazy_clone,
         aten._copy_from, aten._copy_from_and_resize, aten.int_repr, aten._pin_memory,
         # reached only when they copy: annotate.py gives their aliasing calls zero bytes
         aten.reshape, aten.flatten, aten.unflatten, aten._unsafe_view, aten.reshape_as,
         aten._reshape_copy,
         # functional forms of the in-place writes below: they copy self, then write
         aten.index_put, aten._index_put_impl, aten._unsafe_index_put, aten.index_copy,
         aten.index_add, aten.index_fill,
         aten.scatter, aten.scatter_add, aten.scatter_reduce, aten.masked_scatter,
         aten.slice_scatter, aten.select_scatter, aten.diagonal_scatter, aten.as_strided_scatter,
         aten.copy, aten.put, aten.index_reduce, category="copy")
def copy(call: OpCall):
    return call.cost(0, "copy", call.out_dtype)


@formula(aten.constant_pad_nd, aten.pad, category="copy")
def pad(call: OpCall):
    """A copy; one that adds elements is the "fill" variant, two kernels under one call:
    ATen's constant_pad_nd fills a new tensor with the value, then copies the input into its
    middle (a pad of nothing but cropping is a clone), a fixed cost a chip may measure apart."""
    constant = call.get("mode", "constant") == "constant"
    try:
        grows = any(int(p) > 0 for p in call.get("pad", ()))
    except (TypeError, RuntimeError):       # a symbolic amount: which one is not known
        grows = False
    return call.cost(0, "copy", call.out_dtype, variant="fill" if constant and grows else "")


# Indirect reads; fusion keeps them as library kernels too (fuse/policy.py).
GATHERS = frozenset({aten.embedding, aten.embedding_bag, aten._embedding_bag,
                     aten._embedding_bag_forward_only, aten._unsafe_index, aten.take,
                     aten.index_select,
                     aten.gather, aten.take_along_dim, aten.index})


@formula(*GATHERS, category="copy")
def gather(call: OpCall):
    """A gather reads only the rows it picks: its indices (and offsets) plus as many source
    bytes as it writes."""
    source, *indices = call.inputs
    read = sum(footprint(t) for t in indices) + numel(call.outputs[0]) * source.element_size()
    return Cost(0, read, call.bytes_written(), "copy", call.out_dtype)


def _indexed_elements(self: torch.Tensor, indices, values: torch.Tensor) -> int:
    """Elements an index_put touches: the broadcast index shape times the un-indexed dims."""
    shapes = [t.shape for t in indices if isinstance(t, torch.Tensor)]
    if not shapes or any(t.dtype == torch.bool for t in indices if isinstance(t, torch.Tensor)):
        return numel(values)
    picked = math.prod(int(s) for s in torch.broadcast_shapes(*shapes))
    rest = math.prod(int(s) for s in self.shape[len(indices):])
    return max(picked * rest, numel(values))


def _scatter_into(call: OpCall, self: torch.Tensor, reads: list, elements: int) -> Cost:
    """An in-place write of `elements` into self: reads its sources, writes only what it touches."""
    read = sum(footprint(t) for t in reads if isinstance(t, torch.Tensor))
    return Cost(0, read, elements * self.element_size(), "copy", dtype_name(self.dtype))


@formula(aten.index_put_, aten._index_put_impl_, category="copy")
def index_put(call: OpCall):
    self, indices, values = call.args[0], call.args[1], call.args[2]
    return _scatter_into(call, self, [values, *indices], _indexed_elements(self, indices, values))


@formula(aten.index_copy_, aten.index_add_, aten.index_fill_, aten.scatter_, aten.scatter_add_,
         aten.scatter_reduce_, aten.masked_scatter_, aten.put_, aten.index_reduce_,
         category="copy")
def scatter(call: OpCall):
    src = call.get("source", call.get("src"))
    elements = numel(src) if isinstance(src, torch.Tensor) else numel(call.get("index"))
    return _scatter_into(call, call.args[0], call.inputs[1:], elements)


@formula(aten.embedding_dense_backward, category="copy")
def embedding_backward(call: OpCall):
    # one add per gradient element, into a zeroed table written whole
    return call.cost(numel(call.args[0]), "copy")


@formula(aten.copy_, category="copy")
def copy_into(call: OpCall):
    dst, src = call.args[0], call.args[1]
    return Cost(0, footprint(src), footprint(dst), "copy", dtype_name(dst.dtype))


# (their in-place forms, fill_, zero_, uniform_..., take these formulas: registry.lookup)
@formula(aten.fill, aten.zero, aten.zeros, aten.ones, aten.full, aten.arange, aten.range,
         aten.zeros_like, aten.ones_like, aten.full_like, aten.new_zeros, aten.new_ones,
         aten.new_full, aten.scalar_tensor, aten.linspace, aten.logspace, aten.eye,
         aten.hann_window, aten.hamming_window, aten.blackman_window, aten.bartlett_window,
         aten.kaiser_window, aten.lift_fresh, aten.lift,
         # random numbers
         aten.rand, aten.randn, aten.randint, aten.rand_like, aten.randn_like, aten.randint_like,
         aten.randperm, aten.bernoulli, aten.normal, aten.uniform, aten.random, aten.exponential,
         aten.cauchy, aten.log_normal, aten.geometric, aten.binomial, aten.poisson,
         aten.multinomial, aten._standard_gamma, aten._sample_dirichlet, aten._philox_normal,
         aten._philox_uniform, aten._fill_mem_eff_dropout_mask_, category="pointwise")
def fill(call: OpCall):
    # Generated values: nothing read, the output written. One op per element.
    return Cost(sum(numel(t) for t in call.outputs), 0, call.bytes_written(), "pointwise",
                call.out_dtype)


@formula(aten.empty, aten.empty_like, aten.new_empty, aten.empty_strided, aten.new_empty_strided,
         aten.empty_permuted, aten.resize_, aten.resize, aten.resize_as, aten._resize_output,
         aten._efficientzerotensor, aten.from_file, category="other")
def allocate(call: OpCall):
    return Cost(0, 0, 0, "other", note="allocation only")


@formula(aten._assert_tensor_metadata, aten._assert_async, aten._assert_scalar,
         aten.sym_constrain_range, aten.sym_constrain_range_for_size,
         aten._functional_assert_async, aten._functional_sym_constrain_range,
         aten._functional_sym_constrain_range_for_size, aten.sym_size, aten.sym_stride,
         aten.sym_numel, aten.sym_storage_offset, aten.detach, aten.alias, aten.set,
         aten._make_dep_token, aten.record_stream, aten._print, aten.unsafe_split,
         aten.unsafe_split_with_sizes, category="view")
def metadata(call: OpCall):
    return Cost(category="view")   # checks and bookkeeping: no kernel, no bytes


def _views(op) -> Entry | None:
    """An op whose schema returns only views of its inputs, or that changes a tensor's view in
    place (transpose_: aten tags it inplace_view), costs nothing; a view op's *_copy twin (aten
    tags it view_copy) materialises the view: its output written, as much read."""
    returns = op._schema.returns
    if torch.Tag.inplace_view in op.tags or returns and all(
            r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return _VIEW
    return _VIEW_COPY if torch.Tag.view_copy in op.tags else None


def view_copy(call: OpCall) -> Cost:
    return Cost(0, call.bytes_written(), call.bytes_written(), "copy", call.out_dtype)


_VIEW, _VIEW_COPY = Entry(metadata, "view"), Entry(view_copy, "copy")
RULES.append(_views)
