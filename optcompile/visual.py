"""Draw an autograd graph with graphviz, naming the tensors a meta-learning loop cares about.

Written after torchviz's ``make_dot``, as TorchOpt's ``visual`` module is: grey boxes are
backward functions, light blue ones are leaf tensors that receive ``.grad`` (and backward
functions of named non-leaf tensors), orange ones are saved tensors and green ones are the
outputs. ``graphviz`` (the Python package) is only imported when a graph is made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import optree
import torch

if TYPE_CHECKING:
    import graphviz

__all__ = ["make_dot", "resize_graph"]

_SAVED = "_saved_"
_NODE_ATTR = {
    "style": "filled",
    "shape": "box",
    "align": "left",
    "fontsize": "10",
    "ranksep": "0.1",
    "height": "0.2",
    "fontname": "monospace",
}


def _is_named_tensor(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )


def _collect_names(params: Any, names: dict[int, tuple[Any, str]]) -> None:
    """Add ``id(tensor or grad_fn) -> (object, name)`` for every name in ``params``."""

    def add(obj: Any, name: str) -> None:
        names[id(obj)] = (obj, name)
        if isinstance(obj, torch.Tensor) and obj.grad_fn is not None:
            # Tensors made by one fused optimizer step share its grad_fn: list every name.
            known = names.get(id(obj.grad_fn))
            joined = name if known is None or name in known[1] else f"{known[1]}, {name}"
            names[id(obj.grad_fn)] = (obj.grad_fn, joined)

    if hasattr(params, "visual_contents"):
        if params.visual_contents is None:
            raise ValueError(
                "params holds a state without visual_contents: extract it with "
                "extract_state_dict(..., enable_visual=True)"
            )
        for obj, name in params.visual_contents.items():
            add(obj, name)
    elif isinstance(params, Mapping):
        for name, tensor in params.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"params[{name!r}] must be a tensor, got {type(tensor).__name__}")
            add(tensor, str(name))
    elif _is_named_tensor(params):
        add(params[1], params[0])
    elif isinstance(params, list | tuple | Iterator):
        for item in params:
            _collect_names(item, names)
    else:
        raise TypeError(
            "params must be a mapping name -> tensor, an iterator of (name, tensor) pairs, a "
            "state with visual_contents, or a list or tuple of those; "
            f"got {type(params).__name__}"
        )


def _fn_label(fn: Any, show_attrs: bool, max_attr_chars: int) -> str:
    """The class name of ``fn`` and, with ``show_attrs``, a table of its saved attributes."""
    name = type(fn).__name__
    if not show_attrs:
        return name
    rows = {}
    for attr in dir(fn):
        if not attr.startswith(_SAVED):
            continue
        value = getattr(fn, attr)
        if isinstance(value, torch.Tensor):
            text = "[saved tensor]"
        elif isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value):
            text = "[saved tensors]"
        else:
            text = str(value)
        if len(text) > max_attr_chars:
            text = text[: max_attr_chars - 3] + "..."
        rows[attr[len(_SAVED) :]] = text
    if not rows:
        return name
    width = max(map(len, rows))
    lines = [f"{key:<{width}}: {text}" for key, text in rows.items()]
    return "\n".join([name, "-" * max(len(name), *map(len, lines)), *lines])


def _saved_tensors(fn: Any) -> Iterable[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for the tensors a backward function saved for its backward."""
    for attr in dir(fn):
        if attr.startswith(_SAVED):
            value = getattr(fn, attr)
            name = attr[len(_SAVED) :]
            if isinstance(value, torch.Tensor):
                yield name, value
            elif isinstance(value, tuple):
                for i, item in enumerate(value):
                    if isinstance(item, torch.Tensor):
                        yield f"{name}[{i}]", item
    for i, tensor in enumerate(getattr(fn, "saved_tensors", ())):  # custom autograd.Function
        yield f"saved_tensors[{i}]", tensor


