"""transformers' reference loops for recurrent token mixers swapped, while a capture runs, for
the fused ops a GPU deployment runs in their place: Mamba's selective scan
(fxroof.graph.fused_scans), Mamba-2's chunked scan (fxroof.graph.fused_ssd), either's decode step
(fxroof.graph.fused_state_update), a decode step's short convolution
(fxroof.graph.fused_conv_window) and the gated delta rule (fxroof.graph.fused_delta_rules).

transformers calls each through a module-level function of the model's modeling file, which runs
the hub kernel where one is installed and otherwise a loop whose graph grows with the prompt. The
swap is by name in every loaded transformers module that defines it, undone on exit: the user's
model is untouched, and nothing happens where transformers is not loaded.
"""
from __future__ import annotations

import contextlib

from fxroof.graph import (fused_conv_window, fused_delta_rules, fused_scans, fused_ssd,
                          fused_state_update)
from fxroof.graph.compiled_branches import modeling_modules
from fxroof.graph.swaps import swapped

# one registry: transformers' function name -> fxroof's fused replacement
REPLACEMENTS = {**fused_scans.REPLACEMENTS, **fused_ssd.REPLACEMENTS,
                **fused_state_update.REPLACEMENTS, **fused_conv_window.REPLACEMENTS,
                **fused_delta_rules.REPLACEMENTS}
# the ops they call, backwards included
OPS = (fused_scans.OP, fused_scans.BACKWARD, fused_ssd.OP, fused_ssd.BACKWARD,
       fused_state_update.OP, fused_conv_window.OP, fused_delta_rules.CHUNKED,
       fused_delta_rules.RECURRENT, fused_delta_rules.BACKWARD)
# the library each forward op stands for, by op name (a backward op, "<name>_backward", is the
# same library's): what a report tells its reader was assumed
KERNELS = {"selective_scan": "mamba_ssm's selective scan",
           "ssd_chunk_scan": "mamba_ssm's chunked scan",
           "selective_state_update": "mamba_ssm's state update",
           "causal_conv1d_update": "causal-conv1d's window update",
           "chunked_delta_rule": "flash-linear-attention's chunked delta rule",
           "recurrent_delta_rule": "flash-linear-attention's fused recurrent delta rule"}


@contextlib.contextmanager
def fused_recurrences():
    """Within the block every loaded transformers module's function named in REPLACEMENTS
    calls fxroof's fused op; each is restored on exit."""
    with swapped((m, name, REPLACEMENTS[name]) for m in modeling_modules()
                 for name in REPLACEMENTS if callable(getattr(m, name, None))):
        yield
