"""DynOPool notebook's experiment code: arms, objective, evaluation hook, claims, re-judging, and the smoke run."""

from __future__ import annotations

import math
import pickle

import pandas as pd
import pytest
import torch

from dla_repro import cli
from dla_repro.analysis.claims import INCONCLUSIVE, REPRODUCED
from dla_repro.experiments import study
from dla_repro.experiments.dynopool import resizing as dp
from dla_repro.models.resizing import DynOPool, ShapeAdaptor, differentiable_macs
from dla_repro.paths import repo_root, results_dir
from dla_repro.pipeline import load_pipeline, notebook_parameters, resolve_parameters
from fixtures_formats import write_cifar100

WIDTHS = (8, 16, 32, 64, 64)


def _arms(head_init_scale: float = 1.0, input_size: int = 32) -> dict[str, torch.nn.Module]:
    out = {}
    for arm, spec in dp.ARMS.items():
        torch.manual_seed(0)
        out[arm] = dp.build_model(16, **spec, widths=WIDTHS, input_size=input_size,
                                  head_init_scale=head_init_scale).eval()
    return out


def _set_r(module: DynOPool, r_h: float, r_w: float) -> None:
    r_min, r_max = module.scale_range
    with torch.no_grad():
        for k, r in enumerate((r_h, r_w)):
            p = (r - r_min) / (r_max - r_min)
            module.alpha[k] = math.log(p / (1 - p))


def test_the_arms_are_different_functions_with_the_declared_parameter_counts():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    arms = _arms()
    with torch.no_grad():
        out = {a: m(x) for a, m in arms.items()}
    # Shape Adaptor starts at other sizes (32 -> 22 -> 15 -> 10 -> 7): another function from the start
    assert not torch.allclose(out["hand"], out["shape_adaptor"], atol=1e-3)
    # DynOPool starts as the 2x2 max-pool it replaces (by design) ...
    assert torch.allclose(out["hand"], out["dynopool"], atol=1e-4)
    # ... and differs as soon as its r leaves 1/2, and by what it trains
    moved = arms["dynopool"]
    _set_r(dp.resizing_layers(moved)[0], 0.4, 0.5)
    with torch.no_grad():
        assert not torch.allclose(moved(x), out["hand"], atol=1e-3)
    names = {a: {n for n, p in m.named_parameters() if p.requires_grad} for a, m in arms.items()}
    assert names["dynopool"] - names["hand"] == {f"features.{i}.alpha" for i in (6, 13, 23, 33)}
    assert len(names["shape_adaptor"] - names["hand"]) == 4
    counts = dp.param_counts(16, WIDTHS)
    assert counts["dynopool"] - counts["hand"] == 8  # 2 per layer: (α_h, α_w)
    assert counts["shape_adaptor"] - counts["hand"] == 4  # 1 per layer: one square ratio
    assert max(counts.values()) - min(counts.values()) <= dp.MATCHED * max(counts.values())
    # the layout: 13 conv3x3, 4 resizing layers, GAP + one linear layer
    hand = arms["hand"]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in hand.modules()) == 13
    assert [type(m) for m in dp.resizing_layers(arms["shape_adaptor"])] == [ShapeAdaptor] * 4
    assert isinstance(hand.fc, torch.nn.Linear) and hand.fc.in_features == WIDTHS[-1]


def test_every_arm_starts_at_the_chance_loss():
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 16, (8,))
    task = dp.make_task(32, gmacs_weight=0.0)
    for arm, model in _arms(head_init_scale=0.0).items():
        model.train()
        assert float(task.loss(model(x), y, model=model).detach()) == pytest.approx(math.log(16), abs=1e-6), arm


