"""Triton RMSNorm and its hand-written PyTorch reference against a float64 formula, forward and backward; the
model's RMSNorm on the Triton backend against the eager one; launcher errors; the residual add fused into the
norm (inference) against PyTorch, and a model forward of several rows through it. CPU: Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, TOLERANCES, check_fwd_bwd, leaf, require_triton
from tests.model import reference as ref
from tests.model.reference import EXACT64

require_triton()

from scratchlm.kernels import rmsnorm  # noqa: E402
from scratchlm.kernels.rmsnorm import rms_norm, rms_norm_reference  # noqa: E402
from scratchlm.model import RMSNorm  # noqa: E402

EPS = 1e-5
# Leading shapes of every rank, d_model a power of two or not, with a row count that leaves the last backward
# program (and the last forward tile) partly empty.
SHAPES = [(7, 64), (3, 37, 48), (1, 1, 130), (2, 3, 5, 33)]


def float64_rms_norm(x, w):
    return ref.rms_norm(x, w, EPS)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_triton_rms_norm_matches_float64(shape, dtype):
    x = leaf(*shape, dtype=dtype)
    w = leaf(shape[-1], dtype=dtype, scale=0.3)
    with torch.no_grad():
        w += 1
    check_fwd_bwd(lambda x, w: rms_norm(x, w, EPS), float64_rms_norm, [x, w], **TOLERANCES[dtype])


def test_weight_gradient_reduction_over_many_partial_rows(monkeypatch):
    """The dw reduction adds the programs' partial rows a tile at a time; shrink its tile so the interpreter's few
    programs span several steps and a partly filled last tile, over columns that end mid-tile."""
    monkeypatch.setattr(rmsnorm, "DW_BLOCK_PARTIALS", 2)
    monkeypatch.setattr(rmsnorm, "DW_BLOCK_COLS", 16)
    x, w = leaf(700, 40, dtype=torch.float32), leaf(40, dtype=torch.float32, scale=0.3)  # 11 programs
    check_fwd_bwd(lambda x, w: rms_norm(x, w, EPS), float64_rms_norm, [x, w], **TOLERANCES[torch.float32])


def test_triton_rms_norm_mixed_dtypes_like_autocast():
    """bfloat16 activations with a float32 weight (qk-norm under autocast): y and dx in bfloat16, dw in float32."""
    x, w = leaf(4, 9, 64, dtype=torch.bfloat16), leaf(64, dtype=torch.float32)
    y = rms_norm(x, w, EPS)
    assert y.dtype == torch.bfloat16
    dx, dw = torch.autograd.grad(y, (x, w), torch.randn_like(y))
    assert dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    expected = rms_norm_reference(x, w, EPS)
    torch.testing.assert_close(y, expected, rtol=1e-2, atol=1e-2)


def test_triton_rms_norm_strided_input():
    """A non-contiguous input (every other row of a bigger tensor) gives the same result as its copy."""
    x = torch.randn(10, 40, dtype=torch.float32, device=DEVICE)[::2]
    w = torch.randn(40, device=DEVICE)
    torch.testing.assert_close(rms_norm(x, w, EPS), rms_norm(x.contiguous(), w, EPS), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(7, 16), (2, 3, 5)], ids=str)
def test_reference_hand_written_backward_matches_float64_autograd(shape):
    x, w = leaf(*shape, dtype=torch.float64), leaf(shape[-1], dtype=torch.float64)
    check_fwd_bwd(lambda x, w: rms_norm_reference(x, w, EPS), float64_rms_norm, [x, w], **EXACT64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_model_rms_norm_triton_backend_matches_torch_backend(dtype):
    torch_norm = RMSNorm(48, EPS, device=DEVICE, dtype=dtype, backend="torch")
    triton_norm = RMSNorm(48, EPS, device=DEVICE, dtype=dtype, backend="triton")
    assert torch_norm.triton_kernel is None and triton_norm.triton_kernel is rms_norm
    with torch.no_grad():
        torch_norm.weight.copy_(torch.randn(48))
        triton_norm.weight.copy_(torch_norm.weight)
    x = leaf(3, 11, 48, dtype=dtype)
    out, expected = triton_norm(x), torch_norm(x)
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])
    dy = torch.randn_like(out)
    for g, e in zip(torch.autograd.grad(out, (x, triton_norm.weight), dy),
                    torch.autograd.grad(expected, (x, torch_norm.weight), dy)):
        torch.testing.assert_close(g, e, **TOLERANCES[dtype])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_add_rms_norm_adds_as_pytorch_and_normalises_the_sum(shape, dtype):
    x, r = (leaf(*shape, dtype=dtype).detach() for _ in range(2))
    w = leaf(shape[-1], dtype=dtype, scale=0.3).detach() + 1
    normed, summed = rmsnorm.add_rms_norm(x, r, w, EPS)
    # rounded once to the dtype, as the model's add (Triton's CPU interpreter truncates to bfloat16 instead of
    # rounding to nearest: one unit in the last place)
    torch.testing.assert_close(summed, r + x, rtol=2**-7 if dtype == torch.bfloat16 else 0, atol=0)
    ref.assert_close_scaled(normed.double(), float64_rms_norm(summed.double(), w.double()), "normed",
                            **TOLERANCES[dtype])
    with pytest.raises(ValueError, match="residual must match"):
        rmsnorm.add_rms_norm(x, r[..., :-1], w, EPS)


def test_a_model_forward_of_several_rows_adds_inside_the_norms(monkeypatch):
    """Several inference rows: each residual add happens in the kernel of the norm after it (forced on here, on
    the CPU): the logits of the unfused forward, and 2 fused kernels a layer; under autocast (a float32 residual
    stream, bfloat16 block outputs) the adds stay outside the kernel."""
    from scratchlm.model import ModelConfig, TransformerLM, layers

    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return rmsnorm.add_rms_norm(*args)

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=4, context_length=16, norm_backend="triton")
    model = TransformerLM(config, device=DEVICE).eval()
    tokens = torch.randint(0, 50, (2, 5), device=DEVICE)
    results = {}
    for name, kernel in (("unfused", None), ("fused", counted)):
        monkeypatch.setattr(layers, "_add_rms_norm", kernel)
        monkeypatch.setattr(layers, "_inference_kernels_device_type", DEVICE.type)
        with torch.no_grad():
            results[name] = model(tokens), model(tokens, logits=False)
    assert len(calls) == 2 * 2 * config.n_layers  # two forwards
    for got, expected in zip(results["fused"], results["unfused"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert model(tokens).grad_fn is not None and len(calls) == 4 * config.n_layers  # training: unfused
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):  # float32 stream + bf16 outputs
        torch.testing.assert_close(model(tokens), unfused_forward(model, tokens), rtol=0, atol=0)
    assert len(calls) == 4 * config.n_layers  # the two dtypes differ: added outside the kernel


def unfused_forward(model, tokens):
    from scratchlm.model import layers

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "_add_rms_norm", None)
        return model(tokens)


def test_empty_input():
    x, w = leaf(0, 3, 16, dtype=torch.float32), leaf(16, dtype=torch.float32)
    y = rms_norm(x, w)
    dx, dw = torch.autograd.grad(y.sum(), (x, w))
    assert y.shape == x.shape and dx.shape == x.shape and torch.equal(dw, torch.zeros(16, device=DEVICE))


def test_unknown_norm_backend_is_rejected():
    with pytest.raises(ValueError, match=r"unknown norm backend 'fast'.*auto.*torch.*triton"):
        RMSNorm(8, backend="fast")


@pytest.mark.parametrize(("x_shape", "w_shape", "dtype", "match"), [
    ((4, 8), (9,), torch.float32, r"x \(\.\.\., d\) and weight \(d,\)"),
    ((4, 8), (2, 8), torch.float32, r"x \(\.\.\., d\) and weight \(d,\)"),
    ((4, 8), (8,), torch.float64, "float16, bfloat16 or float32"),
    ((4, 8), (8,), torch.int32, "float16, bfloat16 or float32"),
])
def test_launcher_rejects_bad_inputs(x_shape, w_shape, dtype, match):
    x, w = torch.ones(x_shape, dtype=dtype, device=DEVICE), torch.ones(w_shape, dtype=dtype, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        rms_norm(x, w)


def test_launcher_rejects_d_model_beyond_one_tile():
    with pytest.raises(ValueError, match="d_model up to 16384"):
        rms_norm(torch.ones(1, 16385, device=DEVICE), torch.ones(16385, device=DEVICE))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(rmsnorm, "INTERPRETED", False)
    with pytest.raises(ValueError, match="need CUDA tensors.*TRITON_INTERPRET=1"):
        rms_norm(torch.ones(2, 8), torch.ones(8))


# -- GPU: real shapes ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8192, 768), (4, 4096, 1024), (2048, 4096), (3, 1000, 5120)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_triton_rms_norm_gpu(shape, dtype):
    x = leaf(*shape, dtype=dtype)
    w = leaf(shape[-1], dtype=dtype, scale=0.3)
    check_fwd_bwd(lambda x, w: rms_norm(x, w, EPS), float64_rms_norm, [x, w], **TOLERANCES[dtype])


@pytest.mark.gpu
def test_triton_rms_norm_gpu_compiles():
    """Under torch.compile the kernel is an opaque custom op: same values, no graph break."""
    norm = RMSNorm(1024, device="cuda", dtype=torch.bfloat16, backend="triton")
    x = leaf(4, 256, 1024, dtype=torch.bfloat16)
    compiled = torch.compile(norm, fullgraph=True)
    torch.testing.assert_close(compiled(x), norm(x), rtol=0, atol=0)
    compiled(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(norm.weight.grad).all()
