"""Kernel tests run the Triton kernels on the GPU when there is one, else in Triton's CPU interpreter.

`@triton.jit` reads TRITON_INTERPRET when it decorates a kernel, i.e. when a scratchlm.kernels module is first
imported, so the variable is set here, at collection, before any test module imports them.
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest
import torch

if torch.cuda.is_available():
    # One pinned tile per kernel instead of tuning each test shape (test_every_candidate_tile covers the rest).
    os.environ.setdefault("SCRATCHLM_AUTOTUNE", "0")
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    for name in ("scratchlm.kernels.rmsnorm", "scratchlm.kernels.flash_attention", "scratchlm.kernels.decode_attention",
                 "scratchlm.kernels.rope_store", "scratchlm.kernels.swiglu", "scratchlm.kernels.gemv"):
        module = sys.modules.get(name)
        if module is not None and not module.INTERPRETED:  # decorated for a GPU that is not there
            raise pytest.UsageError(f"{name} was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
                                    "run the kernel tests in their own pytest process")


def _patch_interpreter_for_numpy_2_4() -> None:
    """Triton 3.6's interpreter turns a program id into a 1-element array and calls int() on it for range()
    bounds, which NumPy >= 2.4 refuses (triton-lang/triton#9171, fixed upstream by #9172). Apply the same
    one-line fix (squeeze first) to the interpreter only; compiled GPU kernels never take this path."""
    try:
        int(np.zeros(1))
        return  # older NumPy: nothing to fix
    except TypeError:
        pass
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "squeezes_index", False):
        return

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.squeezes_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def _patch_interpreter_bfloat16_dot() -> None:
    """Triton 3.6's interpreter stores bfloat16 as uint16 and hands those integers straight to np.matmul in
    tl.dot (it converts only fp8 operands first), so a bfloat16 dot returns garbage. Widen bfloat16 operands to
    float32 first, as the GPU's tensor cores do (exact products, float32 accumulation)."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = interpreter.InterpreterBuilder
    original = builder.create_dot
    if getattr(original, "widens_bfloat16", False):
        return

    def widen(operand):
        if operand.dtype.scalar != interpreter.tl.bfloat16:
            return operand
        data = interpreter._convert_float(operand.data, interpreter.tl.bfloat16, interpreter.tl.float32, None)
        return interpreter.TensorHandle(data.view(np.float32), interpreter.tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot.widens_bfloat16 = True
    builder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_for_numpy_2_4()
    _patch_interpreter_bfloat16_dot()


@pytest.fixture(autouse=True)
def seeded(request: pytest.FixtureRequest) -> int:
    """Fresh inputs per test, the same ones on every run (the seed comes from the test id)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a kernel fills starts as NaN (integers: their most negative value, never a valid index): an
    element the kernel does not write fails the comparison."""
    try:
        from scratchlm import kernels
    except ImportError:
        return

    def poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        junk = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
        return torch.full(shape, junk, dtype=dtype, device=device)
    monkeypatch.setattr(kernels, "output_buffer", poisoned)