def test_every_claim_names_arms_of_the_trial_table_or_groups_derived_from_it():
    trials = dp.make_trials(list(dp.ARMS), "stretch_v", 16, 32, 5.0, widths=WIDTHS)
    names = {t.name for t in trials}
    runs = pd.DataFrame([{"trial": n, "seed": s, "eval_top1": 0.5, "eval_r_h_mean": 0.4, "eval_r_w_mean": 0.5}
                         for n in names for s in (0, 1)])
    groups = dp.runs_groups(runs)
    assert set(groups) == {"dynopool@stretch_v:r_h", "dynopool@stretch_v:r_w"}
    claims = dp.claims("stretch_v", dp.learned_floor(16))
    for c in claims:
        for side in (c.a, c.b):
            assert side in names or side in groups, side
    assert {c.a for c in claims} | {c.b for c in claims} >= names  # every arm is in some claim
    assert study.arm_problems(dp.claim_arms()) == []
    # hand trains without the α group (it has none); the others with it; each trial has its own objective
    assert [t.config for t in trials] == [{"param_groups": {}}, {}, {}]
    assert all(isinstance(t.task, dp.ShapeTrackingTask) and t.task.input_size == (3, 32, 32) for t in trials)
    with pytest.raises(ValueError, match="unknown arms"):
        dp.make_trials(["hand", "avgpool"], "original", 16, 32, 1.0, widths=WIDTHS)


class _Items(torch.utils.data.Dataset):
    def __init__(self, labels, side=32):
        self.labels, self.side = labels, side

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.randn(3, self.side, self.side), self.labels[i]


def test_the_evaluate_hook_returns_top1_learned_shapes_and_gmacs():
    data = type("D", (), {"val": _Items([0, 0, 3, 0, 5, 0, 1, 2])})()  # 4 of 8 labels are class 0
    arms = _arms(head_init_scale=0.0)
    hand = dp.evaluate(arms["hand"], data, 32)
    assert hand["eval_top1"] == pytest.approx(0.5)  # a zero classifier predicts class 0 everywhere
    assert [hand[f"eval_l{i}_h"] for i in range(4)] == [16, 8, 4, 2] == [hand[f"eval_l{i}_w"] for i in range(4)]
    assert hand["eval_r_h_mean"] == hand["eval_r_w_mean"] == 0.5
    dyn = arms["dynopool"]
    _set_r(dp.resizing_layers(dyn)[0], 0.25, 0.5)
    out = dp.evaluate(dyn, data, 32)
    assert (out["eval_l0_h"], out["eval_l0_w"]) == (8, 16) and (out["eval_l1_h"], out["eval_l1_w"]) == (4, 8)
    assert out["eval_l0_rh"] == pytest.approx(0.25) and out["eval_l0_rw"] == pytest.approx(0.5)
    assert out["eval_r_h_mean"] < out["eval_r_w_mean"]
    assert out["eval_gmacs"] == pytest.approx(float(differentiable_macs(dyn, (3, 32, 32))) / 1e9)
    assert out["eval_gmacs"] < hand["eval_gmacs"]  # fewer rows after the first layer: fewer MACs
    assert list(out["shapes"].columns) == ["layer", "kind", "in_h", "in_w", "h", "w", "r_h", "r_w"]
    sa = dp.evaluate(arms["shape_adaptor"], data, 32)
    assert [sa[f"eval_l{i}_h"] for i in range(4)] == [22, 15, 10, 7] and sa["eval_gmacs"] > hand["eval_gmacs"]
    # large: the network sees 64 px; Shape Adaptor's official init for 64 -> 8
    large = dp.evaluate(_arms(0.0, input_size=64)["shape_adaptor"], type("D", (), {"val": _Items([0], 64)})(), 64)
    assert [large[f"eval_l{i}_h"] for i in range(4)] == [38, 22, 13, 7]


def test_the_task_reports_r_per_layer_and_gmacs_each_epoch_and_pickles_without_the_model():
    dyn = _arms(head_init_scale=0.0)["dynopool"].train()
    _set_r(dp.resizing_layers(dyn)[2], 0.3, 0.6)
    task = dp.make_task(32, gmacs_weight=5.0)
    meter = task.metrics()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 16, (4,))
    out = dyn(x)
    loss = task.loss(out, y, model=dyn)
    meter.update(out.detach(), y)
    values = meter.compute()
    assert values["r2_h"] == pytest.approx(0.3) and values["r2_w"] == pytest.approx(0.6)
    assert values["r0_h"] == pytest.approx(0.5, abs=1e-6) and "top1" in values
    assert values["gmacs"] == pytest.approx(float(differentiable_macs(dyn, (3, 32, 32))) / 1e9)
    assert float(loss) == pytest.approx(math.log(16) + 5.0 * values["gmacs"], rel=1e-6)
    loss.backward()
    assert all(m.alpha.grad is not None and m.alpha.grad.abs().sum() > 0 for m in dp.resizing_layers(dyn))
    copy = pickle.loads(pickle.dumps(task))
    assert copy._model is None and copy.gmacs_weight == 5.0


