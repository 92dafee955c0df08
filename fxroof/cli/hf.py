"""Hugging Face models from a config alone: no download, no weights, ready for ``fxroof.analyze``.

    model, args, kwargs = from_config("config.json", batch=8, seq=2048, dtype="bf16")
    report = fxroof.analyze(model, args, kwargs, chip="h100")
    # one decode step: a new token for each of 8 sequences over 4096 cached ones
    model, args, kwargs = from_config("config.json", batch=8, phase="decode", ctx=4096)

The model is built on the meta device by default, so a 70B config costs no memory and no time.
transformers is an optional dependency (``pip install fxroof[hf]``), imported only when called.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Mapping

import torch

from fxroof.errors import one_line
from fxroof.graph.capture import STATED_NOTES
from fxroof.graph.tensors import torch_dtype
from fxroof.studies.workload import counts

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["from_config", "config_options"]

# Architecture names that carry a next-token head; anything else is built as the bare AutoModel.
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_VISION_TOWERS = ("vision_tower", "vision_model", "visual", "vision_encoder")
_POSITION_TABLES = ("wpe", "position_embeddings", "embed_positions")


def config_options(options: Mapping[str, Any]) -> dict:
    """`options` (the command line's --set pairs) checked against from_config's keywords: an
    unknown name, or a count that is not a positive whole number, is a ValueError naming it (the
    call itself would fail deep inside transformers, in its words, not the user's)."""
    params = {name: p for name, p in inspect.signature(from_config).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for key, value in options.items():
        if key not in params:
            raise ValueError(f"option {key!r}: a config's model takes "
                             f"{', '.join(params)}")
        if counts(params[key]) and (type(value) is not int or value < 1):
            raise ValueError(f"option {key}={value}: {key} takes a whole number of 1 or more")
    # each phase reads one length: the other, given, would be ignored unseen
    unused = "seq" if options.get("phase") == "decode" else "ctx"
    if unused in options:
        used = "ctx (the tokens cached)" if unused == "seq" else "seq (the prompt's tokens)"
        raise ValueError(f"option {unused}={options[unused]}: phase="
                         f"{options.get('phase', 'prefill')} reads {used}, not {unused}")
    return dict(options)


def from_config(config: str | os.PathLike | Mapping[str, Any] | PretrainedConfig, *,
                batch: int = 1, seq: int = 128, dtype: str | torch.dtype | None = None,
                device: str | torch.device = "meta", phase: str = "prefill", ctx: int = 2048,
                image_size: int | None = None, source: int | None = None,
                images: int | None = None):
    """Build a transformers model from its config and dummy inputs for one forward pass.

    config: a path to a ``config.json``, the same content as a dict, or a ``PretrainedConfig``.
    Returns ``(model, args, kwargs)``: the model in eval mode on `device` with `dtype` weights
    (default: the config's ``dtype`` / ``torch_dtype``, as the checkpoint ships; fp32 without one),
    ``args = (input_ids,)`` with input_ids (batch, seq) of zeros (or the model's other first
    input, below), and ``kwargs`` (``use_cache=False`` for decoders and encoder-decoders, so the
    graph holds no cache object).

    ``phase="decode"`` (decoders only): one new token per sequence after `ctx` cached ones, as a
    serving step runs it, over a transformers ``StaticCache`` of ctx + 1 positions, which the
    step reads whole and writes its new keys and values into (a recurrent or hybrid model's
    layers hold convolution and recurrent states instead, of fixed size, which it rewrites):
    the model is wrapped in a ``DecodeStep`` whose args are the (batch, 1) token ids, the new
    token's position and the cache's tensors (`seq` is not used).

    Decoders (an ``architectures`` entry ending in ForCausalLM / LMHeadModel, or with no
    ``architectures``, a model type that has a causal-LM class and no masked-LM class) are built
    with ``AutoModelForCausalLM``; encoder-decoders (T5, BART, Marian, Whisper) with their
    generation head unless ``architectures`` names the bare model, and ``decoder_input_ids``
    of (batch, seq) in kwargs; the rest (BERT and other encoders, vision models) with
    ``AutoModel``. The first input is what the model's ``main_input_name`` asks for: token ids,
    images (batch, channels, size, size) at `image_size` or else the config's (`seq` not used), or
    Whisper's mel frames of a 30 s window. Dual encoders (CLIP, SigLIP: the zero-shot image
    classifiers) take token ids and ``pixel_values`` in kwargs.

    A vision-language decoder (Gemma 3, Llama 4, Qwen2.5-VL, LLaVA, Mistral 3: a config whose
    ``architectures`` names its ForConditionalGeneration class) is built with its output head and
    priced on text alone, the report says; ``images=N`` puts N images at the vision config's
    size ahead of each prompt's `seq` text tokens, as many image tokens each as its vision
    encoder and projector make (``get_image_features``, for models whose images are pixels
    alone), the encoder run in the prompt's step; a decode step caches them before its `ctx`.

    A ``quantization_config`` in the config is not applied: the weights are built in `dtype`,
    and ``fxroof.cli.checkpoint_quantization.of_config(config)`` gives the scheme the checkpoint
    ships with, as ``fxroof.analyze``'s ``quantize=`` (the command line applies it itself).

    On meta, run the model through ``torch.export`` (as ``fxroof.analyze`` does), not eagerly:
    transformers 5 decoders inspect position ids with ``.item()`` when not tracing, which no meta
    tensor can answer. ``device="cpu"`` gives real, randomly initialised weights.
    """
    transformers = _transformers()
    from transformers.models.auto import modeling_auto

    cfg, where = _load_config(config, transformers)
    seq2seq = _seq2seq_head(cfg, modeling_auto)
    vlm = None if seq2seq else _image_text_decoder(cfg, transformers, modeling_auto)
    causal = seq2seq is None and (vlm is not None or _is_causal(cfg, modeling_auto))
    # transformers 5 renamed the config's and from_config's torch_dtype to dtype.
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    dtype = torch_dtype(dtype or getattr(cfg, dtype_kw, None) or "fp32")
    auto = (getattr(transformers, seq2seq) if seq2seq else vlm if vlm else
            transformers.AutoModelForCausalLM if causal else transformers.AutoModel)
    if auto is transformers.AutoModel and \
            cfg.model_type not in modeling_auto.MODEL_MAPPING_NAMES and \
            cfg.model_type in modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        auto = transformers.AutoModelForImageClassification   # no bare model (PP-LCNet)
    try:
        with torch.device(device):
            model = auto.from_config(cfg, **{dtype_kw: dtype}).eval()
    except Exception as e:     # the model's own constructor checks its config as it likes
        raise ValueError(f"transformers cannot build a model for {where}: "
                         f"{one_line(e, name=not isinstance(e, ValueError))}") from e

    if images is not None and vlm is None:
        raise ValueError(f"images={images}: {where} builds {type(model).__name__}, which is no "
                         f"vision-language decoder (images= puts images in a prompt of one)")
    # an image's tokens in the prompt, as its vision encoder makes them, and its inputs
    per_image, pixels, sized = _vision_prompt(model, batch, images or 0, phase, dtype, device,
                                              where, image_size) if vlm else (0, None, {})
    limit = _learned_positions(model)
    if seq2seq and getattr(cfg, "max_target_positions", None):
        limit = cfg.max_target_positions   # the decoder's: Whisper's encoder takes mel frames
    if limit is not None and seq > limit and phase != "decode":
        raise ValueError(f"seq={seq} is longer than the {limit} learned positions of the model "
                         f"in {where}.")

    if phase == "decode":
        if not causal and not seq2seq:
            raise ValueError(f"phase=decode is for decoders; {where} builds "
                             f"{type(model).__name__}, which has no next-token cache")
        if limit is not None and ctx + 1 > limit:
            raise ValueError(f"ctx={ctx} leaves no learned position for the new token: the "
                             f"model in {where} has {limit}.")
        if seq2seq:     # the encoder ran once, over the source
            source = _source(model, source, limit, where, required=True)
            return _seq2seq_decode_step(transformers, model, batch, ctx, source, dtype, device,
                                        where)
        # a prompt's images are cached as tokens ahead of its text
        return _decode_step(transformers, model, batch, ctx + per_image * (images or 0),
                            dtype, device, where)
    if phase != "prefill":
        raise ValueError(f"unknown phase {phase!r}; choose prefill or decode")
    if per_image:
        image_ids = torch.full((batch, images * per_image), _image_token_id(model.config),
                               dtype=torch.long, device=device)
        text = torch.zeros((batch, seq), dtype=torch.long, device=device)
        return model, (torch.cat([image_ids, text], dim=1),), {"pixel_values": pixels,
                                                               **sized, "use_cache": False}
    if seq2seq:
        source = _source(model, source, limit, where, required=False)
    first = _main_input(model, batch, source or seq, dtype, device, where, image_size)
    kwargs = {"use_cache": False} if causal else {}
    if cfg.model_type in modeling_auto.MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        # a dual encoder (CLIP, SigLIP) embeds the texts and the images in one call
        text = getattr(cfg, "text_config", None)
        text_limit = getattr(text, "max_position_embeddings", None)
        if text_limit is not None and seq > text_limit:
            raise ValueError(f"seq={seq} is longer than the {text_limit} learned positions of "
                             f"the text encoder in {where}.")
        kwargs = {"pixel_values": _images(model, batch, dtype, device, where, image_size)}
    if getattr(cfg, "is_encoder_decoder", False):
        # the decoder's seq tokens; the encoder's are source=, else as many (teacher forcing)
        kwargs = {"decoder_input_ids": torch.zeros((batch, seq), dtype=torch.long, device=device),
                  "use_cache": False}
    return model, (first,), kwargs


def _main_input(model, batch: int, seq: int, dtype, device, where,
                image_size: int | None = None) -> torch.Tensor:
    """Zeros shaped as the model's first input names it: token ids (B, T); images (B, C, H, W)
    at the config's size; Whisper's log-mel frames (B, mels, 2 x the encoder's positions), the
    30 s window its feature extractor pads every clip to."""
    main = _main_input_name(model)
    cfg = model.config
    if main == "input_ids":
        return torch.zeros((batch, seq), dtype=torch.long, device=device)      # (B, T)
    if main == "pixel_values":
        return _images(model, batch, dtype, device, where, image_size)
    if main == "input_features" and hasattr(cfg, "num_mel_bins") and \
            hasattr(cfg, "max_source_positions"):
        return torch.zeros((batch, cfg.num_mel_bins, 2 * cfg.max_source_positions),
                           dtype=dtype, device=device)
    raise ValueError(f"{where} builds {type(model).__name__}, whose input {main!r} --hf does not "
                     f"make (it makes token ids, images and Whisper's mel features); build the "
                     f"model and its inputs in a workload file instead")


def _main_input_name(model) -> str:
    return getattr(model, "main_input_name", "input_ids")


def _source(model, source: int | None, limit: int | None, where, *, required: bool):
    """The encoder's length of an encoder-decoder: Whisper's fixed window of mel frames, or the
    `source` tokens given (a decode step needs them: `seq` and `ctx` are the decoder's)."""
    cfg = model.config
    if _main_input_name(model) == "input_features":
        if source is not None:
            raise ValueError(f"source={source}: {where} builds {type(model).__name__}, whose "
                             f"encoder takes a fixed window of {2 * cfg.max_source_positions} "
                             f"mel frames")
        return None if not required else cfg.max_source_positions
    if source is None:
        if required:
            raise ValueError(f"an encoder-decoder's decode step reads its encoder's output: "
                             f"give source=, the source's tokens ({where} builds "
                             f"{type(model).__name__}; ctx= is the decoder's tokens so far)")
        return None
    if not isinstance(source, int) or isinstance(source, bool) or source < 1:
        raise ValueError(f"source must be a positive number of tokens, got {source!r}")
    if limit is not None and source > limit:
        raise ValueError(f"source={source} is longer than the {limit} learned positions of the "
                         f"model in {where}.")
    return source


def _seq2seq_decode_step(transformers, model, batch: int, ctx: int, source: int, dtype, device,
                         where) -> tuple:
    """(step, args, kwargs) of one decoder step of an encoder-decoder after `ctx` tokens: its
    self-attention over a static cache of ctx + 1 positions, its cross-attention over the keys
    and values of `source` encoder positions, which the first step computed and every later
    one reads (transformers' EncoderDecoderCache marks them so: `is_updated`). The encoder's
    output is an input: it ran once, before the steps."""
    if ctx < 1:
        raise ValueError(f"ctx={ctx}: a decode step needs at least one cached token")
    try:
        caches = [transformers.StaticCache(config=model.config, max_batch_size=batch,
                                           max_cache_len=n, device=device, dtype=dtype)
                  for n in (ctx + 1, source)]
        cache = transformers.EncoderDecoderCache(*caches)
    except (TypeError, ValueError, NotImplementedError, AttributeError, KeyError) as e:
        raise ValueError(f"transformers cannot build the caches of an encoder-decoder step for "
                         f"{where}: {one_line(e)}") from e
    width = model.config.get_text_config(decoder=True).d_model
    encoded = torch.zeros((batch, source, width), dtype=dtype, device=device)   # (B, S, d)
    first = torch.zeros((batch, 1), dtype=torch.long, device=device)             # (B, 1)
    position = torch.tensor([ctx], dtype=torch.long, device=device)
    try:      # one step run eagerly sizes both caches (free on meta) and fills the cross one
        with torch.no_grad():
            model(decoder_input_ids=first, encoder_outputs=(encoded,), cache_position=position,
                  use_cache=True, **cache_kwarg(model, cache))
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AttributeError) as e:
        raise ValueError(f"{where}: an encoder-decoder step cannot run over static caches: "
                         f"{one_line(e)}") from e
    step = type(f"{type(model).__name__}Decode", (Seq2SeqDecodeStep,), {})(model, cache)
    return step, (first, position, encoded), {"cache": step.tensors()}


def _decode_step(transformers, model, batch: int, ctx: int, dtype, device, where) -> tuple:
    """(step, (input_ids,), {}) of one decode step after `ctx` tokens: a static cache of ctx + 1
    positions, as large as the step attends over, allocated up front as a server holds it."""
    if ctx < 1:
        raise ValueError(f"ctx={ctx}: a decode step needs at least one cached token")
    try:
        cache = transformers.StaticCache(config=model.config, max_batch_size=batch,
                                         max_cache_len=ctx + 1, device=device, dtype=dtype)
    except KeyError as e:       # a layer kind StaticCache has no class for
        raise ValueError(f"{where}: transformers has no static cache for its {e.args[0]!r} "
                         f"layers (its dynamic cache only): its decode step is not "
                         f"supported") from e
    except (TypeError, ValueError, NotImplementedError, AttributeError) as e:
        raise ValueError(f"transformers cannot build a static KV cache for {where}: "
                         f"{one_line(e)}") from e
    kinds = sorted({type(layer).__name__ for layer in cache.layers
                    if not (is_attention(layer) or is_recurrent(layer))})
    if kinds:
        raise ValueError(f"{where}: its cache holds layers that are neither key/value caches nor "
                         f"recurrent states ({', '.join(kinds)}): its decode step is not supported")
    if any(is_recurrent(layer) for layer in cache.layers):
        # a recurrent layer sizes its states at its first update, which it takes for a prompt:
        # one step run eagerly sizes them and leaves the layer in its one-token path
        _allocate(model, cache, batch, ctx, dtype, device, where, sizes_itself=False)
    elif not all(getattr(layer, "is_initialized", True) for layer in cache.layers):
        _allocate(model, cache, batch, ctx, dtype, device, where)
    step = type(f"{type(model).__name__}Decode", (DecodeStep,), {})(model, cache)
    input_ids = torch.zeros((batch, 1), dtype=torch.long, device=device)   # (B, 1)
    position = torch.tensor([ctx], dtype=torch.long, device=device)
    return step, (input_ids, position), {"cache": step.tensors()}


def _own_caches(model) -> list:
    """The cache classes a model's modeling file defines outside transformers' Cache (xLSTM's
    xLSTMCache), which its forward may ask for instead of a StaticCache."""
    from transformers import Cache
    module = sys.modules.get(type(model).__module__)
    return sorted(name for name, obj in vars(module or object).items()
                  if isinstance(obj, type) and name.endswith("Cache")
                  and obj.__module__ == getattr(module, "__name__", None)
                  and not issubclass(obj, Cache))


def _allocate(model, cache, batch: int, ctx: int, dtype, device, where,
              sizes_itself: bool = True) -> None:
    """Allocate a transformers 5 cache, which would otherwise allocate (and zero) itself inside
    every step's graph on its first update: one step run eagerly sizes each layer as the model's
    attention fills it (grouped and latent heads included; free on the meta device). A model
    that cannot run eagerly there gets the config's head count and size, if the cache can size
    itself from them (`sizes_itself`: key/value layers only)."""
    try:
        with torch.no_grad(), experts_batched(model), quiet_fallbacks():
            model(torch.zeros((batch, 1), dtype=torch.long, device=device),
                  cache_position=torch.tensor([ctx], dtype=torch.long, device=device),
                  use_cache=True, **cache_kwarg(model, cache))
    except AttributeError as e:    # it reads a cache of its own kind from transformers' cache
        own = _own_caches(model)
        if not own:
            raise
        raise ValueError(f"{where}: {type(model).__name__} keeps its decode state in a cache of "
                         f"its own ({', '.join(own)}), not transformers' cache: its decode step "
                         f"is not supported") from e
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        if not sizes_itself:
            raise ValueError(f"{where}: one decode step cannot run eagerly on {device} to size "
                             f"its recurrent states: {one_line(e)}") from e
        text = model.config.get_text_config(decoder=True)
        try:
            # a config takes num_key_value_heads only where its model has grouped heads; an
            # attribute of that name on another config (a keyword it ignored) says nothing
            grouped = "num_key_value_heads" in inspect.signature(type(text).__init__).parameters
            heads = (grouped and getattr(text, "num_key_value_heads", None)) or \
                text.num_attention_heads
            head_dim = getattr(text, "head_dim", None) or \
                text.hidden_size // text.num_attention_heads
            cache.early_initialization(batch, heads, head_dim, dtype, torch.device(device))
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"transformers cannot size a static KV cache for {where}: "
                             f"{one_line(e)}") from e


@contextlib.contextmanager
def quiet_fallbacks():
    """transformers' warnings that a fused kernel (mamba_ssm's, causal-conv1d's) falls back to
    PyTorch on this device off while inside: the step only sizes the cache, and the capture
    prices the fused kernels a GPU runs."""
    hub = logging.getLogger("transformers.integrations.hub_kernels")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)


