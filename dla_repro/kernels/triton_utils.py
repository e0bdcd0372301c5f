"""What the Triton kernels of this package share: interpreter guard, jit cache, strides, dtypes, grids.

*Interpreter.*  On CPU tensors a kernel runs only under Triton's interpreter,
and Triton fixes interpreted-or-compiled for the whole process when
``triton.language`` is first imported (its ``tl.sum``, ``tl.zeros`` … are
jitted then; importing timm imports triton).  So ``TRITON_INTERPRET=1`` must be
set before that -- in the shell or in a fresh subprocess, as the tests do.
:func:`jitted` reports a mismatch as a clear error instead of a Triton
traceback, and :func:`check_device` a CPU tensor outside the interpreter.

*Strides.*  Kernels over ``N×C×H×W`` tensors address them as
``n·s_n + c·s_c + q·s_q`` with ``q = h·W + w`` (:func:`plane_strides`): one
kernel then serves contiguous, ``channels_last``, channel slices and expanded
(stride-0) tensors without copies.

Importing this module imports triton; :mod:`dla_repro.kernels` imports the
Triton modules only when a kernel is actually used.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, Callable, ContextManager, Dict, Tuple

import torch
import triton
import triton.language as tl

from .registry import ENV_VAR, CompileCase

__all__ = [
    "block_sizes",
    "SUPPORTED_DTYPES",
    "interpreter_enabled",
    "jitted",
    "check_device",
    "device_context",
    "plane_strides",
    "tl_dtype",
    "default_programs",
    "compile_for_gpu",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TL_DTYPES = {
    torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64,
    torch.int32: tl.int32,  # index tables (GALD's interpolation taps)
}
_JITTED: Dict[Tuple[Callable, bool], Any] = {}


def interpreter_enabled() -> bool:
    """Whether Triton runs interpreted on the CPU in this process.

    Triton decides at the import of ``triton.language`` (its library functions
    such as ``tl.sum`` are jitted then), so ``TRITON_INTERPRET=1`` must be in the
    environment before triton is first imported -- note that importing timm
    imports triton.  Run interpreted code in a fresh process if in doubt.
    """
    return type(tl.standard.sum).__name__ == "InterpretedFunction"


def jitted(fn: Callable):
    """``triton.jit(fn)`` for the mode triton runs in, jitted once per function and mode."""
    interpreted = interpreter_enabled()
    if bool(triton.knobs.runtime.interpret) != interpreted:
        now = os.environ.get("TRITON_INTERPRET", "<unset>")
        raise RuntimeError(
            f"TRITON_INTERPRET is {now} now, but triton.language was imported "
            f"{'with' if interpreted else 'without'} the interpreter: Triton fixes the mode when it is "
            "first imported (importing timm imports it). Set TRITON_INTERPRET=1 before anything "
            "imports triton, e.g. in the shell or in a fresh subprocess"
        )
    key = (fn, interpreted)
    if key not in _JITTED:
        _JITTED[key] = triton.jit(fn)
    return _JITTED[key]


def check_device(x: torch.Tensor, kernel: str) -> None:
    """Raise a clear error unless the Triton ``kernel`` can run on ``x`` (its device and dtype)."""
    if x.device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"the Triton {kernel} kernel runs on CUDA tensors; x is on {x.device}. On a CPU it runs "
            "only under Triton's interpreter: set TRITON_INTERPRET=1 in the environment before "
            "triton is first imported (a fresh process), or use the reference "
            f"({ENV_VAR}=reference or auto)"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton {kernel} kernel supports {SUPPORTED_DTYPES}, got {x.dtype}")


def device_context(x: torch.Tensor) -> ContextManager:
    """Make ``x``'s GPU the current one for a launch (a no-op for CPU tensors)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def plane_strides(t: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """``t`` (copied only if needed) and its strides ``(s_n, s_c, s_q)`` over ``(n, c, h·W + w)``.

    ``H`` and ``W`` merge into one axis ``q`` when ``s_h = W·s_w`` (or one of them
    is 1); otherwise (a spatial transpose, a crop in ``W``) ``t`` is made contiguous.
    """
    _, _, H, W = t.shape
    sn, sc, sh, sw = t.stride()
    if H == 1 or W == 1 or sh == W * sw:
        return t, (sn, sc, sw if W > 1 else sh)
    t = t.contiguous()
    sn, sc, _, sw = t.stride()
    return t, (sn, sc, sw)


def tl_dtype(dtype: torch.dtype):
    """The ``triton.language`` dtype of a torch floating-point dtype (or ``int32``)."""
    return _TL_DTYPES[dtype]


def default_programs(device: torch.device, per_sm: int = 4, interpreted: int = 8) -> int:
    """Grid size of a persistent kernel: ``per_sm`` programs per SM on a GPU, ``interpreted`` in the interpreter."""
    if device.type == "cuda" and not interpreter_enabled():
        return per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    return interpreted


def compile_for_gpu(fn: Callable, case: CompileCase, arch: int = 90):
    """Compile the plain function ``fn`` as ``case`` specialises it for CUDA capability ``arch``; no GPU needed.

    Catches what the interpreter accepts but the compiler rejects.  Arguments
    are typed by name as :class:`~dla_repro.kernels.registry.CompileCase` says;
    torch dtypes among its ``constexprs`` become ``triton.language`` dtypes;
    pointer and int32 arguments are declared 16-divisible, as Triton
    specialises them at launch.  Returns the compiled kernel (``.asm["ptx"]``,
    ``.asm["cubin"]``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    const = {k: tl_dtype(v) if isinstance(v, torch.dtype) else v for k, v in case.constexprs.items()}
    names = list(inspect.signature(fn).parameters)
    signature = {}
    for name in names:
        if name in const or name in case.unit_strides:
            signature[name] = "constexpr"
            const.setdefault(name, 1)
        elif name.endswith("_ptr"):
            pointee = tl_dtype(case.pointer_dtypes.get(name, case.dtype)).name
            signature[name] = "*" + {"int32": "i32"}.get(pointee, pointee)  # the signature's spelling
        else:
            signature[name] = "fp32" if name in case.floats else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if signature[n] not in ("constexpr", "fp32")}
    src = ASTSource(triton.jit(fn), signature=signature, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": case.num_warps})


def block_sizes(C: int, n: int, block_c: int | None, block_p: int | None, *, max_block_c: int, tile: int
                ) -> Tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)`` of a channels × positions program: ``block_c`` channels (the next power of two of
    ``C``, at most ``max_block_c``) and enough of the ``n`` positions for ``tile`` elements. Explicit values must
    be powers of two. A heuristic, not tuned on hardware."""
    for name, v in (("block_c", block_c), ("block_p", block_p)):
        if v is not None and (v < 1 or v & (v - 1)):
            raise ValueError(f"{name} must be a positive power of two, got {v}")
    bc = block_c or min(triton.next_power_of_2(max(C, 1)), max_block_c)
    bp = block_p or max(1, min(tile // bc, triton.next_power_of_2(max(n, 1))))
    return bc, bp
