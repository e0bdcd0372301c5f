"""No number moves: the segmenters build and compute exactly as before the segmentation contract.

Issue 9 rebuilt ``create_dla_up``, ``create_parsenet`` and ``vgg16_fcn`` on one
segmentation contract (:mod:`dla_repro.models.segmentation`).  Before that
change, each configuration of :data:`CONFIGS` was built right after
``torch.manual_seed(0)`` and fingerprinted (``tests/segmenter_fingerprints.json``):

* the state_dict keys, in order, with their shapes (checkpoints depend on them): a SHA-256;
* a SHA-256 over every state_dict tensor's bytes (the RNG was consumed in the same
  order: same modules, same init calls) and one per top-level module;
* SHA-256 and a sample of the logits of one eval and one training forward on a
  fixed input (the computation is the same, operation for operation).

The file holds one record per machine kind (torch version and CPU capability),
each written by the pre-restructure code (commit 6ab12e0): even the seeded
initialisation differs between kinds (torch's vectorised ``normal_`` draws
differently on AVX2 and AVX512), so a machine is compared with its own kind's
record -- parameters and outputs bit for bit, sampled logits to 1e-5 relative.
On a kind with no record only the state_dict keys and output shapes can be
checked; the value comparison is skipped, saying so.

Record another kind (from the pre-restructure code, e.g. a worktree at 6ab12e0
running this file with the current test file copied in), or regenerate for an
intended change of numbers: ``python tests/test_segmenter_identity.py`` (merges
this machine kind's record into the file).
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch

import dla_repro  # noqa: F401  (registers dlarepro_* in timm)
from dla_repro.models.dla_up import create_dla_up
from dla_repro.models.parsenet import create_parsenet, vgg16_fcn

FINGERPRINTS = Path(__file__).with_name("segmenter_fingerprints.json")
TINY = (8, 16, 32, 64, 128, 256)

#: name → (builder, input size); every builder runs right after ``torch.manual_seed(0)``.
CONFIGS: Dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, int]]] = {
    "dla_up_ida_k3": (lambda: create_dla_up("dlarepro_dla34", 10, channels=TINY), (45, 60)),
    "dla_up_ida_k1": (lambda: create_dla_up("dlarepro_dla34", 10, node_kernel=1, channels=TINY), (64, 64)),
    "dla_up_ida_w32_r4": (
        lambda: create_dla_up("dlarepro_dla34", 10, width=32, down_ratio=4, channels=TINY), (64, 96)
    ),
    "dla_up_fcn": (lambda: create_dla_up("dlarepro_dla34", 10, decoder="fcn", channels=TINY), (45, 60)),
    "dla_up_boundary": (lambda: create_dla_up("dlarepro_dla34", head="boundary", channels=TINY), (64, 64)),
    "dla_up_timm_dla34_r8": (lambda: create_dla_up("dla34", 4, down_ratio=8), (64, 64)),
    "parsenet_none": (
        lambda: create_parsenet(
            "dlarepro_dla34", 10, fusion="none", l2norm=False, channels=TINY, out_indices=(0, 1, 2, 3)
        ),
        (64, 64),
    ),
    "parsenet_early": (
        lambda: create_parsenet(
            "dlarepro_dla34", 10, fusion="early", l2norm=True, channels=TINY, out_indices=(0, 1, 2, 3)
        ),
        (64, 64),
    ),
    "parsenet_late_hidden": (
        lambda: create_parsenet(
            "dlarepro_dla34",
            10,
            fusion="late",
            l2norm=True,
            hidden_channels=16,
            dropout=0.1,
            channels=TINY,
            out_indices=(0, 1, 2, 3),
        ),
        (64, 64),
    ),
    "parsenet_resnet18_level2": (lambda: create_parsenet("resnet18", 4, feature_index=2), (64, 64)),
    "vgg16_fcn": (lambda: vgg16_fcn(5), (64, 64)),
    "vgg16_parsenet_small_fc": (lambda: vgg16_fcn(5, fusion="early", l2norm=True, fc_channels=64), (64, 64)),
}


def _sha(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _machine() -> str:
    return f"torch {torch.__version__}, {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def _sample(y: torch.Tensor, n: int = 64) -> list[float]:
    flat = y.detach().flatten()
    idx = torch.linspace(0, flat.numel() - 1, n).long()
    return [float(v) for v in flat[idx]]


def fingerprint(name: str) -> Dict[str, Any]:
    """Build ``CONFIGS[name]`` after ``torch.manual_seed(0)`` and fingerprint its state and outputs."""
    build, (h, w) = CONFIGS[name]
    torch.manual_seed(0)
    model = build()
    state = model.state_dict()
    modules: Dict[str, list] = {}
    for key, t in state.items():
        modules.setdefault(key.split(".")[0], []).append(t)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_eval = model.eval()(x)
        torch.manual_seed(2)  # dropout masks in training mode
        y_train = model.train()(x)
    return {
        "n_keys": len(state),
        "keys_sha256": hashlib.sha256("\n".join(f"{k} {list(t.shape)}" for k, t in state.items()).encode()).hexdigest(),
        "state_sha256": _sha(state.values()),
        "module_sha256": {m: _sha(ts) for m, ts in modules.items()},
        "eval_sha256": _sha([y_eval]),
        "eval_sample": _sample(y_eval),
        "train_sha256": _sha([y_train]),
        "train_sample": _sample(y_train),
        "shape": list(y_eval.shape),
    }


@pytest.fixture(scope="module")
def recorded() -> Dict[str, Any]:
    return json.loads(FINGERPRINTS.read_text())["machines"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_segmenter_is_bit_identical_to_the_recorded_one(name, recorded):
    now = fingerprint(name)
    any_ref = next(iter(recorded.values()))[name]
    assert (now["n_keys"], now["keys_sha256"]) == (any_ref["n_keys"], any_ref["keys_sha256"])
    assert now["shape"] == any_ref["shape"]
    if _machine() not in recorded:
        pytest.skip(f"no fingerprint recorded for {_machine()} (recorded: {sorted(recorded)}): "
                    "keys and shapes checked, values not comparable across CPU kinds")
    ref = recorded[_machine()][name]
    assert now["module_sha256"] == ref["module_sha256"]
    assert now["state_sha256"] == ref["state_sha256"]
    assert now["eval_sha256"] == ref["eval_sha256"]
    assert now["train_sha256"] == ref["train_sha256"]
    for kind in ("eval_sample", "train_sample"):
        torch.testing.assert_close(torch.tensor(now[kind]), torch.tensor(ref[kind]), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    data = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {"machines": {}}
    data.setdefault("machines", {})[_machine()] = {name: fingerprint(name) for name in CONFIGS}
    FINGERPRINTS.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {FINGERPRINTS} ({len(CONFIGS)} configs, {_machine()})")
