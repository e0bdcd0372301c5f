"""mIoU from a dataset-level confusion matrix: hand-computed cases and torchmetrics; the tolerant
thin-structure F-score on hand-built maps."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from torch import nn
from torch.utils.data import TensorDataset

from dla_repro.labels import IGNORE_INDEX
from dla_repro.metrics.segmentation import (
    SegmentationMetrics,
    TolerantFScore,
    confusion_matrix,
    dataset_confusion,
    dataset_metrics,
    iou_from_confusion,
    scores_from_confusion,
    tolerant_counts,
    tolerant_fscore,
)
from dla_repro.outputs import ModelOutput


def test_hand_computed_case_with_ignore_and_an_absent_class():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])  # predictions on ignored pixels do not count
    m = confusion_matrix(pred, target, num_classes=5)
    assert m.sum() == 6
    assert m[0].tolist() == [1, 1, 0, 0, 0] and m[1].tolist() == [0, 2, 0, 0, 0] and m[2].tolist() == [1, 0, 1, 0, 0]
    s = scores_from_confusion(m)
    # class 0: TP 1, FN 1, FP 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    iou = s["iou_per_class"]
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3]) and math.isnan(iou[4]), "classes 3, 4 absent from target and prediction"
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 6)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_predicted_but_absent_class_counts_with_iou_zero():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 0, 1])
    s = scores_from_confusion(confusion_matrix(pred, target, 3))
    assert s["iou_per_class"][1] == 0 and s["miou"] == pytest.approx((3 / 4 + 0) / 2)


def test_streaming_equals_one_shot_and_accepts_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 5, 7, generator=g)
    target = torch.randint(0, 4, (6, 5, 7), generator=g)
    target[target == 3] = 255
    acc = SegmentationMetrics(4)
    for i in range(0, 6, 2):
        acc.update(logits[i : i + 2], target[i : i + 2])
    whole = SegmentationMetrics(4)
    whole.update(logits.argmax(1), target)
    a, b = acc.compute(per_class=True), whole.compute(per_class=True)
    assert torch.equal(a["confusion"], b["confusion"]) and a["miou"] == b["miou"]
    assert set(acc.compute()) == {"miou", "pixel_acc", "mean_acc"}
    assert all(isinstance(v, float) for v in acc.compute().values()), "engine contract: plain floats"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_multiclass_jaccard(seed):
    g = torch.Generator().manual_seed(seed)
    c = 6
    target = torch.randint(0, c, (4, 16, 16), generator=g)
    pred = torch.randint(0, c, (4, 16, 16), generator=g)
    target[:, :3] = 255
    target[target == 4] = 5  # class 4 never in the target ...
    pred[pred == 4] = 0  # ... nor predicted: absent
    ours = SegmentationMetrics(c)
    tm_macro = MulticlassJaccardIndex(c, ignore_index=255, average="macro")
    tm_none = MulticlassJaccardIndex(c, ignore_index=255, average=None)
    for i in range(4):
        ours.update(pred[i], target[i])
        tm_macro.update(pred[i], target[i])
        tm_none.update(pred[i], target[i])
    s = ours.compute(per_class=True)
    present = ~torch.isnan(s["iou_per_class"])
    assert present.tolist() == [True, True, True, True, False, True]
    torch.testing.assert_close(s["iou_per_class"][present].float(), tm_none.compute()[present])
    assert tm_none.compute()[4] == 0, "torchmetrics reports an absent class as 0"
    assert s["miou"] == pytest.approx(float(tm_macro.compute()), abs=1e-6)


def test_summary_names_classes_and_errors():
    acc = SegmentationMetrics(3, class_names=["road", "car", "sky"])
    acc.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    s = acc.summary()
    assert s["iou_per_class"]["road"] == 1.0 and s["iou_per_class"]["sky"] == 0.0
    assert s["confusion"].shape == (3, 3)
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        acc.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        acc.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not match"):
        acc.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    empty = SegmentationMetrics(3)
    assert math.isnan(empty.compute()["miou"])


def test_engine_segmentation_task_uses_it():
    from dla_repro.engine.tasks import SegmentationTask

    task = SegmentationTask(num_classes=3)
    meter = task.metrics()
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 1] = 1
    target = torch.ones(1, 8, 8, dtype=torch.long)  # logits are resized to the target first
    target[0, 0] = 255
    meter.update(logits, target)
    out = {k: float(v) for k, v in meter.compute().items()}
    assert out["miou"] == 1.0 and out["pixel_acc"] == 1.0
    assert type(meter.inner).__name__ == "SegmentationMetrics"


def test_iou_from_confusion_and_scores_agree():
    m = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 4]])  # class 1: predicted once, never true -> IoU 0
    iou = iou_from_confusion(m)
    assert iou.dtype == torch.float64 and iou.tolist() == pytest.approx([3 / 6, 0.0, 4 / 6])
    assert torch.equal(scores_from_confusion(m)["iou_per_class"], iou)
    assert math.isnan(iou_from_confusion(torch.zeros(2, 2, dtype=torch.long))[0])
    assert IGNORE_INDEX == 255


class _Segmenter(nn.Module):
    """Conv + BatchNorm + dropout (so train and eval mode differ); optionally returns an aux output."""

    def __init__(self, aux: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.5))
        self.cls = nn.Conv2d(8, 4, 1)
        self.aux = aux

    def forward(self, x):
        out = self.cls(self.body(x))
        return ModelOutput(out, {"aux": -out}) if self.aux else out


def test_dataset_confusion_is_the_eval_mode_pass_in_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (10, 6, 6), generator=g)
    y[:, 0] = IGNORE_INDEX
    data = TensorDataset(x, y)
    model = _Segmenter()
    model(x)  # move BatchNorm's running stats away from their init: eval mode must use them
    model.train()

    cm = dataset_confusion(model, data, 4, batch_size=4)
    assert model.training, "the mode it was in is restored"
    # by hand, as the notebooks did before: eval mode, batches of 4 in order, gradients on, CPU counts
    model.eval()
    expected = torch.zeros(4, 4, dtype=torch.long)
    for i in range(0, 10, 4):
        expected += confusion_matrix(model(x[i : i + 4]).argmax(1), y[i : i + 4], 4)
    assert cm.dtype == torch.long and cm.device.type == "cpu"
    assert torch.equal(cm, expected) and cm.sum() == (y != IGNORE_INDEX).sum()
    assert torch.equal(dataset_confusion(model, data, 4, batch_size=4), cm) and not model.training  # eval stays eval

    with_aux = _Segmenter(aux=True)
    with_aux.load_state_dict(model.state_dict())
    assert torch.equal(dataset_confusion(with_aux, data, 4, batch_size=4), cm), "the main output is scored"


def test_dataset_confusion_restores_the_mode_after_an_error():
    model = _Segmenter().train()
    bad = TensorDataset(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 9))  # label 9 of 4 classes
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        dataset_confusion(model, bad, 4)
    assert model.training


# ------------------------------------------------------------------ the tolerant thin-structure F-score
def _iou_and_f(pred: torch.Tensor, target: torch.Tensor, c: int, tolerance: float = 1.0) -> tuple[float, float]:
    iou = iou_from_confusion(confusion_matrix(pred, target, 3))[c].item()
    return iou, tolerant_fscore(tolerant_counts(pred, target, 3, tolerance))["f"][c].item()


def test_a_line_or_dot_one_pixel_off_scores_zero_iou_but_a_high_tolerant_f():
    target = torch.zeros(16, 16, dtype=torch.long)
    target[8, 2:14] = 1  # a 1-px line (class 1)
    target[3:5, 3:5] = 2  # a 2×2 dot (class 2)
    pred = torch.zeros_like(target)
    pred[9, 2:14] = 1  # the line one pixel lower
    pred[4:6, 3:5] = 2  # the dot one pixel lower: half of it overlaps
    iou_line, f_line = _iou_and_f(pred, target, 1)
    assert iou_line == 0.0 and f_line == pytest.approx(1.0)
    iou_dot, f_dot = _iou_and_f(pred, target, 2)
    assert iou_dot == pytest.approx(2 / 6) and f_dot == pytest.approx(1.0)
    shorter = torch.zeros_like(target)
    shorter[9, 3:14] = 1  # one pixel lower, one pixel shorter: the first true pixel is √2 from any predicted one
    assert _iou_and_f(shorter, target, 1)[1] == pytest.approx(2 * 1.0 * (11 / 12) / (1 + 11 / 12))


def test_a_line_far_off_scores_zero_with_both():
    target = torch.zeros(16, 16, dtype=torch.long)
    target[4, 2:14] = 1
    pred = torch.zeros_like(target)
    pred[10, 2:14] = 1  # six pixels away
    assert _iou_and_f(pred, target, 1) == (0.0, 0.0)
    assert _iou_and_f(pred, target, 1, tolerance=2.0) == (0.0, 0.0)
    counts = tolerant_counts(pred, target, 3)
    assert counts[1].tolist() == [0, 12, 0, 12]  # hits, predicted, hits, true


def test_tolerance_zero_is_the_exact_f1():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 12, 12), generator=g)
    pred = torch.randint(0, 3, (4, 12, 12), generator=g)
    iou = iou_from_confusion(confusion_matrix(pred, target, 3))
    f0 = tolerant_fscore(tolerant_counts(pred, target, 3, tolerance=0))["f"]
    assert torch.allclose(f0, 2 * iou / (1 + iou))
    f1 = tolerant_fscore(tolerant_counts(pred, target, 3, tolerance=1))["f"]
    assert (f1 >= f0 - 1e-12).all()  # a tolerance only adds hits


def test_tolerant_f_ignores_the_ignore_label_and_says_when_undefined():
    target = torch.tensor([[0, 1, IGNORE_INDEX, 0]])
    pred = torch.tensor([[0, 0, 1, 0]])  # the only predicted 1 sits on an ignored pixel
    counts = tolerant_counts(pred, target, 3)
    assert counts.tolist() == [[3, 3, 2, 2], [0, 0, 0, 1], [0, 0, 0, 0]]  # the ignored pixel counts nowhere
    scores = tolerant_fscore(counts)
    assert scores["f"][1] == 0.0 and math.isnan(scores["precision"][1])  # present, never predicted: F 0
    assert math.isnan(scores["f"][2])  # neither predicted nor present: undefined
    only_predicted = tolerant_fscore(tolerant_counts(torch.tensor([[2, 0]]), torch.tensor([[0, 0]]), 3))
    assert only_predicted["f"][2] == 0.0 and math.isnan(only_predicted["recall"][2])
    with pytest.raises(ValueError, match="tolerance"):
        tolerant_counts(pred, target, 3, tolerance=-1)


def test_tolerant_streaming_and_one_dataset_pass():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (10, 6, 6), generator=g)
    y[:, 0] = IGNORE_INDEX
    model = _Segmenter().eval()
    seg, tol = dataset_metrics(model, TensorDataset(x, y), [SegmentationMetrics(4), TolerantFScore(4)], batch_size=3)
    assert torch.equal(seg.confusion, dataset_confusion(model, TensorDataset(x, y), 4, batch_size=4))
    with torch.no_grad():
        logits = model(x)
    whole = tolerant_counts(logits, y, 4)  # logits accepted, one shot over all images
    assert torch.equal(tol.compute()["counts"], whole)
    assert torch.allclose(tol.compute()["f"], tolerant_fscore(whole)["f"], equal_nan=True)
    tol.reset()
    assert tol.counts.sum() == 0
