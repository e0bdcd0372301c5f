"""Optional GPU kernels as a table of ops: a PyTorch reference, an optional Triton implementation, specs.

Every op in :data:`OPS` is callable and picks its implementation per call
(:func:`kernel_backend`): the Triton kernel for CUDA tensors when triton is
installed, the reference otherwise; ``DLA_REPRO_KERNELS=auto|triton|reference``
overrides (see :mod:`.registry`).  The reference is the ground truth and what
CPU and CI run; tests compare the kernel with it under Triton's interpreter.

Adding an op (e.g. DynOPool's resize, GALD's mask):

1. ``kernels/<op>.py``: the reference, ``make_inputs``/``bytes_moved`` and a
   :class:`BenchSpec`, a :class:`TestSpec` -- no triton import;
2. ``kernels/<op>_triton.py``: the Triton implementation, same signature,
   built on :mod:`.triton_utils`;
3. one ``register_op(KernelOp(...))`` row below.

The benchmark (``dla-repro bench kernels``) and the test harness
(``tests/test_kernels.py``) iterate the table, so the row is all they need.
Importing this package does not import triton.  It knows nothing of models;
:mod:`dla_repro.models.parsenet` uses :func:`l2norm_scale`,
:class:`dla_repro.models.resizing.DynOPool` uses :func:`dynopool_resample`, GALD's local
distribution :func:`gald_ld_tail`.
"""

from __future__ import annotations

from . import dynopool_resample as _dynopool_resample
from . import gald_ld_tail as _gald_ld_tail
from . import l2norm
from .dynopool_resample import dynopool_resample_reference
from .gald_ld_tail import gald_ld_tail_reference
from .l2norm import l2norm_scale_reference
from .registry import *  # noqa: F403  (the op-table API: KernelOp, OPS, register_op, kernel_backend, ...)
from .registry import __all__ as _OP_TABLE_API
from .registry import KernelOp, register_op

__all__ = [
    *_OP_TABLE_API,
    "dynopool_resample",
    "dynopool_resample_reference",
    "gald_ld_tail",
    "gald_ld_tail_reference",
    "l2norm_scale",
    "l2norm_scale_reference",
]

# --------------------------------------------------------------------------- the op table
#: ``l2norm_scale(x, gamma, eps=1e-10)``: ParseNet's L2Norm with a learned scale,
#: differentiable in ``x`` and ``gamma``; contract: :func:`l2norm_scale_reference`.
l2norm_scale = register_op(KernelOp(
    name="l2norm_scale",
    reference=l2norm_scale_reference,
    triton="dla_repro.kernels.l2norm_triton:l2norm_scale_triton",
    bench=l2norm.BENCH,
    test=l2norm.TEST,
    grad_inputs=(0, 1),
    source="ParseNet, arXiv 1506.04579, §3.3",
))  # fmt: skip

#: ``dynopool_resample(x, r, offsets, out_size=None, reduce="max", padding_mode="border")``:
#: DynOPool's K bilinear queries per output cell and their max (or mean), differentiable
#: in ``x`` and the scale factor ``r``; contract: :func:`dynopool_resample_reference`.
dynopool_resample = register_op(KernelOp(
    name="dynopool_resample",
    reference=dynopool_resample_reference,
    triton="dla_repro.kernels.dynopool_resample_triton:dynopool_resample_triton",
    bench=_dynopool_resample.BENCH,
    test=_dynopool_resample.TEST,
    grad_inputs=(0, 1),
    source="DynOPool, arXiv 2205.15254, §3 (our equations: dla_repro.models.resizing.DynOPool)",
))  # fmt: skip

#: ``gald_ld_tail(mask_logits, ga, feature=None, form="released")``: GALD's local distribution after the
#: mask convolutions -- bilinear upsampling (align_corners=True) of the mask logits, sigmoid, gate --
#: differentiable in all three tensors; contract: :func:`gald_ld_tail_reference`.
gald_ld_tail = register_op(KernelOp(
    name="gald_ld_tail",
    reference=gald_ld_tail_reference,
    triton="dla_repro.kernels.gald_ld_tail_triton:gald_ld_tail_triton",
    bench=_gald_ld_tail.BENCH,
    test=_gald_ld_tail.TEST,
    grad_inputs=(0, 1, 2),
    source="GALD, arXiv 1909.07229 (local distribution); released form: lxtGH/GALD-DGCNet libs/models/GALDNet.py",
))  # fmt: skip