def _runs(top1: dict[str, list[float]], r_h: list[float], r_w: list[float], gmacs: dict[str, float]) -> pd.DataFrame:
    rows = []
    for trial, values in top1.items():
        for seed, v in enumerate(values):
            dyn = trial.startswith("dynopool")
            rows.append({"trial": trial, "seed": seed, "arm": trial.split("@")[0], "variant": "stretch_v",
                         "gmacs_weight": 5.0, "n_params": 1, "eval_top1": v, "eval_gmacs": gmacs[trial],
                         "eval_r_h_mean": r_h[seed] if dyn else 0.5, "eval_r_w_mean": r_w[seed] if dyn else 0.5})
    return pd.DataFrame(rows)


def test_claims_follow_the_measurements_and_the_gmacs_condition():
    claims = dp.claims("stretch_v", floor=0.125)
    top1 = {"hand@stretch_v": [0.50, 0.52, 0.49, 0.51, 0.50], "dynopool@stretch_v": [0.60, 0.61, 0.58, 0.62, 0.60],
            "shape_adaptor@stretch_v": [0.601, 0.611, 0.579, 0.622, 0.598]}
    r_h, r_w = [0.30, 0.32, 0.29, 0.31, 0.33], [0.50, 0.49, 0.52, 0.50, 0.51]
    runs = _runs(top1, r_h, r_w, {"hand@stretch_v": 0.0051, "dynopool@stretch_v": 0.0040,
                                  "shape_adaptor@stretch_v": 0.02})
    plan = study.preregister(claims, range(5), experiment="dynopool", log=False)
    verdicts = {v.claim: v for v in dp.judge(plan, runs, 0.125)}
    aspect, gain, fwd, back = (verdicts[c.text] for c in claims)
    assert aspect.verdict == REPRODUCED and aspect.paired and aspect.delta == pytest.approx(-0.194)
    assert gain.verdict == REPRODUCED and "condition ≤ hand × 1.01: met" in gain.note
    assert fwd.verdict != REPRODUCED and back.verdict != REPRODUCED  # about equal: two-sided, no winner
    assert fwd.family == back.family and not math.isnan(fwd.p_adjusted)
    # the same accuracy gain at more GMACs than hand: not "at equal or lower GMACs"
    costly = _runs(top1, r_h, r_w, {"hand@stretch_v": 0.0051, "dynopool@stretch_v": 0.0060,
                                    "shape_adaptor@stretch_v": 0.02})
    gain = {v.claim: v for v in dp.judge(plan, costly, 0.125)}[claims[1].text]
    assert gain.verdict == INCONCLUSIVE and "not at equal or lower GMACs" in gain.note
    # an r asymmetry from a DynOPool that did not learn says nothing
    idle = _runs({**top1, "dynopool@stretch_v": [0.06, 0.07, 0.06, 0.06, 0.07]}, r_h, r_w,
                 {"hand@stretch_v": 0.0051, "dynopool@stretch_v": 0.0040, "shape_adaptor@stretch_v": 0.02})
    aspect = {v.claim: v for v in dp.judge(plan, idle, 0.125)}[claims[0].text]
    assert aspect.verdict == INCONCLUSIVE and "did not learn" in aspect.note
    # the opposite asymmetry is not reproduced
    flipped = {v.claim: v for v in dp.judge(plan, _runs(top1, r_w, r_h, {"hand@stretch_v": 0.0051,
                                                                          "dynopool@stretch_v": 0.004,
                                                                          "shape_adaptor@stretch_v": 0.02}), 0.125)}
    assert flipped[claims[0].text].verdict == "not reproduced"
    table = dp.table1(runs)
    assert list(table["paper_top1"]) == ["n/a"] * 3 and table["top1_ci95"].gt(0).all()


def _smoke_params() -> dict:
    pipe = load_pipeline()
    spec = next(s for s in pipe.notebooks if s.name == "dynopool")
    declared = notebook_parameters(spec.path)
    return {**{k: p.default for k, p in declared.items()}, **resolve_parameters(pipe, spec, "smoke", declared=declared)}


