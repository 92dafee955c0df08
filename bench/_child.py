"""Run a benchmark step in a fresh Python process, so each timing and peak RSS is its own."""
from __future__ import annotations

import json
import subprocess
import sys


# getrusage's ru_maxrss survives exec: a child started from a benchmark that has grown to 700 MB
# reports 700 MB however little it uses itself. The kernel's high-water mark of the child's own
# memory (VmHWM) starts afresh at exec; where there is none, ru_maxrss (kB, bytes on macOS).
PRELUDE = """
def peak_rss_bytes():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource, sys
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                 else 1024)
"""


def run_child(code: str) -> dict:
    """Run `code` with this interpreter, `peak_rss_bytes()` defined for it (its own peak, not
    its parent's); return the JSON object on its last line of output. A failing child stops
    the benchmark with the end of its stderr."""
    out = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
