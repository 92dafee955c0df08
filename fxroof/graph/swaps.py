"""One way to swap code while a capture runs: attributes (or a dict's items) set, then put
back as they were on exit, whatever happens inside."""
from __future__ import annotations

import contextlib

__all__ = ["swapped"]


def _get(owner, key):
    return owner[key] if isinstance(owner, dict) else getattr(owner, key)


def _set(owner, key, value) -> None:
    if isinstance(owner, dict):
        owner[key] = value
    else:
        setattr(owner, key, value)


@contextlib.contextmanager
def swapped(swaps):
    """Within the block each (owner, name, replacement) of `swaps` is in place: an attribute of
    a module or class, or an item of a dict. Each original is restored on exit, last first."""
    swaps = list(swaps)
    saved = [(owner, key, _get(owner, key)) for owner, key, _ in swaps]
    try:
        for owner, key, value in swaps:
            _set(owner, key, value)
        yield
    finally:
        for owner, key, value in reversed(saved):
            _set(owner, key, value)
