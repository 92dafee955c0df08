"""The HTML report: one self-contained file with every kernel on the roofline and in the table."""
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import fxroof


class Page(HTMLParser):
    """What a reader of the file finds: points, table rows, references to elsewhere."""

    def __init__(self):
        super().__init__()
        self.points, self.rows, self.links, self.tips, self.scripts = [], [], [], [], 0
        self._in, self._tip, self._table = [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in.append(tag)
        self._table = attrs.get("id") if tag == "table" else self._table
        if tag == "circle" and attrs.get("class") == "k":
            self.points.append(attrs)
        self._tip = tag == "title" and "circle" in self._in
        body = "tbody" in self._in and self._table == "kernels"    # a browser adds tbody
        if tag == "tr" and body:                                  # to every table
            self.rows.append([])
        if tag == "td" and body:
            self.rows[-1].append(attrs.get("data-v"))     # a number's value, None for text
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and v]
        self.scripts += tag == "script"

    def handle_endtag(self, tag):
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag):]
        self._tip = False

    def handle_data(self, data):
        if self._tip:
            self.tips.append(data)


def mlp_report(**fields):
    mlp = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256), nn.Flatten(0))
    return fxroof.analyze(mlp, (torch.randn(8, 256),), chip="a100-80gb", **fields)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_every_kernel_is_a_point_and_a_row(tmp_path, mode):
    r = mlp_report(mode=mode)
    text = r.to_html(tmp_path / "report.html").read_text()
    page = Page()
    page.feed(text)
    assert len(page.points) == len(page.rows) == len(r.kernels)
    assert "http://" not in text and "https://" not in text and not page.links
    k = max(r.kernels, key=lambda k: k.flops)        # the 1024-wide linear: 2*8*256*1024 FLOPs
    assert k.flops == 2 * 8 * 256 * 1024
    assert any(k.op in tip and "4.19 MFLOP" in tip and k.regime in tip for tip in page.tips)
    assert f"({mode})" in text and "Eager (one kernel per op) vs compiled" in text


def test_kernels_without_flops_sit_under_the_plot(tmp_path):
    r = fxroof.analyze(nn.Embedding(100, 64), (torch.randint(0, 100, (4, 8)),))
    assert all(k.flops == 0 for k in r.kernels)
    page = Page()
    page.feed(r.to_html(tmp_path / "embed.html").read_text())
    assert len(page.points) == len(r.kernels)
    assert {p["cy"] for p in page.points} == {page.points[0]["cy"]}   # all in the strip


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
    "google-chrome")


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here")
def test_renders_in_a_headless_browser(tmp_path):
    page = mlp_report().to_html(tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=False)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000     # a page, not a blank


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here")
def test_clicking_a_column_sorts_the_kernel_table(tmp_path):
    mlp = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 64))
    r = fxroof.analyze(mlp, (torch.randn(8, 256),), mode="eager")
    page = r.to_html(tmp_path / "report.html")
    clicked = tmp_path / "clicked.html"       # the page, then a click on "bytes" (column 5)
    clicked.write_text(page.read_text().replace(
        "</body>", "<script>document.querySelectorAll('#kernels th')[4].click()</script></body>"))
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          clicked.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    after = Page()
    after.feed(dom)
    by_bytes = sorted(r.kernels, key=lambda k: k.bytes)
    assert [k.bytes for k in by_bytes] != [k.bytes for k in r.kernels]   # the click changes it
    assert [float(row[4]) for row in after.rows] == pytest.approx([k.bytes for k in by_bytes],
                                                                  rel=1e-5)


def test_terminal_tables_colour_regimes_only_on_a_terminal(monkeypatch):
    r = mlp_report()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    plain = str(r)
    assert "\033[" not in plain
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    coloured = str(r)
    assert "\033[90moverhead\033[0m" in coloured         # the GELU is launch-bound
    # the colour codes take no columns: the tables line up as in the plain text
    assert [len(line) for line in plain.splitlines()] == [
        len(re.sub("\033\\[[0-9;]*m", "", line)) for line in coloured.splitlines()]
    monkeypatch.setenv("NO_COLOR", "1")
    assert str(r) == plain


def test_a_sweep_page_draws_its_curves(tmp_path, capsys):
    from fxroof.cli.main import main
    from fxroof.report.units import seconds
    spec = tmp_path / "mlp.py"
    spec.write_text("import torch\n"
                    "def workload(batch=1):\n"
                    "    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(),\n"
                    "                                torch.nn.Linear(2048, 512))\n"
                    "    return model, (torch.randn(batch, 512, device='meta'),)\n")
    out = tmp_path / "sweep.html"
    assert main(["sweep", str(spec), "--over", "batch=1,64,4096", "--chip", "a100-80gb",
                 "--html", str(out)]) == 0
    text = out.read_text()
    page = Page()
    page.feed(text)
    assert len(page.points) == 2 * 3 and "http://" not in text and "https://" not in text
    for batch in (1, 64, 4096):        # each value's time, as analyze gives it there alone
        mlp = torch.nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
        alone = fxroof.analyze(mlp, (torch.randn(batch, 512, device="meta"),), chip="a100-80gb")
        assert any(tip.startswith(f"batch={batch}: {seconds(alone.time_s)} · {alone.regime}")
                   for tip in page.tips)
