"""Triton kernels for the model's hot spots, each beside a pure-PyTorch twin:

    scratchlm.kernels.rmsnorm          RMSNorm forward + backward (`rms_norm`), reference `rms_norm_reference`
    scratchlm.kernels.flash_attention  FlashAttention-2 forward + backward (`flash_attention`), registered as the
                                       model's "flash" attention backend
    scratchlm.kernels.flash_reference  the same FlashAttention-2 algorithm, tiled, in PyTorch (CPU-runnable)
    scratchlm.kernels.decode_attention a few queries per row against its KV-cache row (`decode_attention`),
                                       what the "flash" backend runs for decode steps and verification
    scratchlm.kernels.gemv             one row times a weight matrix (`gemv`), what Linear runs for batch-1
                                       decoding; `gemv_qkv`, attention's projection + RoPE + cache store
    scratchlm.kernels.rope_store       RoPE + cache store of several rows after their QKV GEMM (`rope_store`)
    scratchlm.kernels.swiglu           silu(gate) * up of several rows (`swiglu`)
    scratchlm.kernels.greedy           each row's argmax token and its log-probability (`greedy`), or a
                                       Gumbel-max draw (`sample`): the engine's and speculative decoding's picks

Importing this package does not import Triton; the kernel modules do. Kernels run on CUDA tensors, or on CPU
tensors when TRITON_INTERPRET=1 was set before the kernel module was imported (Triton reads it when it
decorates a kernel): that is how the tests run them without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

log = logging.getLogger(__name__)

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Programmatic dependent launch for the decode kernels (GEMV, decode attention): on Hopper and later a kernel
# may start while the one before it finishes, reading what does not depend on it (a GEMV its weights) until
# `gdc_wait`. SCRATCHLM_PDL=0 turns it off.
PDL = os.environ.get("SCRATCHLM_PDL", "1") != "0"


@functools.cache
def _hopper_or_later(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def pdl_options(t: Tensor) -> dict[str, bool]:
    """Launch options for a kernel that supports programmatic dependent launch (its PDL constexpr says whether
    to wait on the kernel before): {"launch_pdl": True} on a Hopper-or-later GPU with PDL on, else {}."""
    return {"launch_pdl": True} if PDL and t.is_cuda and _hopper_or_later(t.device) else {}


def gpu_module(name: str) -> ModuleType | None:
    """scratchlm.kernels.<name> when there is a GPU and Triton imports, else None. Callers load it as they build
    things (a model, an engine): an import inside a torch.compile'd function would break its graph."""
    if not torch.cuda.is_available():
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


def output_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """`torch.empty` for every buffer a kernel fills. The tests replace it with a NaN-filled allocation, so an
    element a kernel forgets to write shows up as NaN instead of passing with whatever memory held."""
    return torch.empty(shape, dtype=dtype, device=device)


def heads_per_query(b: int, h: int, t: int, d: int, dtype: torch.dtype, device: torch.device,
                    allocate: Callable[..., Tensor] | None = None) -> Tensor:
    """A (B, H, T, D) buffer laid out as (B, T, H, D): each query's heads side by side, so that attention
    reads q and the output projection reads the attention output without copies. allocate(shape, dtype=,
    device=): `output_buffer` by default (a fake implementation passes torch.empty)."""
    allocate = allocate or (lambda shape, dtype, device: output_buffer(shape, dtype, device))
    return allocate((b, t, h, d), dtype=dtype, device=device).transpose(1, 2)


def check_device(interpreted: bool, *tensors: Tensor) -> None:
    """All tensors on one device, and a device Triton can run on: CUDA, or the CPU under the interpreter."""
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise ValueError(f"all inputs must be on one device, got {[str(t.device) for t in tensors]}")
    if device.type != "cuda" and not (interpreted and device.type == "cpu"):
        raise ValueError(f"Triton kernels need CUDA tensors (got {device}); on CPU set TRITON_INTERPRET=1 "
                         "before scratchlm.kernels modules are imported (tests only: it is slow)")


def check_dtype(what: str, dtype: torch.dtype) -> None:
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"{what} must be float16, bfloat16 or float32, got {dtype}")


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 4 for the interpreter (any small number of programs works)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def register_compile_fallbacks() -> None:
    """Tell Inductor up front that our custom ops loaded so far (`torch.ops.scratchlm.*`) are opaque calls,
    with the layout constraint it would pick itself. Inductor does this on its own the first time it meets an
    op, but torch 2.11 first formats the op's arguments for an INFO log line whether or not it is printed: for
    the greedy kernel's logits behind a 12-layer decode step that is a deep IR graph, and compiling hung there
    (vllm-project/vllm#43111; lazy in later versions). Call before torch.compile traces a step using our ops."""
    try:  # Inductor internals: if they moved, Inductor still finds the ops itself
        from torch._inductor import lowering
        from torch._library.utils import get_layout_constraint_tag
        namespace = torch.ops.scratchlm
        ops = [getattr(packet, overload) for packet in (getattr(namespace, name) for name in list(namespace._dir))
               for overload in packet.overloads()]
    except (ImportError, AttributeError) as error:
        log.warning("not pre-registering our kernels with Inductor (%s): compiling may be slow", error)
        return
    for op in ops:
        if op not in lowering.lowerings:
            constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
            lowering.make_fallback(op, layout_constraint=constraint)
