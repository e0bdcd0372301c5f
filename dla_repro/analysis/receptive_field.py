"""Theoretical and empirical receptive fields of a layer (ParseNet §3.1).

*Theoretical* (:func:`theoretical_receptive_field`): the input pixels a unit
can depend on through the network's graph.  Computed as the support of the
gradient of one output position with respect to the input, on a *structural
copy* of the model in which nothing can make a dependence vanish:

* conv / linear weights set to ``1 / fan_in`` (positive, no cancellation,
  activations stay O(1) at any depth), biases to 0; input all ones, float64;
* batch norms in eval mode with identity statistics and affine;
* ``nn.MaxPool2d`` → ``nn.AvgPool2d`` with the same geometry (a max pool's
  gradient reaches only the arg-max, which would hide most of its window);
  ``nn.AdaptiveMaxPool2d`` → ``nn.AdaptiveAvgPool2d``; dropout off.

Every activation is then positive, ReLU-like functions pass gradients, and the
gradient is strictly positive exactly where a path exists: the exact field for
any graph (branches, concatenations, dilations, upsampling), not only for chains
of layers.  Assumptions: no functional max pooling and no activation with zero
slope for positive inputs (e.g. hard-sigmoid saturating above 3) inside the
field; normalisations that mix positions (GroupNorm, LayerNorm over space)
legitimately widen the field.  Cost: one float64 forward and input-gradient at
``input_size``.  The field is clipped by the image border: ``clipped`` says
the box touches it (use a larger ``input_size`` to see it whole).

*Empirical*, two ways, both with the unit's field whole on the input:

* :func:`gradient_receptive_field` -- the gradient ERF (Luo et al., "Understanding
  the Effective Receptive Field in Deep Convolutional Neural Networks", arXiv
  1701.04128, §2-3): ``|∂ Σ_c y_c(centre) / ∂x|`` summed over the input
  channels and averaged over images, on a *canvas* larger than the theoretical
  field (:func:`canvas`: the image mirror-tiled around itself), so the border
  cannot cut the field short.  No probe, so nothing is added to the field: a
  1×1 convolution measures 1×1.
* :func:`empirical_receptive_field` -- ParseNet's measurement (arXiv 1506.04579,
  §3.1): slide a small patch of random noise over an image and record how much
  the layer's activation changes (at one position, by default the centre, or
  over the whole map).  Every placement that *overlaps* the field changes the
  unit, so the probe widens what it measures: attributing each change to the
  probe's centre (``attribution="centre"``, the default) gives the field
  dilated by ``patch - 1`` pixels; spreading it over all the pixels the patch
  covers (``"spread"``, how it was measured before) by ``2·(patch - 1)``, and
  by more when ``stride`` skips placements -- a 1×1 field measured with an 8-px
  patch every 4 px came out 12×12.  Hence the defaults: 1-px probes at every
  pixel (exact, and costly: one forward per pixel).

Either map's extent is the set of pixels above ``threshold`` (5%) of its
maximum (:func:`extent`).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ReceptiveField",
    "EmpiricalReceptiveField",
    "theoretical_receptive_field",
    "empirical_receptive_field",
    "gradient_receptive_field",
    "canvas",
    "extent",
    "capture",
]

ATTRIBUTIONS = ("centre", "spread")

Position = Union[None, str, Tuple[int, int]]


@dataclass
class ReceptiveField:
    """A rectangle on the input grid: rows ``top..bottom``, columns ``left..right`` (inclusive)."""

    top: int
    left: int
    bottom: int
    right: int
    position: Optional[Tuple[int, int]]  # the layer position it belongs to (None: whole map)
    input_size: Tuple[int, int]
    clipped: bool  # touches the image border: the true field may be larger

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def size(self) -> Tuple[int, int]:
        return self.height, self.width


@dataclass
class EmpiricalReceptiveField:
    """The map (``H×W`` on the input grid) and the extent of the region above ``threshold·max``.

    ``method``: ``"occlusion"`` (:func:`empirical_receptive_field`) or
    ``"gradient"`` (:func:`gradient_receptive_field`, whose grid is the canvas).
    """

    map: torch.Tensor
    area: int  # pixels above threshold
    box: Optional[ReceptiveField]  # bounding box of those pixels (None if the map is all zero)
    fraction: float  # area / (H·W)
    threshold: float
    position: Optional[Tuple[int, int]]
    method: str = "occlusion"

    @property
    def side(self) -> float:
        """``sqrt(area)``: the side of a square of the same area."""
        return float(self.area) ** 0.5


def _as_tensor(out: Any) -> torch.Tensor:
    """The tensor of a module output: itself, the last of a list/tuple, the last value of a dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out:
        return _as_tensor(out[-1])
    raise TypeError(f"cannot read a tensor from a module output of type {type(out).__name__}")


