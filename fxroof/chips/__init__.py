"""The chip table: dense peaks, bandwidths and overheads of the chips fxroof knows, each sourced.

    chip("h100")            -> Chip (names are case-insensitive; aliases allowed)
    chip("NVIDIA H200")     -> Chip (a name a GPU's driver reports is an alias of its entry)
    chip("my_chip.json")    -> Chip from a user's chip file (schema: chip.py); a file whose
                               "base" names a shipped chip states only what differs, e.g. its
                               cluster's network: {"base": "a100-80gb", "network_GBps": 100}
    chips()                 -> every Chip in table order
"""
from __future__ import annotations

import difflib
import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Union

from fxroof.chips.chip import (DTYPES, OP_TABLES, OPTIONAL_SCALARS, PEAK_KEY, SCALARS, Chip,
                               ChipError, chip_from_json)

__all__ = ["Chip", "ChipError", "DTYPES", "chip", "chips", "load_chip_file", "table_chip"]

ChipSpec = Union[str, "os.PathLike[str]", Chip]


def _key(name: str) -> str:
    # "H100_SXM", "h100 sxm" and "h100-sxm" are the same name.
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _compact(name: str) -> str:
    # ... and so is "h100sxm": result files and scripts spell GPUs without separators
    # ("rtx6000ada", "a100_80gb"); the whole name still has to match
    return _key(name).replace("-", "")


def _parse(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ChipError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


TABLE_FILE = "fxroof/chips/chips.json"
# a chip file's key -> the Chip field whose source it carries (peaks: "peak_flops.<dtype>")
_FIELD_OF_KEY = {key: f for f, (key, _) in (*SCALARS.items(), *OPTIONAL_SCALARS.items(),
                                            *OP_TABLES.items())}


@functools.lru_cache(maxsize=None)
def _entries() -> tuple:
    """The shipped table's chip objects as the file holds them."""
    data = _parse(resources.files(__package__).joinpath("chips.json").read_text("utf-8"),
                  TABLE_FILE)
    entries = data.get("chips") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ChipError(f"{TABLE_FILE}: expected an object with a 'chips' list")
    return tuple(entries)


@functools.lru_cache(maxsize=None)
def _table() -> tuple[tuple[Chip, ...], dict[str, Chip], dict[str, Chip]]:
    """The shipped chips, an index of every name and alias, and the same index with the
    separators dropped (a spelling two chips share is left out of it); read once."""
    table = tuple(chip_from_json(e, TABLE_FILE, require_sources=True) for e in _entries())
    index: dict[str, Chip] = {}
    compact: dict[str, Chip | None] = {}
    for c in table:
        for name in (c.name, *c.aliases):
            if _key(name) in index:
                raise ChipError(f"{TABLE_FILE}: name {name!r} is used twice")
            index[_key(name)] = c
            seen = compact.setdefault(_compact(name), c)
            if seen is not c:
                compact[_compact(name)] = None
    return table, index, {k: c for k, c in compact.items() if c is not None}


def _lookup(name: str) -> Chip | None:
    _, index, compact = _table()
    return index.get(_key(name)) or compact.get(_compact(name))


def chips() -> list[Chip]:
    """Every chip in the shipped table, in table order."""
    return list(_table()[0])


def table_chip(name: str) -> Chip | None:
    """The shipped chip whose name or alias is `name` (case-insensitive), None where none is.
    The aliases hold the names GPU drivers report ("NVIDIA H200", "NVIDIA H100 80GB HBM3"), so a
    calibration finds its GPU's entry; nothing is guessed from a part of a name ("NVIDIA
    GeForce RTX 4080 SUPER" is not an RTX 4080); separators do not count ("rtx6000ada")."""
    return _lookup(name) if isinstance(name, str) else None


def load_chip_file(path: Union[str, "os.PathLike[str]"]) -> Chip:
    """A Chip from a JSON file holding one chip object (the schema of one chips.json entry)."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ChipError(f"chip file {str(p)!r} not found") from None
    except OSError as e:
        raise ChipError(f"chip file {str(p)!r} cannot be read: {e.strerror or e}") from None
    entry = _parse(text, str(p))
    if isinstance(entry, dict) and "base" in entry:
        entry = _on_base(entry, p)
    return chip_from_json(entry, str(p), require_sources=False)


def _on_base(entry: dict, path: Path) -> dict:
    """A chip file that names a shipped chip as its "base": that chip's figures and sources,
    the file's keys over them. A figure the file changes loses the base's source for the
    file's own (or none: the chip then says "unsourced"); name and title say it is not the
    shipped chip."""
    base_name = entry["base"]
    found = table_chip(base_name)
    if found is None:
        raise ChipError(f"chip file {str(path)!r}: base {base_name!r} is not a shipped chip "
                        f"(`fxroof chips` lists them)")
    base = next(e for e in _entries() if e["name"] == found.name)
    own = {k: v for k, v in entry.items() if k != "base"}
    sources = dict(base.get("sources", {}))
    for key, value in own.items():
        if key == PEAK_KEY and isinstance(value, dict):
            for dtype in value:
                sources.pop(f"peak_flops.{dtype}", None)
            sources.pop("peak_flops", None)
        elif key in _FIELD_OF_KEY:
            sources.pop(_FIELD_OF_KEY[key], None)
    sources.update(own.get("sources", {}))
    merged = {k: v for k, v in base.items() if k != "aliases"}
    merged.update(own)
    if isinstance(own.get(PEAK_KEY), dict):      # the dtypes it names; the others the base's
        merged[PEAK_KEY] = {**base[PEAK_KEY], **own[PEAK_KEY]}
    merged["sources"] = sources
    if "name" not in own:
        merged["name"] = path.stem
    if "title" not in own:
        merged["title"] = f"{base['title']}, as {path.name} states it"
    return merged


def chip(spec: ChipSpec) -> Chip:
    """A Chip from a name or alias (case-insensitive), a chip file path, or a Chip (returned as is)."""
    if isinstance(spec, Chip):
        return spec
    if isinstance(spec, os.PathLike):
        return load_chip_file(spec)
    if not isinstance(spec, str):
        raise ChipError(f"chip must be a name, a chip file path or a Chip, not {type(spec).__name__}")
    found = _lookup(spec)
    if found is not None:
        return found
    index = _table()[1]
    if spec.lower().endswith(".json") or "/" in spec or os.sep in spec or os.path.isfile(spec):
        return load_chip_file(spec)     # a path, not a misspelt name
    # Suggest table names, not aliases: "h100-sxm5" would only send the user round once more.
    close = list(dict.fromkeys(index[k].name for k in difflib.get_close_matches(
        _key(spec), list(index), n=6, cutoff=0.6)))[:3]
    if close:
        raise ChipError(f"unknown chip {spec!r}; did you mean: {', '.join(close)}?")
    names = ", ".join(c.name for c in _table()[0])
    raise ChipError(f"unknown chip {spec!r}; known chips: {names} (or give a chip file path)")
