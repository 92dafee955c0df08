"""The quantization a transformers config says its checkpoint ships with, as fxroof's what-if.

A config.json with a ``quantization_config`` describes weights stored in fewer bits (DeepSeek-V3's
fp8 blocks, an AWQ or GPTQ int4 export, gpt-oss's MXFP4 experts). A model built from the config
alone has 16-bit weights, so without this an analysis would price a checkpoint its users never
run, and say nothing. `from_quantization_config` reads the methods fxroof can price into a
Quantization (fxroof.cost.whatif) that carries its source; the command line applies it unless
--quantize says otherwise. A method it cannot price is a QuantizationUnknown naming it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

from fxroof.cost.whatif import Quantization

__all__ = ["QuantizationUnknown", "from_quantization_config", "of_config"]


class QuantizationUnknown(ValueError):
    """A quantization_config whose method fxroof does not price."""


def _fp8(qc: Mapping[str, Any]) -> tuple[Quantization, str]:
    # transformers' FineGrainedFP8Config (DeepSeek-V3, Qwen3 FP8): fp8 weights in blocks, the
    # activations scaled per token and block of 128 at each call where "dynamic"
    dynamic = qc.get("activation_scheme", "dynamic") == "dynamic"
    block = qc.get("weight_block_size")
    blocks = f" in blocks of {block[0]} x {block[1]}" if block and len(block) == 2 else ""
    return (Quantization(matmul="fp8", activations="row" if dynamic else ""),
            f"fp8 weights{blocks}, {'dynamic' if dynamic else 'static'} activation scales")


def _fbgemm_fp8(qc: Mapping[str, Any]) -> tuple[Quantization, str]:
    return Quantization(matmul="fp8", activations="row"), "fp8 weights, per-row dynamic scales"


def _integer(qc: Mapping[str, Any]) -> tuple[Quantization, str]:
    # GPTQ and AWQ exports: weight-only integers with a scale a group (-1: a row)
    bits, group = int(qc.get("bits", 4)), int(qc.get("group_size", 128) or 0)
    if bits not in (4, 8):
        raise QuantizationUnknown(f"{qc.get('quant_method')} with {bits}-bit weights")
    group = max(group, 0)
    return (Quantization(weights=f"int{bits}", group=group),
            f"int{bits} weights, " + (f"a scale a group of {group}" if group else "a scale a row"))


def _bitsandbytes(qc: Mapping[str, Any]) -> tuple[Quantization, str]:
    if qc.get("load_in_4bit"):      # NF4/FP4 in blocks of 64, an absmax a block
        return Quantization(weights="int4", group=64), "4-bit weights in blocks of 64"
    if qc.get("load_in_8bit"):      # LLM.int8(): a scale a row
        return Quantization(weights="int8", group=0), "int8 weights, a scale a row"
    raise QuantizationUnknown("bitsandbytes loading neither 4 nor 8 bits")


def _mxfp4(qc: Mapping[str, Any]) -> tuple[Quantization, str]:
    # OCP MX: 4-bit elements, one 8-bit (e8m0) scale a block of 32
    return (Quantization(weights="int4", group=32, scale_bytes=1),
            "MXFP4 weights, an 8-bit scale a block of 32")


def _compressed_tensors(qc: Mapping[str, Any]) -> tuple[Quantization, str]:
    # llm-compressor's format: the first scheme group's weights and input activations
    groups = [g for g in (qc.get("config_groups") or {}).values() if isinstance(g, Mapping)]
    if not groups or not isinstance(groups[0].get("weights"), Mapping):
        raise QuantizationUnknown("compressed-tensors without a weight scheme")
    weights, inputs = groups[0]["weights"], groups[0].get("input_activations") or {}
    bits, kind = int(weights.get("num_bits", 16)), weights.get("type", "int")
    if inputs and int(inputs.get("num_bits", 16)) == 8 and bits == 8:
        dtype = "fp8" if kind == "float" else "int8"
        dynamic = bool(inputs.get("dynamic"))
        return (Quantization(matmul=dtype, activations="row" if dynamic else ""),
                f"{dtype} weights and activations, "
                f"{'dynamic' if dynamic else 'static'} activation scales")
    if not inputs and bits in (4, 8) and kind == "int":
        group = int(weights.get("group_size") or 0)
        return (Quantization(weights=f"int{bits}", group=max(group, 0)),
                f"int{bits} weights" + (f", a scale a group of {group}" if group > 0 else ""))
    if not inputs and bits == 8 and kind == "float":
        return Quantization(weights="fp8"), "fp8 weights"
    raise QuantizationUnknown(f"compressed-tensors with {bits}-bit {kind} weights and "
                              f"{inputs.get('num_bits', 16)}-bit activations")


# one registry: quant_method -> its reading
METHODS = {"fp8": _fp8, "fbgemm_fp8": _fbgemm_fp8, "gptq": _integer, "awq": _integer,
           "bitsandbytes": _bitsandbytes, "mxfp4": _mxfp4,
           "compressed-tensors": _compressed_tensors}

# The output head, which transformers' quantizers leave in the checkpoint's dtype where the
# config names no modules of its own (HfQuantizer.get_modules_to_not_convert: the output
# embeddings, `get_keys_to_not_convert`): a causal LM's lm_head, Whisper's proj_out
OUTPUT_HEADS = ("lm_head", "proj_out")


def _kept(method: str, qc: Mapping[str, Any]) -> tuple:
    """The module names the checkpoint keeps unquantized, as transformers reads the config:
    the list it names (bitsandbytes' llm_int8_skip_modules, llm-compressor's ignore), else the
    output head (llm-compressor's: none); AWQ keeps the head whatever the list, GPTQ unless its
    `lm_head` is set."""
    key = {"bitsandbytes": "llm_int8_skip_modules", "compressed-tensors": "ignore"}.get(
        method, "modules_to_not_convert")
    named = qc.get(key)
    if named is not None and not (isinstance(named, (list, tuple))
                                  and all(isinstance(k, str) for k in named)):
        raise QuantizationUnknown(f"{method} with {key}={named!r}: a list of module names")
    for pattern in named or ():
        try:
            re.compile(pattern.removeprefix("re:"))
        except re.error as e:
            raise QuantizationUnknown(f"{method} with {key} entry {pattern!r}, which is no "
                                      f"pattern ({e})") from None
    if method == "compressed-tensors":     # its scheme's targets less `ignore`, no default
        return tuple(named or ())
    if method == "gptq":
        head = () if qc.get("lm_head") else OUTPUT_HEADS
        return tuple(named or ()) + head
    if named is None or method == "awq":
        return tuple(named or ()) + OUTPUT_HEADS
    return tuple(named)


def from_quantization_config(qc: Mapping[str, Any] | Any) -> Quantization:
    """The Quantization a config's ``quantization_config`` (a dict, or transformers' object of
    it) describes, its `source` saying so; QuantizationUnknown for a method fxroof does not
    price."""
    if hasattr(qc, "to_dict"):
        qc = qc.to_dict()
    method = str(qc.get("quant_method", "")).lower()
    if method not in METHODS:
        raise QuantizationUnknown(f"quant_method {method or '(none)'!r} (fxroof prices "
                                  f"{', '.join(METHODS)})")
    quantization, what = METHODS[method](qc)
    kept = _kept(method, qc)
    # a list of every layer's router (some exports name each one) is shown by its first few
    shown = ", ".join(kept[:4]) + (f" and {len(kept) - 4} more" if len(kept) > 4 else "")
    return dataclasses.replace(quantization, kept=kept,
                               source=f"the config's quantization_config ({method}: {what}"
                                      + (f"; left unquantized: {shown}" if kept else "") + ")")


def of_config(config) -> Quantization | None:
    """The checkpoint quantization of a config (a config.json's path, a dict or a
    PretrainedConfig), None where it has none. A file that cannot be read as JSON has none
    here: building the model from it says what is wrong."""
    if isinstance(config, (str, os.PathLike)):
        try:
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
    qc = config.get("quantization_config") if isinstance(config, Mapping) \
        else getattr(config, "quantization_config", None)
    return from_quantization_config(qc) if isinstance(qc, Mapping) or hasattr(qc, "to_dict") \
        else None
