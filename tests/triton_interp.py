"""Running Triton kernels on CPU in tests: Triton's interpreter, which must be chosen at process start.

Triton fixes interpreted-or-compiled per process when ``triton.language`` is
first imported, and in a pytest session some other test file has usually
imported it already (importing timm does).  So a kernel test named
``test_interp_*`` takes the :func:`interpret` fixture: it runs only when this
process started with ``TRITON_INTERPRET=1`` and triton came up interpreted.
Otherwise ``tests/test_kernels.py::test_interpreted_tests_in_a_fresh_process``
reruns every ``test_interp_*`` of the ``tests/test_kernels*.py`` files in a
subprocess that sets the variable before anything is imported.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import pytest
import torch

from dla_repro.kernels import ENV_VAR


def triton_mode() -> str:
    """``"interpreted"``, ``"compiled"`` or ``"unimported"`` (what triton.language came up as)."""
    if "triton.language" not in sys.modules:
        return "unimported"
    tl_sum = sys.modules["triton.language"].standard.sum
    return "interpreted" if type(tl_sum).__name__ == "InterpretedFunction" else "compiled"


def can_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1" and triton_mode() in ("interpreted", "unimported")


def compiles_natively() -> bool:
    """Whether triton is (or will come up) compiled in this process, as ahead-of-time compilation needs."""
    mode = triton_mode()
    return not (mode == "interpreted" or (mode == "unimported" and os.environ.get("TRITON_INTERPRET") == "1"))


@pytest.fixture
def interpret(monkeypatch):
    """Skip unless Triton runs interpreted here; force the Triton backend for the test."""
    if not can_interpret():
        pytest.skip("needs TRITON_INTERPRET=1 from process start (run by the subprocess test)")
    monkeypatch.setenv(ENV_VAR, "triton")


def forward_backward(
    fn: Callable, inputs: Sequence[torch.Tensor], grad_out: Callable[[torch.Tensor], torch.Tensor]
) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
    """``(y, grads)``: ``y = fn(*inputs)``, then ``y.backward(grad_out(y))``; a gradient per input, None if not required."""
    y = fn(*inputs)
    y.backward(grad_out(y))
    return y.detach(), [t.grad if t.requires_grad else None for t in inputs]
