"""transformers' code swapped, while a capture runs, for the kernels a GPU deployment runs in its
place: one context for them all.

- recurrent token mixers (Mamba's scans, the gated delta rule): their libraries' fused kernels,
  where transformers falls back to loops (fxroof.graph.fused_recurrences);
- latent attention in a decode step: absorbed, as FlashMLA and the serving engines run it, where
  transformers expands the whole cache each step (fxroof.graph.latent_attention);
- attention with sinks, and a prompt's sliding-window attention: one flash kernel, where
  transformers writes every score out or reads a mask of the window (fxroof.graph.flash_attention);
- a prompt's causal mask: left to the attention kernel, as transformers' eager run leaves it,
  where its trace builds the mask (fxroof.graph.compiled_branches.prompt_masks_as_eager);
- experts transformers runs densely (Llama 4's): each token's top-k alone, one grouped GEMM over
  the routed tokens, as engines route them (fxroof.graph.routed_experts).

Each swap is by name or class in the loaded transformers modules, undone on exit: the user's
model is untouched, and nothing happens where transformers is not loaded. A training step's
capture takes the recurrences only: the attention ops have no backward.
"""
from __future__ import annotations

import contextlib

from fxroof.graph.compiled_branches import prompt_masks_as_eager
from fxroof.graph.flash_attention import fused_sink_attention, windowed_sdpa
from fxroof.graph.fused_recurrences import fused_recurrences
from fxroof.graph.latent_attention import absorbed_latent_attention
from fxroof.graph.routed_experts import routed_dense_experts


@contextlib.contextmanager
def engine_kernels():
    """Within the block, every swap above is in place."""
    with fused_recurrences(), absorbed_latent_attention(), fused_sink_attention(), \
            windowed_sdpa(), prompt_masks_as_eager(), routed_dense_experts():
        yield