@contextlib.contextmanager
def capture(model: nn.Module, layer: str = "") -> Iterator[List[torch.Tensor]]:
    """Record the output of ``model.get_submodule(layer)`` (``""``: the model) on every forward.

    Yields a list that receives one tensor per forward call.
    """
    module = model.get_submodule(layer) if layer else model
    seen: List[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(_as_tensor(out)))
    try:
        yield seen
    finally:
        handle.remove()


def _size2(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _resolve_position(position: Position, act: torch.Tensor) -> Optional[Tuple[int, int]]:
    if act.dim() != 4:
        if position not in (None, "all", "centre", "center"):
            raise ValueError(f"the layer output has shape {tuple(act.shape)}: no spatial position to pick")
        return None
    h, w = act.shape[-2:]
    if position is None or position in ("centre", "center"):
        return h // 2, w // 2
    if position == "all":
        return None
    i, j = position
    if not (0 <= i < h and 0 <= j < w):
        raise ValueError(f"position {(i, j)} outside the layer's {h}×{w} map")
    return int(i), int(j)


def _pick(act: torch.Tensor, pos: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Per batch element, the activations at ``pos`` (all channels), or all of them; flattened."""
    if pos is not None:
        act = act[:, :, pos[0], pos[1]]
    return act.reshape(act.shape[0], -1)


def _box(mask: torch.Tensor, pos, input_size) -> Optional[ReceptiveField]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    H, W = input_size
    clipped = top == 0 or left == 0 or bottom == H - 1 or right == W - 1
    return ReceptiveField(top, left, bottom, right, pos, (H, W), clipped)


def _structural_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).to(dtype=torch.float64).eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if type(child) is nn.MaxPool2d:
                if child.dilation not in (1, (1, 1)):
                    raise NotImplementedError("theoretical_receptive_field: dilated max pooling is not supported")
                new = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(parent, name, new)
            elif type(child) is nn.AdaptiveMaxPool2d:
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
            else:
                swap(child)

    swap(m)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.conv._ConvNd):
                w = mod.weight  # transposed convs store in×out/groups×k…; fan-in per output is what matters
                fan_in = w[0].numel() if not isinstance(mod, nn.modules.conv._ConvTransposeNd) else w[:, 0].numel()
                w.fill_(1.0 / fan_in)
            elif isinstance(mod, nn.Linear):
                mod.weight.fill_(1.0 / mod.in_features)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.running_mean is not None:
                    mod.running_mean.zero_()
                    mod.running_var.fill_(1.0)
                if mod.affine:
                    mod.weight.fill_(1.0)
            if getattr(mod, "bias", None) is not None and isinstance(mod.bias, torch.Tensor):
                mod.bias.zero_()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _input_gradient(model: nn.Module, layer: str, x: torch.Tensor,
                    position: Position) -> tuple[torch.Tensor, Optional[Tuple[int, int]]]:
    """d(the ``layer`` activation at ``position``, summed over channels)/d``x`` and the position resolved."""
    with torch.enable_grad(), capture(model, layer) as seen:
        model(x)
        if not seen:
            raise ValueError(f"layer {layer!r} did not run in the forward pass")
        act = seen[0]
        pos = _resolve_position(position, act)
        (grad,) = torch.autograd.grad(_pick(act, pos).sum(), x)
    return grad, pos


def theoretical_receptive_field(
    model: nn.Module,
    layer: str = "",
    input_size: Union[int, Sequence[int]] = 224,
    position: Position = None,
    in_chans: int = 3,
) -> ReceptiveField:
    """The exact theoretical receptive field of ``layer`` at ``position`` (default: its centre).

    ``layer`` is a module name as in ``model.named_modules()`` (``""``: the
    model's output; a list/dict output counts by its last entry).
    ``position="all"`` gives the union over the whole map.  See the module
    docstring for the method; the model is copied, never modified.
    """
    H, W = _size2(input_size)
    device = next(model.parameters(), torch.zeros(())).device
    probe = _structural_copy(model)
    x = torch.ones(1, in_chans, H, W, dtype=torch.float64, device=device, requires_grad=True)
    grad, pos = _input_gradient(probe, layer, x, position)
    mask = (grad[0] != 0).any(dim=0).cpu()
    box = _box(mask, pos, (H, W))
    if box is None:
        raise ValueError(f"the output of {layer!r} does not depend on the input")
    return box


def _above(heat: torch.Tensor, threshold: float) -> torch.Tensor:
    peak = float(heat.max())
    return heat >= threshold * peak if peak > 0 else torch.zeros_like(heat, dtype=torch.bool)


def extent(heat: torch.Tensor, threshold: float = 0.05) -> Tuple[int, Optional[Tuple[int, int, int, int]]]:
    """``(area, (top, left, bottom, right))`` of ``heat ≥ threshold · max(heat)`` (box None if all zero)."""
    mask = _above(heat, threshold)
    box = _box(mask, None, tuple(heat.shape))
    return int(mask.sum()), (None if box is None else (box.top, box.left, box.bottom, box.right))


def _placements(size: int, patch: int, stride: int) -> List[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # cover the last rows/columns too
        starts.append(size - patch)
    return starts


def _cells(start: int, patch: int, stride: int, size: int, attribution: str) -> slice:
    """The pixels (along one axis) a placement at ``start`` writes its change to."""
    if attribution == "spread":
        return slice(start, start + patch)
    first = min(max(start + patch // 2 - stride // 2, 0), size - 1)  # the stride-wide cell around the centre
    return slice(first, min(first + stride, size))


@torch.no_grad()
def empirical_receptive_field(
    model: nn.Module,
    layer: str,
    image: torch.Tensor,
    patch: int = 1,
    stride: int = 1,
    position: Position = None,
    threshold: float = 0.05,
    batch_size: int = 32,
    noise_std: Optional[float] = None,
    seed: int = 0,
    attribution: str = "centre",
) -> EmpiricalReceptiveField:
    """ParseNet's empirical receptive field of ``layer`` by sliding a random-noise patch.

    ``image``: ``C×H×W`` or ``1×C×H×W`` (on the model's device).  Each
    ``patch×patch`` placement (every ``stride`` pixels, the last one flush with
    the border) replaces the image there by Gaussian noise with the image's
    per-channel mean and std (or ``noise_std``); the change is the L2 norm,
    over channels, of the layer's activation difference at ``position``
    (default the centre of its map; ``"all"``: over the whole map).  Every
    batch holds the clean image too, so clean and occluded activations come
    from the same computation.  The model runs in eval mode (restored after).

    ``attribution``: where a placement's change lands on the map --
    ``"centre"`` (default) the ``stride×stride`` cell around the patch's centre
    pixel, so the measured field is the true one dilated by ``patch - 1``;
    ``"spread"`` every pixel the patch covers (averaged where placements
    overlap), dilated by ``2·(patch - 1)`` -- the measurement as it was first
    made here, kept to show the bias (module docstring).  With the default
    1-px probes at every pixel the two agree and nothing is dilated.  The
    image's border clips the field: use :func:`canvas` to measure it whole.
    """
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution={attribution!r}: expected one of {', '.join(ATTRIBUTIONS)}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be C×H×W or 1×C×H×W, got shape {tuple(image.shape)}")
    _, C, H, W = image.shape
    if not (1 <= patch <= min(H, W)) or stride < 1:
        raise ValueError(f"need 1 <= patch <= {min(H, W)} and stride >= 1, got patch={patch}, stride={stride}")
    gen = torch.Generator().manual_seed(seed)
    mean = image.mean(dim=(0, 2, 3)).view(1, C, 1, 1).cpu()
    std = image.std(dim=(0, 2, 3)).view(1, C, 1, 1).cpu() if noise_std is None else torch.full((1, C, 1, 1), noise_std)
    std = torch.where(std > 0, std, torch.ones_like(std))
    spots = [(t, l) for t in _placements(H, patch, stride) for l in _placements(W, patch, stride)]

    was_training = model.training
    model.eval()
    heat = torch.zeros(H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    pos: Optional[Tuple[int, int]] = None
    try:
        with capture(model, layer) as seen:
            for start in range(0, len(spots), batch_size):
                chunk = spots[start : start + batch_size]
                noise = (torch.randn(len(chunk), C, patch, patch, generator=gen) * std + mean).to(image)
                batch = image.repeat(len(chunk) + 1, 1, 1, 1)
                for b, (t, l) in enumerate(chunk, start=1):
                    batch[b, :, t : t + patch, l : l + patch] = noise[b - 1]
                seen.clear()
                model(batch)
                if not seen:
                    raise ValueError(f"layer {layer!r} did not run in the forward pass")
                act = seen[-1]
                if start == 0:
                    pos = _resolve_position(position, act)
                picked = _pick(act, pos).double()
                change = (picked[1:] - picked[:1]).norm(dim=1).cpu()
                for (t, l), c in zip(chunk, change.tolist()):
                    rows, cols = _cells(t, patch, stride, H, attribution), _cells(l, patch, stride, W, attribution)
                    heat[rows, cols] += c
                    count[rows, cols] += 1
    finally:
        model.train(was_training)
    heat = heat / count.clamp(min=1)
    mask = _above(heat, threshold)
    area = int(mask.sum())
    return EmpiricalReceptiveField(heat, area, _box(mask, pos, (H, W)), area / (H * W), threshold, pos)


def canvas(image: torch.Tensor, size: Union[int, Sequence[int]], fill: str = "mirror") -> torch.Tensor:
    """``image`` (``C×H×W`` or ``N×C×H×W``) at the centre of a ``size`` canvas (at least the image's size).

    ``fill="mirror"``: the image reflected about its borders, again and again
    (the canvas keeps the image's statistics and has no seams); ``"zeros"``:
    zero padding (the mean colour of a normalised image).  The image sits at
    rows ``(S_h - H) // 2 …`` and columns ``(S_w - W) // 2 …``.
    """
    if fill not in ("mirror", "zeros"):
        raise ValueError(f"fill={fill!r}: expected 'mirror' or 'zeros'")
    x = image if image.dim() == 4 else image.unsqueeze(0)
    H, W = x.shape[-2:]
    Sh, Sw = _size2(size)
    if Sh < H or Sw < W:
        raise ValueError(f"canvas {Sh}×{Sw} is smaller than the image ({H}×{W})")
    top, left = (Sh - H) // 2, (Sw - W) // 2
    pads = [left, Sw - W - left, top, Sh - H - top]  # F.pad order: left, right, top, bottom
    if fill == "zeros":
        x = F.pad(x, pads)
    while any(pads) and fill == "mirror":
        h, w = x.shape[-2:]
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        x = F.pad(x, step, mode="reflect")
        pads = [p - q for p, q in zip(pads, step)]
    return x if image.dim() == 4 else x[0]


def gradient_receptive_field(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    position: Position = None,
    threshold: float = 0.05,
    canvas_size: Optional[Union[int, Sequence[int]]] = None,
    fill: str = "mirror",
) -> EmpiricalReceptiveField:
    """The gradient ERF of ``layer`` at ``position`` (default: the centre of its map).

    ``images`` (``C×H×W`` or ``N×C×H×W``) are each put on a ``canvas_size``
    canvas (:func:`canvas`; default: the images as they are -- choose a canvas
    larger than the theoretical field so the border cannot clip it); the map
    is ``|∂ Σ_c y_c(position) / ∂x|`` summed over input channels and averaged
    over the images (Luo et al., arXiv 1701.04128: a gradient of one at the
    unit, zero elsewhere, propagated back).  The model runs in eval mode
    (restored after; batch norms then use their running statistics, so the
    images do not interact) and is not changed.
    """
    x = images if images.dim() == 4 else images.unsqueeze(0)
    if canvas_size is not None:
        x = canvas(x, canvas_size, fill)
    x = x.detach().clone().requires_grad_(True)
    H, W = x.shape[-2:]
    was_training = model.training
    model.eval()
    try:
        grad, pos = _input_gradient(model, layer, x, position)
    finally:
        model.train(was_training)
    heat = grad.detach().abs().sum(dim=1).mean(dim=0).double().cpu()
    mask = _above(heat, threshold)
    area = int(mask.sum())
    return EmpiricalReceptiveField(heat, area, _box(mask, pos, (H, W)), area / (H * W), threshold, pos,
                                   method="gradient")