@contextlib.contextmanager
def experts_batched(model):
    """The model's experts as batched products (transformers' "batched_mm") while inside: its
    grouped GEMM (torch._grouped_mm) runs eagerly on the meta device in bf16 only, and this
    step only sizes the cache."""
    configs = {id(c): (c, c._experts_implementation) for m in model.modules()
               if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_experts_implementation", None) not in (None, "batched_mm")}
    try:
        for c, _ in configs.values():
            c._experts_implementation = "batched_mm"
        yield
    finally:
        for c, before in configs.values():
            c._experts_implementation = before


class DecodeStep(torch.nn.Module):
    """A decoder's step over a transformers StaticCache whose tensors come in as inputs (`cache`:
    each layer's keys, values and count, heads on dim 1, the keyword a tensor-parallel split
    cuts to a rank's heads): a capture then sees them as inputs the step reads and updates in
    place (the footprint's KV cache), as a server holds its cache, not as tensors the step makes
    or weights it keeps."""

    def __init__(self, model, cache):
        super().__init__()
        self.model, self.cache = model, cache
        self.slots = [slots(layer) for layer in self.layers()]

    def layers(self) -> list:
        return list(self.cache.layers)

    def tensors(self) -> list:
        """The cache's tensors as forward takes them: a tuple a layer (`slots`)."""
        return [tuple(read(layer, slot) for slot in layer_slots)
                for layer, layer_slots in zip(self.layers(), self.slots)]

    def load(self, cache) -> None:
        """Put the input tensors in the cache's layers, as the capture sees them."""
        for layer, layer_slots, tensors in zip(self.layers(), self.slots, cache):
            if not tensors:             # a layer left empty (slots)
                continue
            for slot, tensor in zip(layer_slots, tensors):
                write(layer, slot, tensor)
            layer.device = tensors[0].device             # where the layer makes its indices
            if hasattr(layer, "indexer_device"):
                layer.indexer_device = tensors[0].device     # and its indexer its own

    def given(self, tokens, cache, mask: str, **more) -> dict:
        """The keywords the model takes of an all-ones mask over the cache and the new tokens
        (`mask`) and of `more`, as generate() passes them: models that would count the cached
        tokens from the cache's contents (OPT, BioGPT, BART) then have no data-dependent shapes
        to trace; and the cache. A purely recurrent model gets no mask, as generate() gives it
        none after the prompt (Mamba's would broadcast its one token over the positions)."""
        length = self.positions(cache)
        ones = length and torch.ones(tokens.shape[0], length, dtype=torch.long,
                                     device=tokens.device)
        taken = inspect.signature(self.model.forward).parameters
        return ({k: v for k, v in {mask: ones, **more}.items()
                 if k in taken and v is not None} | cache_kwarg(self.model, self.cache))

    def positions(self, cache) -> int | None:
        """The positions the step attends over: the first key/value layer's length; None for
        a purely recurrent model."""
        for layer_slots, tensors in zip(self.slots, cache):
            if layer_slots[0] == ("keys", None):
                return tensors[0].shape[2]
        return None

    def forward(self, input_ids, position, cache=()):
        self.load(cache)
        positions = position.unsqueeze(0).expand(input_ids.shape[0], 1)
        return self.model(input_ids, cache_position=position, use_cache=True,
                          **self.given(input_ids, cache, "attention_mask",
                                       position_ids=positions)).logits


class Seq2SeqDecodeStep(DecodeStep):
    """An encoder-decoder's decoder step over an EncoderDecoderCache whose tensors come in as
    inputs, as DecodeStep's do: each layer's self-attention keys, values and count, then its
    cross-attention keys and values, which the step reads and does not recompute."""

    def layers(self) -> list:
        return [*self.cache.self_attention_cache.layers, *self.cache.cross_attention_cache.layers]

    def forward(self, decoder_input_ids, position, encoder_hidden_states, cache=()):
        self.load(cache)
        for index in range(len(self.cache.cross_attention_cache.layers)):
            self.cache.is_updated[index] = True       # computed at the first step, read since
        return self.model(decoder_input_ids=decoder_input_ids,
                          encoder_outputs=(encoder_hidden_states,), cache_position=position,
                          use_cache=True,
                          **self.given(decoder_input_ids, cache, "decoder_attention_mask")).logits


def is_attention(layer) -> bool:
    """A key/value cache layer (transformers' StaticLayer and its kin)."""
    return all(hasattr(layer, f) for f in ("keys", "values", "cumulative_length"))


def is_recurrent(layer) -> bool:
    """A layer of recurrent states (transformers' LinearAttentionLayer: Mamba's, the linear
    attention of Qwen3-Next and hybrids), convolution and recurrent states of fixed size."""
    return all(hasattr(layer, f) for f in ("conv_states", "recurrent_states",
                                           "cumulative_length_linear"))


def slots(layer) -> list[tuple[str, int | None]]:
    """Where a cache layer keeps its tensors, in the order a step takes them: (attribute, index
    into the attribute's dict or None); a hybrid layer has both kinds. States a layer never
    filled (a model without the convolution) are left out."""
    # a key/value layer the eager step never filled (a text-only step's cross-attention, which
    # Mllama skips while its cache is empty) is left out, and so left empty
    found = [("keys", None), ("values", None), ("cumulative_length", None)] \
        if is_attention(layer) and getattr(layer, "keys", None) is not None else []
    if getattr(layer, "indexer_keys", None) is not None:
        # a sparse attention's indexer keeps keys of its own (DeepSeek-V3.2's, GLM-5's)
        found += [("indexer_keys", None), ("indexer_cumulative_length", None)]
    if is_recurrent(layer):
        found += [(kind, i) for kind in ("conv_states", "recurrent_states")
                  for i, t in getattr(layer, kind).items() if t is not None]
        found.append(("cumulative_length_linear", None))
    return found


def read(layer, slot: tuple[str, int | None]) -> torch.Tensor:
    name, index = slot
    return getattr(layer, name) if index is None else getattr(layer, name)[index]


def write(layer, slot: tuple[str, int | None], tensor: torch.Tensor) -> None:
    name, index = slot
    if index is None:
        setattr(layer, name, tensor)
    else:
        getattr(layer, name)[index] = tensor


def cache_kwarg(model, cache) -> dict:
    """The cache as the forward names it: ``cache`` from transformers 5.24 (which deprecates
    ``past_key_values``), ``past_key_values`` before."""
    new = "cache" in inspect.signature(model.forward).parameters
    return {"cache" if new else "past_key_values": cache}


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("fxroof --hf needs transformers; install it with: "
                          "pip install fxroof[hf]") from e
    return transformers


def _load_config(config, transformers) -> tuple:
    """(a PretrainedConfig, where it came from) from a path, a dict or a PretrainedConfig;
    ValueError naming the source."""
    if isinstance(config, transformers.PretrainedConfig):
        return config, type(config).__name__
    if isinstance(config, (str, os.PathLike)):
        where = f"config file {os.fspath(config)!r}"
        try:
            with open(config, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{where} does not exist.") from None
        except IsADirectoryError:
            raise ValueError(f"{where} is a directory; pass the config.json inside it.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{where} is not valid JSON: {one_line(e)}.") from None
        except OSError as e:
            raise ValueError(f"{where} cannot be read: {one_line(e)}.") from None
    elif isinstance(config, Mapping):
        data, where = dict(config), "the config dict"
    else:
        raise TypeError(f"config must be a path to config.json, a dict or a PretrainedConfig, "
                        f"not {type(config).__name__}")

    if not isinstance(data, dict):
        raise ValueError(f"{where} holds a JSON {type(data).__name__}, not an object.")
    # transformers 5 writes inf and nan as {"__float__": "Infinity"} and reads them back so
    decode = getattr(transformers.PretrainedConfig, "_decode_special_floats", None)
    data = decode(data) if decode else data
    model_type = data.pop("model_type", None)     # data is this function's own copy
    if not model_type:
        raise ValueError(f"{where} has no \"model_type\" key, so the model family is unknown.")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{where} names model_type {model_type!r}, which the installed "
                         f"transformers does not know.")
    try:
        return transformers.AutoConfig.for_model(model_type, **data), where
    except Exception as e:       # the config class validates its fields as it likes
        raise ValueError(f"{where} is not a {model_type} config the installed transformers "
                         f"accepts: {one_line(e, name=not isinstance(e, ValueError))}") from None


def _vision_prompt(model, batch: int, images: int, phase: str, dtype, device, where,
                   image_size) -> tuple:
    """(tokens an image makes, the prompt's pixels, the keywords sizing them) of a
    vision-language decoder's prompt with `images` images a sequence, and the note saying what
    the report prices: its vision encoder on them, or (no images) text alone."""
    if not images:
        towers = sorted((n for n, _ in model.named_modules()
                         if n.rpartition(".")[2] in _VISION_TOWERS), key=len)
        setattr(model, STATED_NOTES, (
            f"{type(model).__name__} is priced on text alone: its vision encoder"
            + (f" ({towers[0]})" if towers else "") + " does not run (images=N puts N images "
            "in each prompt)",))
        return 0, None, {}
    pixels, sized = _image_inputs(model, batch * images, dtype, device, where, image_size)
    per_image = _image_tokens(model, pixels, sized, where)
    setattr(model, STATED_NOTES, (
        f"each sequence's prompt holds {images} image{'s' * (images > 1)} of "
        f"{pixels.shape[-2]} x {pixels.shape[-1]} px ahead of its text, {per_image} tokens "
        f"each" + (": its vision encoder runs on them" if phase == "prefill" else
                   ", cached before the ctx= text tokens"),))
    return per_image, pixels, sized


def _image_inputs(model, count: int, dtype, device, where, image_size) -> tuple:
    """`count` zero images for a vision-language model, and the keywords that size them where
    its image features ask (`image_sizes`: Pixtral's, LLaVA-NeXT's), or a ValueError saying
    its images are not pixels alone."""
    vision = getattr(model.config, "vision_config", None) or model.config
    if not getattr(vision, "image_size", None):      # Qwen2.5-VL's patches of any image
        raise _not_pixels(model, where, "its vision config sizes no image")
    pixels = _images(model, count, dtype, device, where, image_size)
    asked = inspect.signature(model.get_image_features).parameters \
        if hasattr(model, "get_image_features") else {}
    sides = torch.tensor([list(pixels.shape[-2:])] * count, dtype=torch.long, device=device)
    return pixels, ({"image_sizes": sides} if "image_sizes" in asked else {})


def _not_pixels(model, where, why: BaseException | str) -> ValueError:
    why = why if isinstance(why, str) else one_line(why, name=True)
    return ValueError(f"images=: {where} builds {type(model).__name__}, whose images fxroof "
                      f"cannot make from pixels alone ({why}); give an image's tokens as text "
                      f"(seq=, ctx=)")


def _image_tokens(model, pixels: torch.Tensor, sized: dict, where) -> int:
    """The tokens one image makes in a vision-language model's prompt: its vision encoder's
    and projector's output for `pixels` (transformers' get_image_features, run on the model's
    device: free on meta), one image's rows of it."""
    try:
        with torch.no_grad():
            features = model.get_image_features(pixel_values=pixels, **sized)
        features = getattr(features, "pooler_output", features)
        first = features[0]              # (tokens, hidden): a batch's first, or a list's
        if first.dim() != 2:
            raise ValueError(f"image features of shape {tuple(first.shape)}")
        tokens = int(first.shape[0])
    except Exception as e:      # a model whose images need more than pixels (grids)
        raise _not_pixels(model, where, e) from e
    if _image_token_id(model.config) is None:
        raise ValueError(f"images=: {where} names no image token (image_token_id) for "
                         f"{type(model).__name__}'s prompt")
    return tokens


def _image_token_id(cfg) -> int | None:
    for name in ("image_token_id", "image_token_index"):
        if isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    return None


def _images(model, batch: int, dtype, device, where,
            image_size: int | None = None) -> torch.Tensor:
    """Zero images (B, C, H, W) at `image_size`, else at the size the model's (vision) config
    gives (a convolutional net's config often gives none: it takes any size)."""
    def sides(size) -> tuple:
        return (size, size) if isinstance(size, int) else tuple(size or ())[:2] or (0, 0)
    vision = getattr(model.config, "vision_config", None) or model.config
    built = getattr(vision, "image_size", None)
    if image_size and built and sides(image_size) != sides(built):
        raise ValueError(f"{where} builds {type(model).__name__} for {built}-px images (its "
                         f"config's image_size), not {image_size}: set image_size in the config "
                         f"to build it for another size")
    height, width = sides(image_size or built)
    if not height:
        raise ValueError(f"{where}: its config gives no image_size for the images "
                         f"{type(model).__name__} takes; say which, e.g. image_size=224 "
                         f"(--set image_size=224)")
    channels = getattr(vision, "num_channels", 3)
    return torch.zeros((batch, channels, height, width), dtype=dtype, device=device)


def _seq2seq_head(cfg, modeling_auto) -> str | None:
    """The transformers auto class of an encoder-decoder with its generation head (T5, BART,
    Marian, Whisper), unless the config's ``architectures`` names the bare model; None for the
    rest."""
    if not getattr(cfg, "is_encoder_decoder", False):
        return None
    archs = getattr(cfg, "architectures", None) or ()
    if archs and not any(a.endswith(("ForConditionalGeneration", "MTModel")) for a in archs):
        return None
    for mapping, auto in ((modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
                           "AutoModelForSeq2SeqLM"),
                          (modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
                           "AutoModelForSpeechSeq2Seq")):
        if cfg.model_type in mapping:
            return auto
    return None


def _image_text_decoder(cfg, transformers, modeling_auto):
    """The class a config's ``architectures`` names where it is a decoder that generates text
    behind another model's name (Gemma 3's, Llama 4's, Qwen2.5-VL's, LLaVA's, Mistral 3's
    ForConditionalGeneration: a vision-language model, transformers' image-text-to-text or
    causal-LM class of its type), as the auto class that builds it; None for the rest. Its
    prompt is text."""
    archs = getattr(cfg, "architectures", None) or ()
    for mapping, auto in ((modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                           "AutoModelForCausalLM"),
                          (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                           "AutoModelForImageTextToText")):
        named = mapping.get(cfg.model_type)
        if any(a == named and not a.endswith(_CAUSAL_SUFFIXES) for a in archs) and \
                hasattr(transformers, auto):
            return getattr(transformers, auto)
    return None


def _is_causal(cfg, modeling_auto) -> bool:
    if archs := getattr(cfg, "architectures", None):
        return any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
    return (cfg.model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and cfg.model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _learned_positions(model) -> int | None:
    """The longest sequence a model with a learned position table accepts; None when it has none.

    Checked here because on meta an out-of-range lookup does not fail: it would give a plausible but
    wrong graph. Found by module name (GPT-2 "wpe", BERT "position_embeddings", OPT
    "embed_positions").
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.endswith(_POSITION_TABLES):
            # RoBERTa counts positions from padding_idx + 1, BART and OPT from their `offset`
            # (2): so many rows are never reached.
            pad = module.padding_idx
            return module.num_embeddings - (0 if pad is None else pad + 1) - \
                getattr(module, "offset", 0)
    return None
