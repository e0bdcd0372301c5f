"""The op table: what a kernel op is, where it is registered, which implementation runs.

An op (:class:`KernelOp`) is one row of :data:`OPS`:

* a **PyTorch reference** -- the ground truth, and what CPU and CI run;
* an optional **Triton implementation** with the same signature, named by
  ``"module:function"`` and imported on first use (so importing
  :mod:`dla_repro.kernels` never imports triton);
* a **benchmark spec** (:class:`BenchSpec`): how to make inputs of a shape,
  dtype and device, the bytes any implementation must move, default shapes;
* a **test spec** (:class:`TestSpec`): the cases the kernel is compared with the
  reference on (odd shapes, layouts, dtypes, block sizes), tolerances, the
  ``gradcheck`` cases and the ahead-of-time GPU compilations.

One dispatch serves every op: :func:`kernel_backend` reads ``DLA_REPRO_KERNELS``

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

and an op without a Triton implementation always runs its reference.

Inputs of every op are made by one function, :meth:`KernelOp.inputs`: the op's
``make_inputs`` draws contiguous tensors, :func:`to_layout` puts each 4-D
(``N×C×H×W``) tensor in the requested layout, and the op's differentiable
inputs get ``requires_grad``.  The benchmark and the test harness both use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "LAYOUTS",
    "OPS",
    "BenchSpec",
    "CompileCase",
    "KernelOp",
    "TestCase",
    "TestSpec",
    "accumulation_dtype",
    "get_op",
    "kernel_backend",
    "register_op",
    "to_layout",
    "triton_available",
]

ENV_VAR = "DLA_REPRO_KERNELS"
BACKENDS = ("auto", "triton", "reference")
#: Layouts of the 4-D inputs: the two memory formats, a channel slice of a wider
#: tensor (no unit stride along channels or positions merged with the batch),
#: and a spatial transpose (``H`` and ``W`` cannot share one stride).
LAYOUTS = ("contiguous", "channels_last", "channel_slice", "spatial_transpose")

Shape = Tuple[int, ...]


# --------------------------------------------------------------------------- dispatch
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


def kernel_backend(x: torch.Tensor, op: Optional["KernelOp"] = None) -> str:
    """``"triton"`` or ``"reference"``: what an op would run for its first input ``x`` now.

    ``op=None`` asks about an op that has a Triton implementation.
    """
    mode = _requested()
    if mode == "reference" or (op is not None and op.triton is None):
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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions are accumulated in, by references and kernels alike: float64 for float64, else float32.

    Half-precision inputs are upcast: a sum of squares of a few hundred fp16
    activations overflows fp16 long before it overflows fp32.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- layouts
def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of ``t`` in ``layout`` (one of :data:`LAYOUTS`); tensors that are not 4-D come back as they are."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if t.dim() != 4:
        return t
    if layout == "channel_slice":
        N, C, H, W = t.shape
        wide = t.new_zeros(N, C + 2, H, W)
        wide[:, 1 : C + 1] = t
        return wide[:, 1 : C + 1]
    if layout == "spatial_transpose":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class BenchSpec:
    """How to benchmark an op.

    ``make_inputs(shape, dtype, device, generator)`` returns the op's positional
    inputs for an input of ``shape``, contiguous, drawn on the CPU from
    ``generator``.  ``bytes_moved(inputs, output)`` is ``(forward, forward +
    backward)``: the DRAM traffic any implementation must at least move, for
    the achieved bandwidth.
    """

    make_inputs: Callable[[Shape, torch.dtype, torch.device, torch.Generator], Tuple[torch.Tensor, ...]]
    bytes_moved: Callable[[Sequence[torch.Tensor], torch.Tensor], Tuple[int, int]]
    shapes: Tuple[Shape, ...]
    dtypes: Tuple[torch.dtype, ...] = (torch.float32,)
    layouts: Tuple[str, ...] = ("contiguous", "channels_last")


@dataclass(frozen=True)
class TestCase:
    """One comparison of the Triton implementation with the reference.

    ``layout`` applies to the 4-D inputs, ``grad_layout`` to ``∂l/∂y`` (default:
    ``layout``; ``"sum"`` is the gradient of ``y.sum()``, a stride-0 expanded
    tensor).  ``requires_grad`` picks which of the op's differentiable inputs
    need a gradient (default: all).  ``kwargs`` go to both implementations,
    ``kernel_kwargs`` (block sizes, grid caps) only to the Triton one.
    """

    __test__ = False  # not a pytest class

    shape: Shape
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"
    grad_layout: Optional[str] = None
    requires_grad: Optional[Tuple[bool, ...]] = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    kernel_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        parts = ["x".join(map(str, self.shape)), str(self.dtype).replace("torch.", ""), self.layout]
        if self.grad_layout:
            parts.append(f"dy-{self.grad_layout}")
        if self.requires_grad is not None:
            parts.append("grad-" + "".join("1" if g else "0" for g in self.requires_grad))
        parts += [f"{k}{v}" for k, v in {**self.kwargs, **self.kernel_kwargs}.items()]
        return "-".join(parts)


@dataclass(frozen=True)
class CompileCase:
    """One specialisation of a Triton kernel, compiled ahead of time for a GPU that need not be present.

    ``kernel`` names the (un-jitted) function in the op's Triton module.  Its
    arguments are typed by name: ``*_ptr`` are pointers to ``dtype`` (or to
    ``pointer_dtypes[name]``), names in ``constexprs`` and ``unit_strides``
    (specialised to 1, as Triton does for a stride equal to 1) are compile-time
    constants, names in ``floats`` are fp32 scalars, the rest int32.
    ``expect_ptx``: a string the PTX must contain (e.g. a vectorised load).
    """

    kernel: str
    constexprs: Mapping[str, Any]
    dtype: torch.dtype = torch.float32
    pointer_dtypes: Mapping[str, torch.dtype] = field(default_factory=dict)
    unit_strides: Tuple[str, ...] = ()
    floats: Tuple[str, ...] = ()
    expect_ptx: str = ""
    num_warps: int = 8

    @property
    def id(self) -> str:
        consts = "-".join(f"{k}{v}" for k, v in self.constexprs.items() if not isinstance(v, torch.dtype))
        return f"{self.kernel}-{str(self.dtype).replace('torch.', '')}-unit_{'_'.join(self.unit_strides)}-{consts}"


@dataclass(frozen=True)
class TestSpec:
    """How the test harness checks an op.

    ``cases``: the kernel against the reference, forward and gradients.
    ``tolerances``: ``dtype -> dict(rtol=, atol=)``.  ``gradcheck``: float64
    cases on which ``torch.autograd.gradcheck`` runs for the reference and the
    kernel (empty: not differentiable); ``gradgradcheck``: whether the reference
    is also checked twice differentiable.  ``compile_cases``: kernels compiled
    for sm_90 without a GPU.
    """

    __test__ = False  # not a pytest class

    cases: Tuple[TestCase, ...]
    tolerances: Mapping[torch.dtype, Mapping[str, float]]
    gradcheck: Tuple[TestCase, ...] = ()
    gradgradcheck: bool = True
    compile_cases: Tuple[CompileCase, ...] = ()


# --------------------------------------------------------------------------- the op
@dataclass(frozen=True)
class KernelOp:
    """One row of the op table; calling it runs the implementation :func:`kernel_backend` picks.

    ``triton`` is ``"module:function"`` (imported when first called) or ``None``.
    ``grad_inputs``: positions of the differentiable inputs.  ``source``: the
    paper (arXiv id, section) the op comes from.
    """

    name: str
    reference: Callable[..., torch.Tensor]
    bench: BenchSpec
    test: TestSpec
    grad_inputs: Tuple[int, ...] = (0,)
    triton: Optional[str] = None
    source: str = ""

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if kernel_backend(args[0], self) == "triton":
            return self.triton_impl()(*args, **kwargs)
        return self.reference(*args, **kwargs)

    def __repr__(self) -> str:
        return f"KernelOp({self.name!r}, triton={self.triton!r}, source={self.source!r})"

    @property
    def triton_module(self) -> str:
        if self.triton is None:
            raise LookupError(f"op {self.name!r} has no Triton implementation")
        return self.triton.partition(":")[0]

    def triton_impl(self) -> Callable[..., torch.Tensor]:
        """The Triton implementation (importing triton); looked up at each call, so it can be patched."""
        return getattr(importlib.import_module(self.triton_module), self.triton.partition(":")[2])

    def inputs(
        self,
        shape: Shape,
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
        layout: str = "contiguous",
        generator: Optional[torch.Generator] = None,
        requires_grad: Union[bool, Tuple[bool, ...]] = True,
    ) -> Tuple[torch.Tensor, ...]:
        """Positional inputs for an input of ``shape``: drawn, laid out, and marked for gradients.

        ``requires_grad``: for all of :attr:`grad_inputs` at once, or one flag each.
        """
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        drawn = self.bench.make_inputs(tuple(shape), dtype, torch.device(device), generator)
        args = [to_layout(t, layout) for t in drawn]
        flags = requires_grad if isinstance(requires_grad, tuple) else (requires_grad,) * len(self.grad_inputs)
        if len(flags) != len(self.grad_inputs):
            raise ValueError(f"op {self.name!r}: {len(self.grad_inputs)} requires_grad flags expected, got {flags}")
        for i, flag in zip(self.grad_inputs, flags):
            args[i].requires_grad_(flag)
        return tuple(args)


#: The op table, by name; filled by :func:`register_op` (rows in :mod:`dla_repro.kernels`).
OPS: Dict[str, KernelOp] = {}


def register_op(op: KernelOp) -> KernelOp:
    """Add ``op`` to :data:`OPS` and return it (names are unique)."""
    if op.name in OPS:
        raise ValueError(f"kernel op {op.name!r} is already registered")
    OPS[op.name] = op
    return op


def get_op(name: str) -> KernelOp:
    """The op called ``name``; an unknown name is a ``ValueError`` that lists the ops."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown kernel op {name!r}; the ops are: {', '.join(sorted(OPS))}") from None
