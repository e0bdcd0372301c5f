"""Pure-PyTorch references of the kernels (what CPU and CI run).

Each function here has exactly the signature of its Triton counterpart in this
package; autograd differentiates it, so its gradients are the ground truth the
kernels are tested against.
"""

from __future__ import annotations

import torch

__all__ = ["l2norm_scale_reference", "accumulation_dtype"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the L2 norm is accumulated in: float64 for float64, else float32.

    Half-precision inputs are upcast: a sum of squares of a few hundred fp16
    activations overflows fp16 long before it overflows fp32.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def l2norm_scale_reference(x: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """ParseNet's L2 normalisation over channels with a per-channel scale.

    For every position ``(n, h, w)`` of ``x`` (``N×C×H×W``, any memory format)::

        x̂_c = x_c / sqrt(Σ_c' x_c'² + eps)
        y_c = γ_c · x̂_c

    ``gamma`` has shape ``(C,)``.  The result has dtype
    ``torch.promote_types(x.dtype, gamma.dtype)`` and the memory format of ``x``;
    the norm is accumulated in :func:`accumulation_dtype`.
    """
    _check_l2norm_args(x, gamma)
    out_dtype = torch.promote_types(x.dtype, gamma.dtype)
    acc = accumulation_dtype(out_dtype)
    xf = x.to(acc)
    inv_norm = torch.rsqrt(xf.square().sum(dim=1, keepdim=True) + eps)
    return (xf * inv_norm * gamma.to(acc).view(1, -1, 1, 1)).to(out_dtype)


def _check_l2norm_args(x: torch.Tensor, gamma: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"l2norm_scale expects x of shape N×C×H×W, got shape {tuple(x.shape)}")
    if gamma.dim() != 1 or gamma.shape[0] != x.shape[1]:
        raise ValueError(
            f"l2norm_scale expects gamma of shape ({x.shape[1]},) for x with {x.shape[1]} channels, "
            f"got shape {tuple(gamma.shape)}"
        )
    if not (x.is_floating_point() and gamma.is_floating_point()):
        raise TypeError(f"l2norm_scale expects floating-point tensors, got {x.dtype} and {gamma.dtype}")
