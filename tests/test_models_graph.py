"""Aggregation graph read off the model object, per ablation mode, and its drawing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dla_repro.experiments.dla.graph import aggregation_graphs, draw_aggregation_graph  # noqa: E402
from dla_repro.models import AGGREGATION_MODES  # noqa: E402


@pytest.fixture(scope="module")
def graphs():
    return aggregation_graphs("dla34", AGGREGATION_MODES)


def _roots(graph, stage=None):
    return [n for n in graph["nodes"] if n["kind"] == "root" and (stage is None or n["stage"] == stage)]


def _inputs(graph, node_id):
    return [e["src"] for e in graph["edges"] if e["dst"] == node_id]


def test_edges_reference_existing_nodes(graphs):
    for graph in graphs.values():
        ids = [n["id"] for n in graph["nodes"]]
        assert len(ids) == len(set(ids))
        assert all(e["src"] in ids and e["dst"] in ids for e in graph["edges"])
        blocks = [n for n in graph["nodes"] if n["kind"] == "block"]
        assert len(blocks) == 2 + 4 + 4 + 2  # 2**levels per stage in every mode


def test_none_has_no_roots(graphs):
    assert not _roots(graphs["none"])
    assert all(e["kind"] == "backbone" for e in graphs["none"]["edges"])


def test_full_level4_tree(graphs):
    full = graphs["full"]
    roots = _roots(full, stage=4)
    assert len(roots) == 2  # levels=2: one root per levels==1 subtree
    final = max(roots, key=lambda n: n["position"])
    srcs = _inputs(full, final["id"])
    # two blocks, the stage input (IDA: level3's output) and the left subtree's root (HDA)
    assert len(srcs) == 4 and "level3.tree2.root" in srcs and "level4.tree1.root" in srcs
    assert final["depth"] == 2


def test_hda_drops_the_stage_input_and_ida_is_binary(graphs):
    final = "level4.tree2.root"
    assert "level3.tree2.root" not in _inputs(graphs["hda"], final)
    ida = graphs["ida"]
    assert [n["stage"] for n in _roots(ida)] == [3, 4, 5]
    assert all(len(_inputs(ida, r["id"])) == 2 for r in _roots(ida))


def test_draw_one_panel_per_mode(graphs):
    fig, axes = plt.subplots(len(graphs), 1, figsize=(8, 2 * len(graphs)))
    for ax, graph in zip(axes, graphs.values()):
        assert draw_aggregation_graph(graph, ax) is ax
    assert "aggregation=full" in axes[-1].get_title()
    plt.close(fig)
