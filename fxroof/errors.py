"""An exception as one line: what every message fxroof prints about a failure goes through."""
from __future__ import annotations


def one_line(err: BaseException, *, innermost: bool = False, name: bool = False,
             width: int | None = None) -> str:
    """err's message on one line: its lines joined by "; " (or, given a width, the first line cut
    to it); an OSError as "reason: file". innermost: the deepest cause's message instead, where
    a library wrapped the real error. name: prefixed with the exception's type."""
    if innermost:
        while err.__cause__ is not None and str(err.__cause__):
            err = err.__cause__
    if isinstance(err, OSError) and err.filename:
        text = f"{err.strerror}: {err.filename}"
    else:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        text = lines[0][:width] if width and lines else "; ".join(lines)
    return f"{type(err).__name__}: {text}" if name or not text else text
