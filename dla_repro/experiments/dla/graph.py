"""The aggregation graph of a DLA model, read off the model object, and its drawing.

Each stage (``level2`` … ``level5``) is traced symbolically with ``torch.fx``,
blocks and aggregation nodes kept as opaque leaves, so the graph shows the data
flow the forward pass really has -- not a re-derivation from the config:

* nodes: ``stem`` (the ``level1`` output, input of stage 2), one ``block`` per
  residual block, one ``root`` per aggregation node;
* edges: ``backbone`` (the input of a block) and ``aggregation`` (an input of
  an aggregation node).  Max-pooling and shortcut projections are looked
  through: an edge from a stage's input to a root is the IDA link.

The result is plain data (lists of dicts) so any plotting code can use it;
:func:`draw_aggregation_graph` draws one panel with matplotlib.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import fx, nn

from ...models.aggregation import AggregationNode
from ...models.blocks import BasicBlock, Bottleneck

__all__ = ["aggregation_graph", "aggregation_graphs", "draw_aggregation_graph", "draw_aggregation_graphs"]

_LEAVES = (BasicBlock, Bottleneck, AggregationNode)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _flatten(args: Any) -> List[Any]:
    if isinstance(args, (list, tuple)):
        return [a for arg in args for a in _flatten(arg)]
    return [args]


def _trace_stage(stage: nn.Module) -> fx.Graph:
    params = list(inspect.signature(stage.forward).parameters.values())[1:]
    concrete = {p.name: None for p in params if p.default is None}
    return _LeafTracer().trace(stage, concrete_args=concrete or None)


def aggregation_graph(model: nn.Module) -> Dict[str, Any]:
    """Graph of ``model`` (a :class:`dla_repro.models.DLA`) as plain data::

        {"mode": "full", "config": {...},
         "nodes": [{"id", "stage", "kind", "position", "depth", "label"}, ...],
         "edges": [{"src", "dst", "stage", "kind"}, ...]}

    ``position`` is the execution order within the stage (0 = the stage input);
    ``depth`` is 0 for blocks and the stem, and for a root 1 + the deepest root
    of the same stage among its inputs (how far up the hierarchy it aggregates).
    """
    config = dict(getattr(model, "dla_config", {}))
    nodes: List[Dict[str, Any]] = [dict(id="level1", stage=1, kind="stem", position=0, depth=0, label="stem")]
    edges: List[Dict[str, Any]] = []
    depth = {"level1": 0}
    prev_out = "level1"
    for s in range(2, 6):
        name = f"level{s}"
        stage = getattr(model, name)
        graph = _trace_stage(stage)
        source: Dict[fx.Node, Optional[str]] = {}  # fx node → graph node id it carries
        position = 0
        last = prev_out
        for node in graph.nodes:
            ins = [a for a in _flatten(node.args) + _flatten(list(node.kwargs.values())) if isinstance(a, fx.Node)]
            if node.op == "placeholder":  # the first is the stage input; the rest are pinned to None
                source[node] = None if any(n.op == "placeholder" for n in source) else prev_out
                continue
            if node.op == "call_module" and isinstance(stage.get_submodule(node.target), _LEAVES):
                position += 1
                module = stage.get_submodule(node.target)
                node_id = f"{name}.{node.target}"
                kind = "root" if isinstance(module, AggregationNode) else "block"
                srcs = _flatten(node.args[0]) if kind == "root" else [node.args[0]]
                src_ids = list(dict.fromkeys(source[a] for a in srcs if isinstance(a, fx.Node) and source.get(a)))
                inner = [depth[i] for i in src_ids if i.startswith(f"{name}.")]  # the stage input counts as 0
                depth[node_id] = 1 + max(inner, default=0) if kind == "root" else 0
                nodes.append(
                    dict(
                        id=node_id,
                        stage=s,
                        kind=kind,
                        position=position,
                        depth=depth[node_id],
                        label=node.target,
                    )
                )
                edge_kind = "aggregation" if kind == "root" else "backbone"
                edges += [dict(src=src, dst=node_id, stage=s, kind=edge_kind) for src in src_ids]
                source[node] = node_id
                last = node_id
            else:  # pooling, projection, list plumbing: carries its (single) producer through
                producers = list(dict.fromkeys(source.get(a) for a in ins if source.get(a)))
                source[node] = producers[0] if len(producers) == 1 else None
        prev_out = last
    return dict(mode=config.get("aggregation", "full"), config=config, nodes=nodes, edges=edges)


def aggregation_graphs(
    variant: str = "dla34", modes: Sequence[str] = ("none", "ida", "hda", "full"), **model_kwargs
) -> Dict[str, Dict[str, Any]]:
    """One graph per aggregation mode of ``variant`` (models built on the meta device)."""
    from ...models.dla import create_dla

    graphs = {}
    for mode in modes:
        with torch.device("meta"):
            model = create_dla(variant, aggregation=mode, **model_kwargs)
        graphs[mode] = aggregation_graph(model)
    return graphs


def draw_aggregation_graph(graph: Dict[str, Any], ax=None, title: Optional[str] = None):
    """Draw ``graph`` on ``ax``: stages left to right, blocks on the bottom row,
    aggregation nodes above them (higher = deeper in the hierarchy); backbone
    edges grey, aggregation edges coloured by stage and curved."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 3))
    colours = plt.get_cmap("tab10")
    xy: Dict[str, tuple] = {}
    offset = 0.0
    for s in range(1, 6):
        members = sorted((n for n in graph["nodes"] if n["stage"] == s), key=lambda n: n["position"])
        for n in members:
            xy[n["id"]] = (offset + n["position"], float(n["depth"]))
        if members:
            span = max(n["position"] for n in members)
            if s >= 2:
                ax.axvspan(offset + 0.5, offset + span + 0.5, color=colours(s), alpha=0.06, lw=0)
                ax.text(offset + (span + 1) / 2, -0.75, f"stage {s}", ha="center", va="top", fontsize=8)
            offset += span + 1.0
    for e in graph["edges"]:
        (x0, y0), (x1, y1) = xy[e["src"]], xy[e["dst"]]
        aggregation = e["kind"] == "aggregation"
        ax.add_patch(
            FancyArrowPatch(
                (x0, y0),
                (x1, y1),
                arrowstyle="-|>",
                mutation_scale=7,
                lw=1.0 if aggregation else 0.8,
                color=colours(e["stage"]) if aggregation else "0.55",
                connectionstyle=f"arc3,rad={-0.12 if aggregation and y0 == y1 else 0.0}",
                shrinkA=4,
                shrinkB=4,
                zorder=1,
            )
        )
    for n in graph["nodes"]:
        x, y = xy[n["id"]]
        marker = {"root": "o", "block": "s", "stem": "D"}[n["kind"]]
        face = colours(n["stage"]) if n["kind"] == "root" else "white"
        ax.scatter([x], [y], marker=marker, s=46, facecolor=face, edgecolor=colours(n["stage"]), zorder=2)
    top = max((n["depth"] for n in graph["nodes"]), default=0)
    ax.set_ylim(-1.1, top + 0.9)
    ax.set_xlim(-0.7, offset - 0.3)
    ax.set_yticks(range(top + 1))
    ax.set_ylabel("depth")
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    n_roots = sum(n["kind"] == "root" for n in graph["nodes"])
    ax.set_title(title or f"aggregation={graph['mode']}  ({n_roots} aggregation nodes)", fontsize=10)
    return ax


def draw_aggregation_graphs(graphs: Dict[str, Dict[str, Any]], width: float = 12.0, panel_height: float = 2.3):
    """One panel per graph (e.g. the output of :func:`aggregation_graphs`), stacked; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(graphs), 1, figsize=(width, panel_height * len(graphs)), squeeze=False)
    for ax, graph in zip(axes[:, 0], graphs.values()):
        draw_aggregation_graph(graph, ax)
    fig.tight_layout()
    return fig
