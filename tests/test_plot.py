"""The roofline plot writes real PNG and SVG files."""
import pytest
import torch
from helpers import fn_module

import fxroof

pytest.importorskip("matplotlib")


def test_png_and_svg(tmp_path):
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    r = fxroof.analyze(mlp, (torch.randn(8, 256),), chip="a100-80gb", mode="cudagraphs")
    png = r.plot_roofline(tmp_path / "roof.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = r.plot_roofline(tmp_path / "roof.svg")
    text = svg.read_text()
    # 3 kernels of 8 rows on an A100, replayed as a CUDA graph: the first linear under the 35 us
    # of entering the program, the GELU (1.64 us) under the graph's 1.34 us a kernel and its 1 us
    # floor; the second linear's one 8x256 tile splits its 1,024-long reduction in 5 parts, and
    # the kernel summing them (1.4 us) makes it memory-bound
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "overhead-bound (2)" in text and "memory-bound (1)" in text


def test_wrong_suffix_is_a_clear_error(tmp_path):
    r = fxroof.analyze(fn_module(torch.cos), (torch.randn(8),))
    with pytest.raises(ValueError, match=".png or .svg"):
        r.plot_roofline(tmp_path / "roof.pdf")
