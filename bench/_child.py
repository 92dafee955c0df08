"""Run a benchmark step in a fresh Python process, so each timing and peak RSS is its own."""
from __future__ import annotations

import json
import subprocess
import sys


def run_child(code: str) -> dict:
    """Run `code` with this interpreter; return the JSON object on its last line of output.
    A failing child stops the benchmark with the end of its stderr."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
