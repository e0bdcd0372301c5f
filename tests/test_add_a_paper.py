"""Adding a paper is additive: a toy paper built only from the public pieces, as README "How to add a paper" says.

The toy paper ("channel gates help segmentation") needs what DynOPool and GALD
need: a kernel op in the table, a model on the segmentation contract, a study
with a trial table and a pre-declared claim.  Nothing in the generic layers is
edited for it.  Further tests keep the README section and the layering honest,
and the shared report / re-judging code free of per-paper tables.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dla_repro.analysis.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from dla_repro.bench import bench_kernels
from dla_repro.engine import SegmentationTask, TrainConfig
from dla_repro.experiments import study
from dla_repro.experiments.study import Claim
from dla_repro.kernels import OPS, BenchSpec, KernelOp, TestCase, TestSpec
from dla_repro.models.backbones import create_backbone
from dla_repro.models.segmentation import Segmenter
from dla_repro.paths import repo_root


# ------------------------------------------------------- the toy paper's files, in one place
def gate_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y_c = σ(w_c) · x_c``: the toy paper's op (its PyTorch reference)."""
    return x * torch.sigmoid(w).view(1, -1, 1, 1)


def _gate_inputs(shape, dtype, device, generator):
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    return x, torch.randn(shape[1], generator=generator, dtype=dtype).to(device)


GATE = KernelOp(
    name="toy_gate",
    reference=gate_reference,
    bench=BenchSpec(make_inputs=_gate_inputs, bytes_moved=lambda ins, out: (2 * out.nbytes, 4 * out.nbytes),
                    shapes=((2, 8, 16, 16),)),
    test=TestSpec(cases=(TestCase((2, 3, 5, 4)),), tolerances={torch.float32: dict(rtol=1e-5, atol=1e-6)}),
    grad_inputs=(0, 1),
    source="toy paper, §1",
)


class GateHead(nn.Module):
    """The toy paper's head: optional channel gate (the op above), then a 1×1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, gate: bool):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(in_channels)) if gate else None
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        return self.classifier(OPS["toy_gate"](x, self.w) if self.w is not None else x)


def build_model(num_classes: int, gate: bool, level: int = 2) -> Segmenter:
    backbone = create_backbone("dlarepro_dla34", tiny=True, out_indices=tuple(range(level + 1)))
    return Segmenter(backbone, GateHead(backbone.feature_info.channels()[-1], num_classes, gate))


TRIALS = {"plain": {"gate": False}, "gated": {"gate": True}}
CLAIMS = [Claim("channel gates help segmentation", "gated", "plain", "eval_miou", min_effect=0.01),
          Claim("a trial this profile did not run", "gated", "huge", "eval_miou")]


def evaluate(model, data):
    from dla_repro.metrics.segmentation import dataset_confusion, scores_from_confusion

    return {"eval_miou": scores_from_confusion(dataset_confusion(model, data.val, data.num_classes))["miou"]}


# -------------------------------------------------------------------------- the tests
@pytest.fixture
def toy_op(monkeypatch):
    monkeypatch.setitem(OPS, GATE.name, GATE)  # the one row in the op table
    return GATE


def test_a_toy_paper_runs_end_to_end_from_the_public_pieces(toy_op):
    # the op: dispatched like every op (reference on CPU), benchmarked by the shared suite
    x, w = _gate_inputs((2, 3, 4, 4), torch.float32, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(OPS["toy_gate"](x, w), gate_reference(x, w))
    rows = bench_kernels(["toy_gate"], device="cpu", impls=["eager"], iters=1, rounds=1, warmup=0)
    assert set(rows["op"]) == {"toy_gate"} and (rows["fwd_ms"] > 0).all()

    # the study: data, trial table, training, evaluation, claims
    data = study.load_data("segmentation", image_size=32, n_train=8, n_val=4)
    trials = study.trial_table(TRIALS, ["plain", "gated"], build_model, num_classes=data.num_classes)
    a, b = (t.build() for t in trials)
    assert sum(p.numel() for p in a.parameters()) != sum(p.numel() for p in b.parameters())  # two functions
    config = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, progress=False)
    result = study.run("toy_paper", trials, data, config, [0, 1], SegmentationTask(data.num_classes),
                       evaluate=evaluate)
    assert len(result.runs) == 4 and result.runs["eval_miou"].between(0, 1).all()
    model = result.model("gated", 1)
    assert isinstance(model.head, GateHead) and model.head.w is not None
    with torch.no_grad():
        assert model(data.val[0][0][None]).shape == (1, data.num_classes, 32, 32)

    verdicts = study.judge(CLAIMS, result.runs)
    assert [v.claim for v in verdicts] == ["channel gates help segmentation"]  # the other trial never ran
    assert verdicts[0].verdict in {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE} and len(verdicts[0].values_a) == 2
    table = study.summarize(result.runs, ["eval_miou"])
    assert list(table["trial"]) == ["plain", "gated"] and (table["seeds"] == 2).all()
    assert "channel gates help segmentation" in study.claims_markdown(verdicts)


GENERIC = ("engine", "metrics", "data", "kernels", "analysis", "bench")
PAPER_MODULES = ("dla_repro.experiments", "dla_repro.models.dla", "dla_repro.models.parsenet",
                 "dla_repro.models.dla_up", "dla_repro.notebook", "dla_repro.pipeline")


def _imports(path: Path) -> set[str]:
    package = ".".join(path.relative_to(repo_root()).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = f"{base}.{node.module}" if base and node.module else (node.module or base)
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def test_generic_layers_import_no_paper_code():
    offenders = []
    for layer in GENERIC:
        for path in sorted((repo_root() / "dla_repro" / layer).rglob("*.py")):
            bad = [m for m in _imports(path) if m.startswith(PAPER_MODULES)]
            if bad:
                offenders.append(f"{path.relative_to(repo_root())}: {sorted(bad)}")
    assert not offenders, "generic layers must not import a paper's code:\n" + "\n".join(offenders)


def test_readme_how_to_add_a_paper_names_the_pieces_this_test_uses():
    readme = (repo_root() / "README.md").read_text()
    match = re.search(r"^## How to add a paper\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md needs a '## How to add a paper' section"
    section = match.group(1)
    for piece in ("register_op", "KernelOp", "Segmenter", "create_backbone", "study.load_data",
                  "study.trial_table", "study.run", "Claim", "study.judge", "notebooks/pipeline.yaml",
                  "`paper:`", "`module:`", "rejudge_claims", "runs_groups", "tests/test_add_a_paper.py"):
        assert piece in section, f"README 'How to add a paper' does not mention {piece}"


def test_no_table_of_papers_in_the_shared_code():
    """The report and re-judging find a paper through pipeline.yaml (``paper:``, ``module:``), so adding one
    edits neither: no paper's name or module appears in them."""
    from dla_repro.analysis import report
    from dla_repro.experiments import rejudge

    for module in (report, rejudge):
        code = "".join(ast.get_source_segment(Path(module.__file__).read_text(), node) or ""
                       for node in ast.parse(Path(module.__file__).read_text()).body
                       if not isinstance(node, ast.Expr))  # the module docstring may use examples
        for paper in ("DLA", "ParseNet", "dla_classification", "dla_segmentation", "dla_boundaries", "parsenet",
                      "experiments.dla", "experiments.parsenet"):
            assert paper not in code, f"{module.__name__} names {paper!r}: a per-paper table in shared code"
