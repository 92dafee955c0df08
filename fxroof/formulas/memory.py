"""Data movement without arithmetic: copies, concatenation, gathers, scatters, in-place writes,
tensor creation, and metadata-only ops.

Views are not here: annotate.py recognises any op whose output aliases an input and gives it zero
bytes, whatever the op is.
"""
from __future__ import annotations

import math

import torch

from ..cost import Cost
from ..tensors import dtype_name, footprint, numel
from .registry import OpCall, formula

aten = torch.ops.aten


def _copy(call: OpCall, bytes_read: int | None = None, bytes_written: int | None = None) -> Cost:
    outs = call.outputs
    return Cost(0, call.bytes_read() if bytes_read is None else bytes_read,
                call.bytes_written() if bytes_written is None else bytes_written, "copy",
                dtype_name(outs[0].dtype) if outs else "")


@formula(aten.clone, aten._to_copy, aten.contiguous, aten.to, aten.lift_fresh_copy, aten.cat,
         aten.stack, aten.flip, aten.roll, aten.repeat, aten.tile, aten.repeat_interleave,
         aten.constant_pad_nd, aten.pad, aten.reflection_pad1d, aten.reflection_pad2d,
         aten.replication_pad1d, aten.replication_pad2d, aten.masked_select, aten.nonzero,
         aten._local_scalar_dense, aten.item, aten.im2col, aten.col2im, aten.pixel_shuffle,
         aten.pixel_unshuffle, aten.channel_shuffle, aten.native_channel_shuffle,
         # reached only when they copy: annotate.py gives their aliasing calls zero bytes
         aten.reshape, aten.flatten, aten.unflatten, aten._unsafe_view, aten.reshape_as,
         category="copy")
def copy(call: OpCall):
    return _copy(call)


def _gathered(call: OpCall, source: torch.Tensor, index_bytes: int) -> Cost:
    """A gather reads only the rows it picks: the index plus as many source bytes as it writes."""
    written = sum(footprint(t) for t in call.outputs)
    return _copy(call, index_bytes + numel(call.outputs[0]) * source.element_size(), written)


@formula(aten.embedding, aten.embedding_bag, aten._embedding_bag, category="copy")
def embedding(call: OpCall):
    weight, indices = call.args[0], call.args[1]
    return _gathered(call, weight, footprint(indices))


@formula(aten.index_select, aten.gather, aten.take_along_dim, category="copy")
def index_select(call: OpCall):
    source, index = call.args[0], call.get("index")
    return _gathered(call, source, footprint(index))


@formula(aten.index, category="copy")
def index(call: OpCall):
    source = call.args[0]
    indices = [t for t in call.args[1] if isinstance(t, torch.Tensor)]
    return _gathered(call, source, sum(footprint(t) for t in indices))


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


def _is_inplace(call: OpCall) -> bool:
    return call.op.__name__.split(".")[0].endswith("_")


@formula(aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index_put,
         category="copy")
def index_put(call: OpCall):
    self, indices, values = call.args[0], call.args[1], call.args[2]
    if not _is_inplace(call):   # functional form: copies self, then writes
        return _copy(call)
    return _scatter_into(call, self, [values, *indices], _indexed_elements(self, indices, values))


@formula(aten.index_copy, aten.index_copy_, aten.index_add, aten.index_add_, aten.index_fill,
         aten.index_fill_, aten.scatter, aten.scatter_, aten.scatter_add, aten.scatter_add_,
         aten.scatter_reduce, aten.scatter_reduce_, aten.masked_scatter, aten.masked_scatter_,
         aten.slice_scatter, aten.select_scatter, aten.diagonal_scatter, aten.as_strided_scatter,
         category="copy")
def scatter(call: OpCall):
    if not _is_inplace(call):
        return _copy(call)
    self = call.args[0]
    sources = [t for t in call.inputs[1:]]
    src = call.get("source", call.get("src"))
    elements = numel(src) if isinstance(src, torch.Tensor) else numel(call.get("index"))
    return _scatter_into(call, self, sources, elements)


@formula(aten.copy_, aten.copy, category="copy")
def copy_into(call: OpCall):
    dst, src = call.args[0], call.args[1]
    if not _is_inplace(call):
        return _copy(call)
    return Cost(0, footprint(src), footprint(dst), "copy", dtype_name(dst.dtype))


@formula(aten.fill_, aten.zero_, aten.fill, aten.zeros, aten.ones, aten.full, aten.arange,
         aten.zeros_like, aten.ones_like, aten.full_like, aten.new_zeros, aten.new_ones,
         aten.new_full, aten.scalar_tensor, aten.linspace, aten.eye, aten.rand, aten.randn,
         aten.randint, aten.rand_like, aten.randn_like, aten.randint_like, aten.bernoulli,
         aten.normal, aten.uniform_, aten.normal_, aten.bernoulli_, aten.lift_fresh,
         category="pointwise")
def fill(call: OpCall):
    # Generated values: nothing read, the output written. One op per element.
    outs = call.outputs
    return Cost(sum(numel(t) for t in outs), 0, sum(footprint(t) for t in outs), "pointwise",
                dtype_name(outs[0].dtype) if outs else "")


@formula(aten.empty, aten.empty_like, aten.new_empty, aten.empty_strided, aten.new_empty_strided,
         aten.empty_permuted, aten.resize_, category="other")
def allocate(call: OpCall):
    return Cost(0, 0, 0, "other", note="allocation only")


@formula(aten._assert_tensor_metadata, aten._assert_async, aten._assert_scalar,
         aten.sym_constrain_range, aten.sym_constrain_range_for_size,
         aten._functional_assert_async, aten._functional_sym_constrain_range,
         aten._functional_sym_constrain_range_for_size, aten.sym_size, aten.sym_stride,
         aten.sym_numel, aten.sym_storage_offset, aten.detach, aten.detach_, aten.alias,
         aten.set_, aten._make_dep_token, category="view")
def metadata(call: OpCall):
    return Cost(category="view")   # checks and bookkeeping: no kernel, no bytes
