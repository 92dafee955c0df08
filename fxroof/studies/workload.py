"""Load a workload: `path/to/file.py[:FUNC]` whose FUNC (default `workload`) returns
(model, args) or (model, args, kwargs), called with the options as keywords."""
from __future__ import annotations

import contextlib
import inspect
import runpy
from pathlib import Path

from fxroof.errors import one_line

DEFAULT_SPEC = str(Path(__file__).resolve().parents[2] / "models" / "llama.py")   # Llama-2-7B


class WorkloadError(ValueError):
    """A workload file or function could not be loaded or did not return a model."""


class UnknownOption(WorkloadError):
    """A workload was given an option its function does not take."""


def parse_value(text: str):
    """--set values: ints, floats, booleans and None are parsed; anything else stays a string."""
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
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
    if path.suffix != ".py":     # runpy would run a zip or a directory, or fail in its own words
        hint = "; a transformers config goes to --hf" if path.suffix == ".json" else ""
        raise WorkloadError(f"{path}: a workload is a Python file (.py){hint}")
    try:
        namespace = runpy.run_path(str(path), run_name=f"fxroof_workload_{path.stem}")
    except Exception as e:
        raise WorkloadError(f"{path}: could not be imported: {one_line(e, name=True)}") from e
    func = namespace.get(func_name)
    if not callable(func):
        raise WorkloadError(f"{path} has no function {func_name!r}")
    _check_options(func, options or {}, f"{path}:{func_name}")
    try:
        result = func(**(options or {}))
    except Exception as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items())
        raise WorkloadError(f"{path}:{func_name}({shown}) raised {one_line(e, name=True)}") from e
    return unpack(result, f"{path}:{func_name}")


# an option's annotation when it takes a whole number (a batch, a length, a count), as a type
# or as the text a module with postponed annotations keeps
WHOLE = (int, int | None, "int", "int | None", "Optional[int]")


def counts(param: inspect.Parameter) -> bool:
    """Whether a function's parameter is annotated as a whole number (WHOLE)."""
    return param.annotation in WHOLE


def _check_options(func, options: dict, where: str) -> None:
    """Each option is one the workload function takes, and one it annotates as an int (a batch,
    a length, a count) takes a whole number of at least 0: 1.5 or -1 would reach its tensor
    constructors and fail there in torch's words, or build an empty input that analyzes to
    nothing."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):        # a builtin or C callable: nothing to read
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name, value in options.items():
        if name not in params and not takes_any:
            named = ", ".join(n for n, p in params.items()
                              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            raise UnknownOption(f"{where} has no option {name!r}; it takes {named or 'none'}")
        if name not in params or not counts(params[name]) or value is None:
            continue
        if type(value) is not int:
            raise WorkloadError(f"{where}: {name} takes a whole number, got {value!r}")
        if value < 0:
            raise WorkloadError(f"{where}: {name} must be 0 or more, got {value}")


def unpack(result, where: str) -> tuple:
    """(model, args as a tuple, kwargs as a dict) from what a workload function returned."""
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise WorkloadError(f"{where} must return (model, args) or (model, args, kwargs), got "
                            f"{type(result).__name__}")
    model, args, kwargs = (*result, {}) if len(result) == 2 else result
    return model, tuple(args) if isinstance(args, (tuple, list)) else (args,), dict(kwargs or {})
