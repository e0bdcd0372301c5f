"""Optional GPU kernels, each with a pure-PyTorch reference of the same signature.

``l2norm_scale(x, gamma, eps=1e-10)`` -- ParseNet's channel-wise L2
normalisation with a per-channel scale -- picks its implementation per call:

========================  =====================================================
``DLA_REPRO_KERNELS``     implementation
========================  =====================================================
``auto`` (default/unset)  the Triton kernel for CUDA tensors (when triton is
                          installed), the reference otherwise
``triton``                always the kernel; on CPU tensors this needs
                          Triton's interpreter (``TRITON_INTERPRET=1`` set
                          before triton is first imported in the process)
``reference``             always the reference
========================  =====================================================

Importing this package does not import triton: :mod:`.l2norm` (which does) is
imported on the first call that uses the kernel.  This package knows nothing of
models; :mod:`dla_repro.models.parsenet` uses it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .reference import accumulation_dtype, l2norm_scale_reference

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "kernel_backend",
    "l2norm_scale",
    "l2norm_scale_reference",
    "accumulation_dtype",
    "triton_available",
]

ENV_VAR = "DLA_REPRO_KERNELS"
BACKENDS = ("auto", "triton", "reference")


def triton_available() -> bool:
    """Whether triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


def _requested() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={mode!r}: expected one of {', '.join(BACKENDS)}")
    return mode


def kernel_backend(x: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"``: what :func:`l2norm_scale` would run for ``x`` now."""
    mode = _requested()
    if mode == "reference":
        return "reference"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton is not installed")
        if x.device.type != "cuda" and not _interpreter_requested():
            raise RuntimeError(
                f"{ENV_VAR}=triton with a tensor on {x.device}: Triton kernels run on CUDA tensors, "
                "or on CPU tensors only under Triton's interpreter -- set TRITON_INTERPRET=1 in the "
                f"environment before triton is first imported, or use {ENV_VAR}=reference|auto"
            )
        return "triton"
    return "triton" if x.device.type == "cuda" and triton_available() else "reference"


def l2norm_scale(x: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``y_c = γ_c · x_c / sqrt(Σ_c' x_c'² + eps)`` at every position of ``x`` (``N×C×H×W``).

    Differentiable in ``x`` and ``gamma``.  See :func:`l2norm_scale_reference`
    for the contract and :mod:`dla_repro.kernels.l2norm` for the kernel.
    """
    if kernel_backend(x) == "triton":
        from .l2norm import l2norm_scale_triton

        return l2norm_scale_triton(x, gamma, eps)
    return l2norm_scale_reference(x, gamma, eps)
