"""Learnable resizing: DynOPool and Shape Adaptor, a differentiable MACs estimate, and model surgery.

Two modules that replace a network's fixed down-sampling (max-pool, strided
conv) by a resizing whose scale factor is learned:

* :class:`DynOPool` -- "Pooling Revisited: Your Receptive Field is Suboptimal"
  (Jang, Chu, Kim, Han, CVPR 2022, arXiv 2205.15254, §3 and Fig. 2). A scale
  factor ``r = (r_h, r_w)`` per module; every output cell aggregates (max) four
  query points inside its footprint on the input, each bilinearly interpolated
  from its four nearest input pixels. **No official code exists and the paper's
  equations are not reproduced here**: the re-parameterisation of r, the query
  offsets, the rounding relaxation and the complexity loss below are this
  project's choices, written down in the class docstring, each configurable.
* :class:`ShapeAdaptor` -- Liu, Lin, Wang, Zhang, Perazzi, Johns, ECCV 2020,
  arXiv 2008.00892, §3, matched to the official code (lorenmt/shape-adaptor,
  ``model_list.py``: ``ShapeAdaptor``, ``SA_init``, ``VGG``; ``vgg16_cifar_toy.py``):
  a learned convex mix of a down-sampling branch (ratio 0.5) and an identity
  branch (ratio 1), both resized to the mixed ratio's size.

Around them:

* :func:`differentiable_macs` -- the conv/linear MACs of a model at one input
  size as a torch scalar whose value is the exact count at the current
  (rounded) sizes and whose gradient reaches every module's ``alpha``;
  :class:`WithGMACsLoss` adds ``λ·GMACs`` to any task's loss (the engine's task
  contract, ``loss(output, target, model=...)``).
* :func:`replace_resizing` -- swaps a model's ``nn.MaxPool2d`` layers (and,
  optionally, its strided convolutions) for one of the two modules; layers of
  one down-sampling stage (the parallel branches of a ResNet block or a DLA
  tree, which merge) share one ``alpha`` so that they always agree in size
  (:func:`resizing_groups`).
* :func:`alpha_param_groups` / :func:`resizing_parameters` -- the ``alpha``
  parameters in their own optimiser group (own lr, no weight decay).

Both modules name their learned parameter ``alpha`` and expose ``scale()`` (the
scale factor per axis, a tensor with gradient to ``alpha``) and
``output_size(h, w)`` (the integer output size, a pure function of the input
size and the current ``alpha``: no running size is kept anywhere).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import dynopool_resample, dynopool_resample_reference
from ..kernels.dynopool_resample import (  # noqa: F401  (QUARTER_OFFSETS, TIE_TOLERANCE: part of this module's API)
    PADDING_MODES,
    QUARTER_OFFSETS,
    REDUCTIONS,
    TIE_TOLERANCE,
    resample_size,
)

__all__ = [
    "DynOPool",
    "ShapeAdaptor",
    "Subsample2d",
    "shape_adaptor_init_alpha",
    "shape_adaptor_init_alphas",
    "shape_adaptor_sizes",
    "shape_adaptor_count",
    "shape_adaptor_positions",
    "differentiable_macs",
    "WithGMACsLoss",
    "replace_resizing",
    "resizing_groups",
    "resizing_modules",
    "resizing_parameters",
    "alpha_param_groups",
    "ALPHA_PATTERN",
]

# QUARTER_OFFSETS: four query points per output cell, as fractions of the cell (row, column)
# from its centre -- the centres of its four quadrants; TIE_TOLERANCE: pixels, r·H this close
# to a half-integer rounds down.  Defined with the resampling op.


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return float(v), float(v)
    a, b = v
    return float(a), float(b)


# --------------------------------------------------------------------------- DynOPool
class DynOPool(nn.Module):
    """DynOPool: resizing by a learned scale factor ``r = (r_h, r_w)``, four queries per cell, max.

    arXiv 2205.15254 describes the mechanism (§3, Fig. 2) but its equations are
    not available to this project; every choice below is ours, and configurable.

    **Re-parameterisation** (the paper re-parameterises r because the raw
    gradient on r explodes; its formula is unknown). ``alpha`` holds one real
    number per axis and::

        r = r_min + (r_max − r_min) · σ(α)          (scale_range = (r_min, r_max))

    so r never leaves ``(r_min, r_max)`` -- the sigmoid *is* the clamp -- and a
    step on α moves r by at most ``(r_max − r_min)/4`` per unit. Default range
    ``(0.125, 1.0)`` (down-sampling only; ``r_max > 1`` lets a module up-sample),
    default initial ``r = 0.5`` on both axes (the 2×2 max-pool it replaces).

    **Output size**: ``H' = max(1, ⌈r_h·H − ½ − 10⁻⁴⌉)``, same for W: the
    nearest integer, a tie (within 10⁻⁴ px, above the float error of r) going
    down; never below 1×1. Ties go down so that at ``r = 1/2`` the size is
    ``⌊H/2⌋``, the size of the ``MaxPool2d(2)`` a module replaces, for every H
    (r = 1/2 only approximately: σ(α) of a float α is not exactly 3/7).

    **Rounding relaxation**: the *number* of cells is the rounded size, but the
    cells are laid out with the *continuous* spacing ``1/r`` input pixels,
    centred on the input's centre. In input pixel coordinates (pixel j's
    centre at j) cell i's centre is::

        p_i = (H − 1)/2 + (i − (H' − 1)/2) / r_h

    so the forward pass is a smooth function of r between two jumps of H', and
    ``∂loss/∂α`` is the exact derivative of that function (the query
    coordinates move with r). The rounded grid spans ``H'/r_h`` pixels, which
    differs from H by at most half a cell; queries beyond the border read the
    border pixel (``padding_mode="border"``).

    **Queries**: for each cell, K points ``q = p + δ/r`` with δ in ``offsets``
    (fractions of a cell, default the centres of its four quadrants,
    ``(±¼, ±¼)``), each sampled bilinearly from its four nearest pixels with
    ``F.grid_sample(..., align_corners=False)`` (normalised coordinate
    ``(2q + 1)/H − 1``, so an integer q reads pixel q exactly).
    **Aggregation**: ``reduce="max"`` (the paper's typical choice) or ``"mean"``.

    At ``r = 0.5`` on an even side each cell covers two pixels and its queries
    fall on their centres: the output is ``F.max_pool2d(x, 2)`` up to the float
    rounding of the coordinates and of r itself (``tests/test_resizing.py``
    measures it: about 1e-5 in float32 with the default α; 1e-14 in float64
    with α = logit(3/7) in double precision). On an odd side the sizes agree
    (⌊H/2⌋) but the values do not: the ⌊H/2⌋ cells of spacing 2 are centred on
    the input, so every query falls half-way between two pixels and reads
    their mean (max-pool drops the last row instead).

    **Implementation**: :func:`dla_repro.kernels.dynopool_resample`, an op of
    the kernel table -- the ``F.grid_sample`` reference (the computation
    above) on CPU, a Triton kernel for CUDA tensors (``padding_mode``
    ``"border"`` or ``"zeros"``); ``DLA_REPRO_KERNELS=reference`` forces the
    reference.
    """

    def __init__(
        self,
        init_scale: float | Sequence[float] = 0.5,
        scale_range: Sequence[float] = (0.125, 1.0),
        offsets: Sequence[Sequence[float]] = QUARTER_OFFSETS,
        reduce: str = "max",
        padding_mode: str = "border",
    ):
        super().__init__()
        r_min, r_max = (float(v) for v in scale_range)
        if not 0 < r_min < r_max:
            raise ValueError(f"scale_range must satisfy 0 < r_min < r_max, got {tuple(scale_range)}")
        init = _pair(init_scale)
        if not all(r_min < r < r_max for r in init):
            raise ValueError(f"init_scale {init} must lie strictly inside scale_range ({r_min}, {r_max})")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce={reduce!r}: expected one of {REDUCTIONS}")
        offsets = [tuple(float(v) for v in o) for o in offsets]
        if not offsets or any(len(o) != 2 for o in offsets):
            raise ValueError("offsets must be a non-empty sequence of (row, column) pairs")
        self.scale_range = (r_min, r_max)
        self.reduce, self.padding_mode = reduce, padding_mode
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)
        self.alpha = nn.Parameter(torch.tensor([_logit((r - r_min) / (r_max - r_min)) for r in init]))

    def scale(self) -> torch.Tensor:
        """``(r_h, r_w)``, differentiable in ``alpha``."""
        r_min, r_max = self.scale_range
        return r_min + (r_max - r_min) * torch.sigmoid(self.alpha)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return resample_size(h, w, self.scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the op of the kernel table: the Triton kernel on CUDA, the grid_sample reference elsewhere
        op = dynopool_resample if self.padding_mode in PADDING_MODES else dynopool_resample_reference
        return op(x, self.scale(), self.offsets, out_size=self.output_size(*x.shape[-2:]),
                  reduce=self.reduce, padding_mode=self.padding_mode)  # fmt: skip

    def extra_repr(self) -> str:
        r = ", ".join(f"{v:.4f}" for v in self.scale().detach().tolist())
        return (f"r=({r}), scale_range={self.scale_range}, queries={self.offsets.shape[0]}, "
                f"reduce={self.reduce}, padding_mode={self.padding_mode}")


# ----------------------------------------------------------------------- Shape Adaptor
class ShapeAdaptor(nn.Module):
    """Shape Adaptor (arXiv 2008.00892, §3), as the official ``model_list.py::ShapeAdaptor``.

    Two branches of the same input x: ``down`` (ratio r1 = 0.5; a 2×2 max-pool
    for VGG, the official ``nn.MaxPool2d(2, 2)``) and the identity (ratio
    r2 = 1). With the mixing weight σ(α)::

        s(α) = r1 + (r2 − r1)·σ(α)                    (0.5 + 0.5·σ(α))
        H'   = max(1, ⌊H · s(α)⌋)                     (same for W)
        y    = (1 − σ(α))·resize(down(x), H'×W') + σ(α)·resize(x, H'×W')

    ``resize`` is ``F.interpolate(mode="bilinear", align_corners=True)`` on both
    branches, and the size is computed from ``σ(α)`` as a Python number, so
    ``alpha`` gets gradient **only through the mixing weights**, never through
    the size -- as the official code (``sigmoid_alpha.item()``). With
    ``residual=True`` both terms are doubled, ``2(1 − σ)·down + 2σ·identity``,
    the official residual-block form (it keeps the magnitude of ``f(x) + x``);
    there ``down`` is the block's shortcut and ``identity`` its residual branch,
    so :meth:`forward` takes the identity branch as an optional second input.

    Rounding: the official code keeps a class-level running side
    (``ShapeAdaptor.current_dim``), starting at the network's input size and
    floored after every adaptor (``int(dim · s)``, then at least 1). For a
    chain of size-preserving convolutions that running side is the input
    tensor's side, so here ``H'`` is computed from the input tensor itself: a
    pure function of the input, no state. The official code resizes to one
    square side; here each axis is floored separately, which is that square for
    the square inputs the official code supports.

    Not implemented: the official memory bound (``limit_dim``, a ``penalty``
    that rescales every σ(α)) and the AutoSC "global" variant (``round``
    instead of floor, on top of the network's own pools).
    """

    def __init__(
        self,
        down: nn.Module | None = None,
        alpha: float = 0.0,
        residual: bool = False,
        r1: float = 0.5,
        r2: float = 1.0,
    ):
        super().__init__()
        if not 0 < r1 < r2:
            raise ValueError(f"need 0 < r1 < r2, got r1={r1}, r2={r2}")
        self.down = nn.MaxPool2d(2, 2) if down is None else down
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.residual, self.r1, self.r2 = residual, float(r1), float(r2)

    def mix_weight(self) -> torch.Tensor:
        """σ(α): the weight of the identity branch."""
        return torch.sigmoid(self.alpha)

    def scale(self) -> torch.Tensor:
        """``(s, s)`` with ``s = r1 + (r2 − r1)·σ(α)``, differentiable in ``alpha`` (for the MACs estimate)."""
        s = self.r1 + (self.r2 - self.r1) * self.mix_weight()
        return s.expand(2)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.r1 + (self.r2 - self.r1) * float(self.mix_weight().detach())
        return max(1, int(h * s)), max(1, int(w * s))

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        identity = x if identity is None else identity
        size = self.output_size(*identity.shape[-2:])
        down = F.interpolate(self.down(x), size=size, mode="bilinear", align_corners=True)
        same = F.interpolate(identity, size=size, mode="bilinear", align_corners=True)
        sig = self.mix_weight().to(x.dtype)
        y = (1 - sig) * down + sig * same
        return 2 * y if self.residual else y

    def extra_repr(self) -> str:
        return f"s={float(self.scale()[0].detach()):.4f}, residual={self.residual}, r1={self.r1}, r2={self.r2}"


class Subsample2d(nn.Module):
    """``x[..., ::s, ::s]``: a stride-s convolution is its stride-1 version subsampled like this
    (odd kernel, static padding), so it is the down branch of a strided conv made a Shape Adaptor."""

    def __init__(self, stride: int | Sequence[int] = 2):
        super().__init__()
        self.stride = tuple(int(v) for v in _pair(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :: self.stride[0], :: self.stride[1]]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def shape_adaptor_init_alpha(
    input_size: int, n_adaptors: int, output_size: int = 8, r1: float = 0.5, r2: float = 1.0, eps: float = 1e-4
) -> float:
    """The official initial α (``model_list.py::SA_init``): ``input · s^n = output``.

    ``q = (output/input)^(1/n)`` is the per-adaptor ratio, ``α = log((q − r1)/(r2 − q) + eps)``
    (= logit((q − r1)/(r2 − r1)), eps as the official 1e-4 against log 0). If even
    ``r1^n`` cannot reach ``output`` the official code returns ``log(eps)`` (the
    smallest ratio it allows); so does this. 32 px, 4 adaptors, output 8:
    α = −0.3466 (the toy script's hard-coded −0.346).
    """
    if n_adaptors < 1 or input_size < 1 or output_size < 1:
        raise ValueError("input_size, n_adaptors and output_size must be positive")
    if input_size * r1 ** n_adaptors > output_size:
        return math.log(eps)
    q = (output_size / input_size) ** (1.0 / n_adaptors)
    if q >= r2:
        raise ValueError(f"output_size {output_size} ≥ input_size {input_size}: no down-sampling to initialise")
    return math.log((q - r1) / (r2 - q) + eps)


def shape_adaptor_init_alphas(
    input_size: int, n_adaptors: int | None = None, output_size: int = 8, **kwargs
) -> list[float]:
    """One initial α per adaptor (all equal, as the official code); ``n_adaptors`` defaults to
    :func:`shape_adaptor_count` of ``input_size``."""
    n = shape_adaptor_count(input_size) if n_adaptors is None else n_adaptors
    return [shape_adaptor_init_alpha(input_size, n, output_size, **kwargs)] * n


def shape_adaptor_sizes(input_size: int, alphas: Sequence[float], r1: float = 0.5, r2: float = 1.0) -> list[int]:
    """The side after each adaptor of a chain, input first: ``d ← max(1, ⌊d · s(α)⌋)``."""
    sizes = [int(input_size)]
    for a in alphas:
        s = r1 + (r2 - r1) / (1 + math.exp(-a))
        sizes.append(max(1, int(sizes[-1] * s)))
    return sizes


def shape_adaptor_count(input_size: int) -> int:
    """The official heuristic number of adaptors: ``int(log2(input / 2))`` (4 at 32 px, 6 at 224 px)."""
    return int(math.log2(input_size / 2))


def shape_adaptor_positions(n_layers: int, n_adaptors: int) -> list[int]:
    """Where the official VGG puts its adaptors: after which of ``n_layers`` conv layers (0-based).

    Candidates are every conv layer but the last; adaptor i goes after candidate
    ``int(i · n_candidates / n_adaptors)`` (``model_list.py::VGG``). VGG-16's 13
    convolutions, 4 adaptors: after convs 0, 3, 6, 9.
    """
    candidates = n_layers - 1
    if not 1 <= n_adaptors <= candidates:
        raise ValueError(f"{n_adaptors} adaptors do not fit after {candidates} candidate layers")
    gap = candidates / n_adaptors
    return [int(i * gap) for i in range(n_adaptors)]


# ------------------------------------------------------------------- MACs and the loss
RESIZING = (DynOPool, ShapeAdaptor)


def resizing_modules(model: nn.Module) -> list[nn.Module]:
    """The model's DynOPool / ShapeAdaptor modules, in registration order."""
    return [m for m in model.modules() if isinstance(m, RESIZING)]


@torch.no_grad()
def _trace_sizes(model: nn.Module, input_size: Sequence[int], batch_size: int) -> list[tuple[nn.Module, tuple, tuple, list]]:
    """One forward pass on zeros: for each conv/linear call, its output shape, its input H×W and the resizing calls
    run before it (``(module, input H×W, output H×W)`` each)."""
    executed: list[tuple[nn.Module, tuple, tuple]] = []
    records: list[tuple[nn.Module, tuple, tuple, list]] = []

    def on_resize(module, args, output):
        executed.append((module, tuple(args[0].shape[-2:]), tuple(output.shape[-2:])))

    def on_layer(module, args, output):
        records.append((module, tuple(output.shape), tuple(args[0].shape[-2:]), list(executed)))

    handles = []
    for m in model.modules():
        if isinstance(m, RESIZING):
            handles.append(m.register_forward_hook(on_resize))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(on_layer))
    ref = next(model.parameters())
    x = torch.zeros((batch_size, *input_size), device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return records


def differentiable_macs(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> torch.Tensor:
    """Conv + linear MACs of one forward pass, as a float64 scalar differentiable in every ``alpha``.

    **Value**: the exact MACs of the model's ``nn.Conv2d`` and ``nn.Linear``
    layers at the sizes the current (rounded) scale factors give -- what
    ``torch.utils.flop_counter.FlopCounterMode`` reports as FLOPs/2 for them
    (bias additions, norms, activations, pooling and the resizing itself are
    not counted). A conv's MACs are ``N · H_out · W_out · C_out · C_in/groups ·
    k_h · k_w``; a linear layer's ``rows · in · out``. The sizes come from one
    forward pass of ``batch_size`` zero inputs shaped ``input_size`` (C, H, W)
    under ``no_grad`` in eval mode (the model is left in its mode; BN
    statistics are not touched).

    **Gradient**: each conv's output side is treated as proportional to the
    scale factor of every resizing module that ran before it::

        Ĥ = H · Π_j r_h,j / stopgrad(r_h,j)         (value H, ∂Ĥ/∂r_h,j = H / r_h,j)

    -- the rounding relaxed to a product of scale factors, the chain
    assumption of a VGG-like network, over the resizing *steps* run before
    the conv whose output is at least as large as the conv's input on both
    axes (a conv of a parallel branch still at the stage's input size -- the
    stride-1 conv of a converted strided conv, a ResNet shortcut's 1×1 conv
    that runs after the block's first conv was resized -- does not depend on
    that step). Calls that share an ``alpha`` (a tied group of
    :func:`replace_resizing`) on the same input size are the parallel
    branches of one stage, one step -- a conv after a ResNet block whose
    strided conv and shortcut share α gets ``H/r`` once, not twice -- while
    the same α applied again at another size (in series) is another step. A
    conv after an adaptive pooling to a fixed size, or after a step it does
    not see but no larger than its output (multi-resolution nets), still gets
    this gradient; the value is exact regardless. Linear layers have no
    spatial gradient.
    """
    records = _trace_sizes(model, input_size, batch_size)
    ratio: dict[int, torch.Tensor] = {}
    total = None
    for layer, shape, conv_in, before in records:
        if isinstance(layer, nn.Conv2d):
            c_out, c_in_per_group, kh, kw = layer.weight.shape
            n, _, h, w = shape
            macs = torch.tensor(float(n * c_out * c_in_per_group * kh * kw), dtype=torch.float64)
            size = torch.tensor([float(h), float(w)], dtype=torch.float64)
            steps = {}
            for m, in_size, out_size in before:
                if conv_in[0] <= out_size[0] and conv_in[1] <= out_size[1]:
                    steps.setdefault((id(m.alpha), in_size), m)
            for m in steps.values():
                if id(m.alpha) not in ratio:
                    r = m.scale().double()
                    ratio[id(m.alpha)] = r / r.detach()
                size = size * ratio[id(m.alpha)].to(size.device)
            term = macs.to(size.device) * size[0] * size[1]
        else:  # nn.Linear: rows × in × out
            rows = math.prod(shape[:-1])
            term = torch.tensor(float(rows * layer.in_features * layer.out_features), dtype=torch.float64)
        total = term if total is None else total + term.to(total.device)
    if total is None:
        return torch.zeros((), dtype=torch.float64)
    return total


def _accepts_model(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "model" or p.kind is p.VAR_KEYWORD for p in params)


class WithGMACsLoss:
    """A task whose loss is ``task.loss + λ · GMACs(model)``: DynOPool's complexity loss.

    arXiv 2205.15254 adds a weighted sum of the layer-wise GMACs to the task
    loss at every iteration (abstract, Fig. 2); its weights and λ are not
    available here. This class uses the plain total (every layer weighted 1),
    ``GMACs = differentiable_macs(model, input_size, batch_size) / 1e9``, added
    with the weight ``gmacs_weight`` (λ; no default: choose it). It is not a
    budget hinge: every GMAC costs λ, at any size.

    It follows the engine's task contract (``dla_repro.engine.tasks``): the
    loop calls ``loss(output, target, model=model)`` with the unwrapped model;
    ``metrics``, ``monitor``, ``mode`` and ``params`` are the wrapped task's
    (``params`` adds λ and the size). The extra term is computed from one
    forward pass of ``batch_size`` zero images (see :func:`differentiable_macs`),
    at every call: the engine's evaluation loss calls it too, so ``val_loss``
    is the same objective as ``train_loss`` (the task's metrics are unchanged).
    """

    def __init__(self, task: Any, input_size: Sequence[int], gmacs_weight: float, batch_size: int = 1):
        self.task = task
        self.input_size = tuple(int(v) for v in input_size)
        self.gmacs_weight = float(gmacs_weight)
        self.batch_size = int(batch_size)

    @property
    def monitor(self) -> str:
        return self.task.monitor

    @property
    def mode(self) -> str:
        return self.task.mode

    def gmacs(self, model: nn.Module) -> torch.Tensor:
        return differentiable_macs(model, self.input_size, self.batch_size) / 1e9

    def loss(self, output: Any, target: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        if model is None:
            raise ValueError("WithGMACsLoss needs the model: call loss(output, target, model=model)")
        if _accepts_model(self.task.loss):
            base = self.task.loss(output, target, model=model)
        else:
            base = self.task.loss(output, target)
        if not self.gmacs_weight:
            return base
        return base + self.gmacs_weight * self.gmacs(model).to(device=base.device, dtype=base.dtype)

    def metrics(self):
        return self.task.metrics()

    def params(self) -> dict[str, Any]:
        inner = self.task.params() if hasattr(self.task, "params") else {}
        return {**inner, "gmacs_weight": self.gmacs_weight, "gmacs_input_size": list(self.input_size)}


# ------------------------------------------------------------------------- surgery
KINDS = ("dynopool", "shape_adaptor")


def _stride(module: nn.Module) -> tuple[int, int]:
    s = module.stride if module.stride is not None else module.kernel_size
    return tuple(int(v) for v in _pair(s))


TIES = (None, "input_size")


def _targets(model: nn.Module, strided_convs: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    targets = []
    for parent in model.modules():
        for name, child in parent.named_children():
            is_pool = isinstance(child, nn.MaxPool2d)
            is_conv = strided_convs and isinstance(child, nn.Conv2d)
            if (is_pool or is_conv) and max(_stride(child)) > 1:
                targets.append((parent, name, child))
    return targets


@torch.no_grad()
def _probe_input_sizes(model: nn.Module, modules: Sequence[nn.Module], input_size: int) -> dict[int, tuple[int, int]]:
    """One forward pass of a zero image ``input_size``² (eval mode, no grad): ``id(module) -> input (H, W)`` for
    every module of ``modules`` that runs (first call). Each submodule's train/eval flag is restored."""
    seen: dict[int, tuple[int, int]] = {}

    def record(module, args):
        if args and torch.is_tensor(args[0]) and args[0].dim() >= 2:
            seen.setdefault(id(module), tuple(int(v) for v in args[0].shape[-2:]))

    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError("tie='input_size' needs an nn.Conv2d to infer the input channels from")
    ref = next(model.parameters(), None)
    x = torch.zeros(1, first_conv.in_channels, int(input_size), int(input_size),
                    device=None if ref is None else ref.device, dtype=torch.float32 if ref is None else ref.dtype)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(record) for m in modules]
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return seen


def replace_resizing(
    model: nn.Module,
    kind: str = "dynopool",
    strided_convs: bool = False,
    input_size: int = 32,
    output_size: int = 8,
    tie: str | None = "input_size",
    **module_kwargs,
) -> nn.Module:
    """Swap every down-sampling ``nn.MaxPool2d`` (stride > 1) of ``model`` for a learned resizing, in place.

    ``kind="dynopool"``: each pool becomes a :class:`DynOPool` initialised at
    ``r = 1/stride`` per axis (the pool's kernel is dropped; the four queries
    take its place). ``kind="shape_adaptor"``: each pool becomes a
    :class:`ShapeAdaptor` whose down branch is that pool, every α initialised
    by :func:`shape_adaptor_init_alpha` for ``input_size`` → ``output_size``
    over the number of down-sampling stages -- the tied groups below, or the
    replaced layers with ``tie=None`` (the official rule counts the adaptors of
    a chain; the official VGG instead removes the pools and inserts
    :func:`shape_adaptor_count` adaptors at :func:`shape_adaptor_positions`).

    ``strided_convs=True`` also replaces every ``nn.Conv2d`` with stride > 1 by
    the same conv at stride 1 followed by the module (for a Shape Adaptor the
    down branch is :class:`Subsample2d`, which makes it the original strided
    conv again, for odd kernels with static padding). This costs the conv
    ``stride²`` times its MACs. ``module_kwargs`` go to the module's
    constructor. Returns ``model``.

    **Tying** (``tie="input_size"``, the default). Parallel branches that merge
    -- a ResNet block's strided conv beside its strided shortcut, a DLA tree's
    max-pooled ``bottom`` beside its strided first block, concatenated by the
    roots -- must down-sample to the *same* size, or the sum / concatenation
    fails. One α per layer agrees only at initialisation (r = 1/stride); the
    first step that moves one branch's α more than the other's breaks the
    merge. So the replaced layers are grouped, and each group shares **one**
    ``alpha`` (the same ``nn.Parameter`` object assigned to every module of the
    group; each module keeps its own ``down`` branch). The rule: one probe
    forward pass of a zero ``input_size``² image (eval mode, no grad, every
    submodule's mode restored; input channels from the first ``nn.Conv2d``)
    records each target's input H×W, and targets with the **same input size
    and the same stride** form a group -- a down-sampling stage. Branches that
    split from one tensor see the same size, and with a shared α (and the same
    module settings) they map any input size to the same output size, at every
    value of α. Layers of a plain chain (VGG) see different sizes, so there
    every group has one layer and ``tie=None`` gives the same model.

    Consequences: a target the probe pass never runs (e.g. the unused
    ``downsample`` pool of a DLA sub-tree that receives ``bottom`` from its
    parent) is **left as it is**: it cannot shape the output, and an α there
    would be a parameter without gradient. The rule does not cover branches
    from *different* resolutions merged after different strides, nor fixed
    up-sampling by a factor (DLA-up, IDA-up): those need sizes, not ties. Two
    unrelated stages that happen to see the same size at the probe (sides
    clamped at 1 by a tiny ``input_size``) are tied too -- consistent, just
    fewer parameters; pick an ``input_size`` that keeps stages apart. With
    ``strided_convs=False``, a strided conv whose input matches a group's (a
    branch that keeps its fixed stride beside a learned one) is warned about:
    the merge breaks as soon as that α moves.

    A shared α appears once in ``model.parameters()`` /
    ``named_parameters()`` (under its first module's name, so it matches
    :data:`ALPHA_PATTERN` once); ``state_dict`` stores it under every module's
    name and loads back (the values are equal; loading a state dict whose
    copies differ keeps the last). :func:`resizing_groups` lists the groups.

    ``tie=None``: one α per replaced layer and no probe pass (the behaviour
    before tying; correct for chains only).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if tie not in TIES:
        raise ValueError(f"tie={tie!r}: expected one of {TIES}")
    targets = _targets(model, strided_convs)
    if not targets:
        return model
    # group index per target (None: left as it is)
    if tie is None:
        group_of = list(range(len(targets)))
    else:
        fixed = [] if strided_convs else [p for p in model.modules()
                                          if isinstance(p, nn.Conv2d) and max(_stride(p)) > 1]
        sizes = _probe_input_sizes(model, [c for _, _, c in targets] + fixed, input_size)
        keys: dict[tuple, int] = {}
        group_of = []
        for _, _, child in targets:
            size = sizes.get(id(child))
            group_of.append(None if size is None else keys.setdefault((size, _stride(child)), len(keys)))
        clash = sorted({f"{tuple(sizes[id(c)])} stride {_stride(c)}" for c in fixed
                        if id(c) in sizes and (sizes[id(c)], _stride(c)) in keys})
        if clash:
            warnings.warn(f"replace_resizing: strided convolutions keep their fixed stride beside learned layers "
                          f"with the same input ({', '.join(clash)}); their branches stop agreeing in size once "
                          f"α moves -- pass strided_convs=True", stacklevel=2)
    n_groups = len({g for g in group_of if g is not None})
    if not n_groups:
        return model
    alpha = None
    if kind == "shape_adaptor" and "alpha" not in module_kwargs:
        alpha = shape_adaptor_init_alpha(input_size, n_groups, output_size)
    fallback = next(model.parameters(), None)
    shared: dict[int, nn.Parameter] = {}
    for (parent, name, child), group in zip(targets, group_of):
        if group is None:
            continue
        stride = _stride(child)
        if kind == "dynopool":
            kwargs = {"init_scale": (1 / stride[0], 1 / stride[1]), **module_kwargs}
            new = DynOPool(**kwargs)
        else:
            kwargs = {"alpha": alpha, **module_kwargs} if alpha is not None else dict(module_kwargs)
            down = child if isinstance(child, nn.MaxPool2d) else Subsample2d(stride)
            new = ShapeAdaptor(down=down, **kwargs)
        ref = next(child.parameters(), fallback)
        if ref is not None:
            new = new.to(device=ref.device)
        if group in shared:
            new.alpha = shared[group]
        else:
            shared[group] = new.alpha
        if isinstance(child, nn.Conv2d):
            child.stride = (1, 1)
            new = nn.Sequential(child, new)
        setattr(parent, name, new)
    return model


def resizing_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The resizing modules grouped by their ``alpha`` (one group per shared α, in order of first appearance)."""
    groups: dict[int, list[nn.Module]] = {}
    for m in resizing_modules(model):
        groups.setdefault(id(m.alpha), []).append(m)
    return list(groups.values())


# ------------------------------------------------------------------ optimiser groups
ALPHA_PATTERN = "*.alpha"


def resizing_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The ``alpha`` of every resizing module, each shared α once (for a separate optimiser, as the official
    Shape Adaptor code)."""
    for group in resizing_groups(model):
        yield group[0].alpha


def alpha_param_groups(lr_scale: float = 1.0, weight_decay: float = 0.0, every: int = 1) -> dict[str, dict[str, float]]:
    """``TrainConfig.param_groups`` entry that gives every ``alpha`` its own group (no weight decay by default).

    ``dla_repro.engine.optim.param_groups`` matches the pattern ``"*.alpha"``
    against parameter names; the group's lr is the scheduled lr times
    ``lr_scale``; ``every=k`` moves the α on every k-th update only (the official
    Shape Adaptor code steps them with their own SGD, lr 0.1, every 20 iterations:
    ``model_training.py``, ``--step``; ``alpha_param_groups(every=20)``).
    """
    spec = {"lr_scale": float(lr_scale), "weight_decay": float(weight_decay)}
    if every != 1:
        spec["every"] = int(every)
    return {ALPHA_PATTERN: spec}