def test_rejudge_claims_declares_the_notebooks_claims_from_its_parameters(tmp_path):
    params = _smoke_params()
    claims, post = dp.rejudge_claims(params, tmp_path, pd.DataFrame())
    assert claims == dp.claims(params["claim_variant"], dp.learned_floor(16))  # synthetic-v2: 16 classes
    assert dp.rejudge_claims({**params, "claim_variant": "tile"}, tmp_path, pd.DataFrame())[0][1].a == "dynopool@tile"
    with pytest.raises(ValueError, match="number of classes"):
        dp.rejudge_claims({**params, "dataset": "imagefolder"}, tmp_path, pd.DataFrame())


@pytest.mark.notebook
@pytest.mark.slow
def test_the_notebook_runs_in_smoke_and_its_claims_table_is_rejudged_unchanged(capsys):
    from dla_repro.experiments import rejudge

    assert cli.main(["run", "dynopool", "--profile", "smoke"]) == 0, capsys.readouterr().out
    tables = results_dir() / "tables" / "smoke"
    runs = pd.read_csv(tables / "dynopool_runs.csv")
    arms, variants = list(dp.ARMS), ["original", "stretch_v", "tile", "large"]
    assert set(runs["trial"]) == {dp.trial_name(a, v) for a in arms for v in variants}
    assert len(runs[runs["variant"] == "stretch_v"]) == 6  # two seeds on the claims' variant
    large = runs[runs["trial"] == "hand@large"].iloc[0]
    assert (large["eval_l0_h"], large["eval_l3_h"]) == (32, 4)  # 64 px in
    assert (runs["eval_gmacs"] > 0).all() and runs["eval_top1"].between(0, 1).all()
    table1 = pd.read_csv(tables / "dynopool_table1.csv", keep_default_na=False)  # "n/a" is written as text
    assert len(table1) == 12 and (table1["paper_top1"] == "n/a").all()
    claims = pd.read_csv(tables / "dynopool_claims.csv")
    assert list(claims["claim"]) == [c.text for c in dp.claims("stretch_v")]
    assert (tables / "dynopool_lambda_runs.csv").is_file() and (tables / "dynopool_shapes.csv").is_file()
    figures = results_dir() / "figures" / "smoke"
    for name in ("variants", "shapes", "trajectories", "accuracy_vs_gmacs"):
        assert (figures / f"dynopool_{name}.png").is_file(), name
    old, new = rejudge.rejudge(results_dir(), "smoke", write=False)["dynopool"]
    assert list(new["verdict"]) == list(old["verdict"]) and list(new["note"].fillna("")) == list(old["note"].fillna(""))
    assert (repo_root() / "notebooks" / "dynopool" / "06_dynopool.ipynb").is_file()


@pytest.mark.notebook
@pytest.mark.slow
def test_the_paper_profile_runs_on_a_cifar100_fixture(tmp_path, capsys):
    """The paper profile's recipe (SGD, cosine per epoch, VGG-16 widths) on CIFAR-100's real file format, shrunk
    with ``-p`` to one epoch of a few images: the reader, the variants at CIFAR's 32 px and the claims table."""
    write_cifar100(tmp_path / "data", n_train=16, n_test=8)
    code = cli.main([
        "run", "dynopool", "--profile", "paper", "--data-root", str(tmp_path / "data"),
        "-p", "epochs=1", "-p", "batch_size=8", "-p", "widths=[4, 4, 8, 8, 8]", "-p", "num_workers=0",
        "-p", "seeds=[0, 1]", "-p", "table_seeds=[0]", "-p", "variants=[original, stretch_v]",
        "-p", "lambdas=[0.0]", "-p", "n_show=1",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    tables = results_dir() / "tables" / "paper"
    runs = pd.read_csv(tables / "dynopool_runs.csv")
    assert set(runs["variant"]) == {"original", "stretch_v"} and len(runs[runs["variant"] == "stretch_v"]) == 6
    claims = pd.read_csv(tables / "dynopool_claims.csv")
    assert list(claims["claim"]) == [c.text for c in dp.claims("stretch_v")]
    assert (results_dir() / "notebooks" / "paper" / "06_dynopool.ipynb").is_file()
