"""Load a workload: `path/to/file.py[:FUNC]` whose FUNC (default `workload`) returns
(model, args) or (model, args, kwargs). Used by the command line."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "models"
DEFAULT_SPEC = str(BUNDLED / "llama.py")


class WorkloadError(ValueError):
    """A workload file or function could not be loaded or did not return a model."""


def parse_value(text: str):
    """--set values: ints, floats, booleans and None are parsed; anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_sets(pairs) -> dict:
    options = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise WorkloadError(f"--set expects KEY=VALUE with KEY a Python name, got {pair!r}")
        options[key.strip()] = parse_value(value.strip())
    return options


def load(spec: str, options: dict | None = None):
    """(model, args, kwargs) from a workload spec, called with `options` as keyword arguments."""
    path_text, _, func_name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    func_name = func_name or "workload"
    path = Path(path_text)
    if not path.is_file():
        raise WorkloadError(f"no workload file {path_text!r}")
    module_spec = importlib.util.spec_from_file_location(f"fxroof_workload_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise WorkloadError(f"{path}: could not be imported: {type(e).__name__}: {e}") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise WorkloadError(f"{path} has no function {func_name!r}")
    try:
        result = func(**(options or {}))
    except Exception as e:
        raise WorkloadError(f"{path}:{func_name}({_show(options)}) raised "
                            f"{type(e).__name__}: {e}") from e
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise WorkloadError(f"{path}:{func_name} must return (model, args) or "
                            f"(model, args, kwargs), got {type(result).__name__}")
    model, args, kwargs = (*result, {}) if len(result) == 2 else result
    return model, args, kwargs


def _show(options) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in (options or {}).items())