def make_dot(
    var: Any,
    params: Any = None,
    show_attrs: bool = False,
    show_saved: bool = False,
    max_attr_chars: int = 50,
) -> graphviz.Digraph:
    """Return the graphviz graph of the backward pass that produced ``var``.

    The graph is walked from each output's ``grad_fn`` through ``next_functions``; an
    ``AccumulateGrad`` node adds its leaf ``variable``. A named leaf tensor is labelled with its
    name, a named non-leaf tensor labels its ``grad_fn``.

    Args:
        var: an output tensor or a pytree of them.
        params: names for tensors: a mapping ``name -> tensor``, an iterator of ``(name, tensor)``
            such as ``module.named_parameters()``, an object with ``visual_contents`` (a
            :class:`~optcompile.state.ModuleState` extracted with ``enable_visual=True``), or a
            list or tuple of those.
        show_attrs: label backward functions with their saved non-tensor attributes.
        show_saved: draw the tensors saved for backward (call before ``backward()`` frees them).
        max_attr_chars: longest attribute text shown with ``show_attrs`` (at least 4).

    Returns:
        A ``graphviz.Digraph``; its ``.source`` is the DOT text, and rendering it needs the
        Graphviz ``dot`` program.

    Raises:
        ImportError: the ``graphviz`` Python package is not installed.
        TypeError: ``params`` is not one of the forms above.
        ValueError: ``params`` holds a state without ``visual_contents``, or
            ``max_attr_chars`` < 4.
    """
    try:
        import graphviz
    except ImportError as error:
        raise ImportError(
            "make_dot needs the graphviz Python package: pip install graphviz "
            "(or pip install optcompile[visual])"
        ) from error
    if isinstance(max_attr_chars, bool) or not isinstance(max_attr_chars, int):
        raise TypeError(f"max_attr_chars must be an int, got {type(max_attr_chars).__name__}")
    if max_attr_chars < 4:
        raise ValueError(f"max_attr_chars={max_attr_chars} must be >= 4")
    names: dict[int, tuple[Any, str]] = {}
    if params is not None:
        _collect_names(params, names)

    dot = graphviz.Digraph(node_attr=_NODE_ATTR, graph_attr={"size": "12,12"})
    seen: dict[int, Any] = {}  # id -> object, which also keeps every drawn object alive

    def tensor_node(tensor: torch.Tensor, name: str, color: str) -> None:
        seen[id(tensor)] = tensor
        dot.node(str(id(tensor)), f"{name}\n{tuple(tensor.shape)}", fillcolor=color)

    def name_of(obj: Any) -> str:
        return names[id(obj)][1] if id(obj) in names else ""

    stack, saved = [], []
    for out in optree.tree_leaves(var, none_is_leaf=False):
        if isinstance(out, torch.Tensor) and id(out) not in seen:
            tensor_node(out, name_of(out), "darkolivegreen1")
            if out.grad_fn is not None:
                dot.edge(str(id(out.grad_fn)), str(id(out)))
                stack.append(out.grad_fn)
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen[id(fn)] = fn
        label, color = _fn_label(fn, show_attrs, max_attr_chars), None
        if id(fn) in names:
            label, color = f"{label}\n{name_of(fn)}", "lightblue"
        dot.node(str(id(fn)), label, fillcolor=color)
        if hasattr(fn, "variable"):  # AccumulateGrad: draw the leaf it accumulates into
            if id(fn.variable) not in seen:
                tensor_node(fn.variable, name_of(fn.variable), "lightblue")
            dot.edge(str(id(fn.variable)), str(id(fn)))
        if show_saved:
            saved.extend((fn, name, tensor) for name, tensor in _saved_tensors(fn))
        for next_fn, _ in fn.next_functions:
            if next_fn is not None:
                dot.edge(str(id(next_fn)), str(id(fn)))
                stack.append(next_fn)
    for fn, name, tensor in saved:  # after the walk, so that leaves keep their own label
        if id(tensor) not in seen:
            tensor_node(tensor, name, "orange")
        dot.edge(str(id(fn)), str(id(tensor)), dir="none")
    resize_graph(dot)
    return dot


def resize_graph(
    dot: graphviz.Digraph, size_per_element: float = 0.5, min_size: float = 12.0
) -> None:
    r"""Set the drawing size of ``dot`` from the number of its statements, in place.

    The size (inches, both sides) is :math:`\max(m,\ n s)` where :math:`n` is the number of
    node and edge statements, :math:`s` = ``size_per_element`` and :math:`m` = ``min_size``.

    Args:
        dot: the graph, e.g. from :func:`make_dot`.
        size_per_element: inches per statement, > 0.
        min_size: smallest size in inches, > 0.

    Raises:
        ValueError: ``size_per_element`` or ``min_size`` is not positive.
    """
    for name, value in (("size_per_element", size_per_element), ("min_size", min_size)):
        if not value > 0:
            raise ValueError(f"{name}={value!r} must be > 0")
    size = max(min_size, len(dot.body) * size_per_element)
    dot.graph_attr["size"] = f"{size},{size}"
