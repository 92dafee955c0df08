"""Facts about one graph node that several passes ask: which module made it, which of its
arguments it writes in place."""
from __future__ import annotations

import re

import torch.fx as fx

# node.meta key: the phase of a training step a node runs in ("forward", "backward",
# "optimizer"; fxroof.graph.training tags them); absent in an inference graph
PHASE_KEY = "fxroof.phase"
# node.meta key: an optimizer op that torch.optim's foreach path (its default on GPUs) runs once
# over every parameter of a dtype: (op, its occurrence in one parameter's update, dtype)
FOREACH_KEY = "fxroof.foreach"
RECOMPUTED_KEY = "fxroof.recomputed"   # a forward op the backward runs again (checkpointing)


def module_path(node: fx.Node) -> str:
    """The path of the innermost module that made `node` ("" for the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def path_in_model(node: fx.Node, package: str = "transformers.") -> str:
    """module_path relative to the outermost module whose class comes from `package`: the names
    a transformers checkpoint's config uses, whatever wraps its model (a decode step, a
    generation's prompt); module_path where no class does."""
    stack, path = (node.meta.get("nn_module_stack") or {}).values(), module_path(node)
    root = next((p for p, cls in stack if str(getattr(cls, "__module__", cls)).startswith(
        package)), None)
    if not root:
        return path
    return "" if path == root else path.removeprefix(root + ".")


def fold_layers(path: str) -> str:
    """'layers.3.mlp' -> 'layers.*.mlp': repeated blocks read as one row."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", path)


def _writes(node: fx.Node) -> list:
    """(position, schema argument) of each argument the op writes in place, as its schema says."""
    schema = getattr(node.target, "_schema", None)
    return [] if schema is None else [(i, a) for i, a in enumerate(schema.arguments)
                                      if a.alias_info is not None and a.alias_info.is_write]


def mutates(node: fx.Node) -> bool:
    """The op writes one of its arguments in place."""
    return bool(_writes(node))


def written_args(node: fx.Node) -> list[fx.Node]:
    """The argument nodes an op writes in place (`self` of index_copy_, `out=` buffers)."""
    values = [node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
              for i, a in _writes(node)]
    return [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])
            if isinstance(v, fx.Node)]
