"""The Triton GEMV (one row x W^T) and its several-row kernel (2-16 rows) against a float64 matmul: sizes that
leave partial column blocks and partial K chunks, leading shapes, every tile choice, the fused RMSNorm / SwiGLU
gate / residual; launcher errors; the model's decode path through them; on a GPU, Linear's dispatch and whole
decode steps of one and several rows with and without the kernels."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, ON_GPU, TOLERANCES, require_triton, rotate64
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.kernels import gemv as gv  # noqa: E402
from scratchlm.kernels.gemv import gemv  # noqa: E402


def operands(n: int, k: int, dtype: torch.dtype, lead: tuple[int, ...] = (1,)) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(*lead, k, dtype=torch.float64, device=DEVICE).to(dtype)
    w = (torch.randn(n, k, dtype=torch.float64, device=DEVICE) / k**0.5).to(dtype)
    return x, w


@pytest.mark.parametrize(("n", "k", "lead"), [(37, 100, (1,)), (64, 64, (1, 1)), (130, 300, (1, 1, 1)), (5, 9, ())],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gemv_matches_float64(n, k, lead, dtype):
    x, w = operands(n, k, dtype, lead)
    y = gemv(x, w)
    assert y.shape == (*lead, n) and y.dtype == dtype
    assert_close_scaled(y.double(), x.double() @ w.double().T, "output", **TOLERANCES[dtype])


@pytest.mark.parametrize("tiles", [(1, 16, 1, 1), (2, 64, 4, 3), (8, 256, 4, 1), (32, 1024, 8, 3)], ids=str)
def test_every_tile_shape(tiles):
    """Column blocks from 1 to 32 rows and K chunks from 16 to beyond K: partial blocks on both axes."""
    x, w = operands(200, 700, torch.float32)
    assert_close_scaled(gv.launch(x, w, tiles=tiles).double(), x.double() @ w.double().T, "output",
                        **TOLERANCES[torch.float32])


def test_tile_rules(monkeypatch):
    monkeypatch.setattr(gv, "_shape_rules", {})
    assert gv.config(64, 768) == (2, 1024, 4, 3)  # K in one chunk
    assert gv.config(64, 5504) == (2, 2048, 8, 3)  # chunks of 2048, wider programs
    assert gv.config(64, 5) == (2, 8, 4, 3)
    gv.use_tile_rule("four-rows", [(64, 768), (64, 5504)])
    assert gv.config(64, 768) == (4, 1024, 4, 3) and gv.config(64, 5504) == (4, 2048, 8, 3)
    assert gv.config(65, 768) == (2, 1024, 4, 3)  # other shapes keep the default
    with pytest.raises(ValueError, match="unknown tile rule"):
        gv.use_tile_rule("three-rows", [(64, 768)])


@pytest.mark.parametrize(("n", "k", "lead"), [(37, 100, (2,)), (70, 40, (1, 5)), (130, 300, (4, 4)), (20, 9, (16,)), (64, 64, (1,))],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_several_rows_match_float64(n, k, lead, dtype):
    """The several-row kernel (`gemv_rows`, tensor cores): every row against the float64 product."""
    x, w = operands(n, k, dtype, lead)
    y = gv.gemv_rows(x, w)
    assert y.shape == (*lead, n) and y.dtype == dtype
    assert_close_scaled(y.double(), x.double() @ w.double().T, "output", **TOLERANCES[dtype])


@pytest.mark.parametrize(("n", "k", "rows"), [(74, 100, 3), (260, 300, 16), (2, 9, 2)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_several_rows_gate_matches_float64(n, k, rows, dtype):
    """gate: the product is SwiGLU's [gate, up] and the output silu(gate) * up (N / 2 wide)."""
    x, w = operands(n, k, dtype, (rows,))
    y = gv.gemv_rows(x, w, gate=True)
    gate, up = (x.double() @ w.double().T).chunk(2, dim=-1)
    assert y.shape == (rows, n // 2) and y.dtype == dtype
    assert_close_scaled(y.double(), gate * torch.sigmoid(gate) * up, "output", **TOLERANCES[dtype])


@pytest.mark.parametrize("tiles", [(16, 16, 4, 1), (32, 64, 4, 3), (64, 128, 2, 2)], ids=str)
@pytest.mark.parametrize("gate", [False, True], ids=["plain", "gate"])
def test_every_rows_tile_shape(tiles, gate):
    """Several-row tiles of 16-64 columns and K chunks of 16-128: partial blocks on both axes, 9 of 16 rows."""
    x, w = operands(200, 300, torch.float32, (9,))
    expected = x.double() @ w.double().T
    if gate:
        g, u = expected.chunk(2, dim=-1)
        expected = g * torch.sigmoid(g) * u
    assert_close_scaled(gv.launch_rows(x, w, gate, tiles=tiles).double(), expected, "output",
                        **TOLERANCES[torch.float32])


def test_rows_tile_rule():
    assert gv.rows_config(6144, 2048) == (64, 128, 4, 4)  # N >= 2K
    assert gv.rows_config(2048, 5504) == (64, 128, 4, 6)  # narrower matrices: deeper pipelines
    assert gv.rows_config(100, 40) == (64, 64, 4, 4)  # K in one chunk


def rms_norm64(x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.double()


@pytest.mark.parametrize(("n", "k"), [(37, 100), (130, 300)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fusion", ["norm", "gated", "residual", "norm+residual", "gated+residual"])
def test_fused_prologues_and_residual_match_float64(n, k, dtype, fusion):
    """norm: RMSNorm of x first (x scaled far from 1 so a missing normalisation shows); gated: x = [gate, up] and
    the input is silu(gate) * up; residual: added to the product."""
    gated = "gated" in fusion
    x, w = operands(n, k, dtype)
    x = torch.cat([x, torch.randn_like(x)], dim=-1) if gated else x * 7.0
    g = (1 + 0.5 * torch.randn(k, dtype=torch.float64, device=DEVICE)).to(dtype) if "norm" in fusion else None
    r = torch.randn(1, n, dtype=torch.float64, device=DEVICE).to(dtype) if "residual" in fusion else None
    y = gemv(x, w, norm_weight=g, eps=1e-5, residual=r, gated=gated)
    inputs = x.double()
    if g is not None:
        inputs = rms_norm64(inputs, g, 1e-5)
    if gated:
        gate, up = inputs.chunk(2, dim=-1)
        inputs = gate * torch.sigmoid(gate) * up
    expected = inputs @ w.double().T + (0 if r is None else r.double())
    assert y.shape == (1, n) and y.dtype == dtype
    assert_close_scaled(y.double(), expected, "output", **TOLERANCES[dtype])


def test_fusion_arguments_are_checked():
    x, w = operands(8, 16, torch.float32)
    with pytest.raises(ValueError, match=r"norm_weight must be \(16,\)"):
        gemv(x, w, norm_weight=torch.ones(15, device=DEVICE))
    with pytest.raises(ValueError, match="one row"):
        gemv(x, w, gated=True)  # gated wants 2K inputs
    with pytest.raises(ValueError, match="not combined with gated"):
        gemv(torch.cat([x, x], -1), w, norm_weight=torch.ones(16, device=DEVICE), gated=True)
    with pytest.raises(ValueError, match="residual must be"):
        gemv(x, w, residual=torch.zeros(1, 9, device=DEVICE))


def test_launcher_rejects_bad_inputs():
    x, w = operands(8, 16, torch.float32)
    with pytest.raises(ValueError, match="one row"):
        gemv(torch.cat([x, x]), w)
    with pytest.raises(ValueError, match="one row"):
        gemv(x[..., :15], w)
    with pytest.raises(ValueError, match="one row"):
        gemv(x, w.half())
    with pytest.raises(ValueError, match="1 to 16 rows"):
        gv.gemv_rows(x.expand(17, 16), w)
    with pytest.raises(ValueError, match="1 to 16 rows"):
        gv.gemv_rows(x, w.half())
    with pytest.raises(ValueError, match="even number"):
        gv.gemv_rows(x, w[:7], gate=True)


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim", "k"), [(4, 2, 16, 48), (3, 3, 8, 100), (2, 1, 64, 64)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no-norm"])
@pytest.mark.parametrize("block_n", [2, 4, 16], ids=lambda b: f"block_n={b}")
def test_gemv_qkv_rotates_and_stores_into_the_cache(n_heads, n_kv_heads, head_dim, k, dtype, norm, block_n,
                                                     monkeypatch):
    """q returned and k rotated by RoPE at the row's position, k and v written into slot 0 of the caches at that
    position and nothing else of the caches touched; against float64 projections and rotations. Programs of
    one to eight rotation pairs (BLOCK_N = 16 is cut to the pairs of a head: 4 for D = 8)."""
    from scratchlm.model.rope import RotaryEmbedding

    default_config = gv.config
    monkeypatch.setattr(gv, "config", lambda n, k: (block_n, *default_config(n, k)[1:]))

    slots, length, position = 3, 11, 7
    rope = RotaryEmbedding(head_dim, length, theta=500.0, device=DEVICE)
    x, w = operands((n_heads + 2 * n_kv_heads) * head_dim, k, dtype)
    x = x * 3.0
    g = (1 + 0.5 * torch.randn(k, dtype=torch.float64, device=DEVICE)).to(dtype) if norm else None
    caches = [torch.randn(slots, n_kv_heads, length, head_dim, device=DEVICE).to(dtype) for _ in range(2)]
    before = [c.clone() for c in caches]
    q = gv.gemv_qkv(x, w, g, 1e-5, rope.cos, rope.sin, torch.tensor([position], device=DEVICE), *caches, n_heads)

    inputs = rms_norm64(x, g, 1e-5) if norm else x.double()
    q64, k64, v64 = (inputs @ w.double().T).split((n_heads * head_dim, n_kv_heads * head_dim,
                                                  n_kv_heads * head_dim), dim=-1)
    cos, sin = rope.cos[position], rope.sin[position]
    assert q.shape == (1, n_heads * head_dim) and q.dtype == dtype
    assert_close_scaled(q.double(), rotate64(q64.view(n_heads, head_dim), cos, sin).view(1, -1), "q",
                        **TOLERANCES[dtype])
    for name, cache, old, expected in [("k", caches[0], before[0], rotate64(k64.view(n_kv_heads, head_dim), cos, sin)),
                                       ("v", caches[1], before[1], v64.view(n_kv_heads, head_dim))]:
        assert_close_scaled(cache[0, :, position].double(), expected, f"{name} cache", **TOLERANCES[dtype])
        written = torch.zeros_like(cache, dtype=torch.bool)
        written[0, :, position] = True
        assert torch.equal(cache[~written], old[~written]), f"{name} cache changed outside slot 0, position {position}"


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim", "k", "b", "t"),
                         [(4, 2, 16, 48, 2, 3), (3, 3, 32, 100, 1, 5), (2, 1, 64, 64, 4, 1), (2, 2, 128, 40, 2, 8)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gemv_rows_qkv_rotates_and_stores_into_the_cache(n_heads, n_kv_heads, head_dim, k, b, t, dtype):
    """Several rows (B rows of T queries at their own positions): q returned and k rotated at each query's
    position, k and v written into cache row b there and nothing else of the caches touched (a position past
    the cache stores nothing); against float64 projections and rotations. Heads of 16-128 dims: programs of
    8-32 rotation pairs, a head in one to two programs."""
    from scratchlm.model.rope import RotaryEmbedding

    slots, length = b + 1, 12
    rope = RotaryEmbedding(head_dim, 2 * length, theta=500.0, device=DEVICE)
    x, w = operands((n_heads + 2 * n_kv_heads) * head_dim, k, dtype, (b, t))
    positions = torch.stack([torch.randperm(length, device=DEVICE)[:t] for _ in range(b)])
    positions[-1, -1] = length + 3  # past the cache: no store
    caches = [torch.randn(slots, n_kv_heads, length, head_dim, device=DEVICE).to(dtype) for _ in range(2)]
    before = [c.clone() for c in caches]
    q = gv.gemv_rows_qkv(x, w, rope.cos, rope.sin, positions, *caches, n_heads)

    q64, k64, v64 = (x.double() @ w.double().T).split((n_heads * head_dim, n_kv_heads * head_dim,
                                                      n_kv_heads * head_dim), dim=-1)
    assert q.shape == (b, n_heads, t, head_dim) and q.dtype == dtype
    written = torch.zeros_like(caches[0], dtype=torch.bool)
    for row in range(b):
        for i in range(t):
            p = positions[row, i].item()
            cos, sin = rope.cos[p], rope.sin[p]
            assert_close_scaled(q[row, :, i].double(), rotate64(q64[row, i].view(n_heads, head_dim), cos, sin), "q",
                                **TOLERANCES[dtype])
            if p >= length:
                continue
            written[row, :, p] = True
            assert_close_scaled(caches[0][row, :, p].double(), rotate64(k64[row, i].view(n_kv_heads, head_dim), cos,
                                                                        sin), "k cache", **TOLERANCES[dtype])
            assert_close_scaled(caches[1][row, :, p].double(), v64[row, i].view(n_kv_heads, head_dim), "v cache",
                                **TOLERANCES[dtype])
    for name, cache, old in (("k", caches[0], before[0]), ("v", caches[1], before[1])):
        assert torch.equal(cache[~written], old[~written]), f"{name} cache changed outside the rows' positions"


def test_gemv_rows_qkv_arguments_are_checked():
    from scratchlm.model.rope import RotaryEmbedding

    rope = RotaryEmbedding(16, 8, device=DEVICE)
    x, w = operands(4 * 16, 24, torch.float32, (2, 3))  # 2 query heads + 1 key + 1 value head of 16
    cache = torch.zeros(2, 1, 8, 16, device=DEVICE)
    positions = torch.arange(3, device=DEVICE)
    gv.gemv_rows_qkv(x, w, rope.cos, rope.sin, positions, cache, cache.clone(), 2)  # valid
    with pytest.raises(ValueError, match="n_heads"):
        gv.gemv_rows_qkv(x, w, rope.cos, rope.sin, positions, cache, cache.clone(), 3)
    with pytest.raises(ValueError, match="slots >= B"):
        gv.gemv_rows_qkv(x, w, rope.cos, rope.sin, positions, cache[:1], cache[:1].clone(), 2)
    with pytest.raises(ValueError, match="positions"):
        gv.gemv_rows_qkv(x, w, rope.cos, rope.sin, positions[:2], cache, cache.clone(), 2)
    with pytest.raises(ValueError, match="cos and sin"):
        gv.gemv_rows_qkv(x, w, rope.cos[:, :3], rope.sin, positions, cache, cache.clone(), 2)


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: the declared mutations (gemv_qkv writes the caches, nothing else) and the fake
    implementations (what torch.compile plans with) match what the kernels do."""
    from scratchlm.model.rope import RotaryEmbedding

    rope = RotaryEmbedding(8, 4, device=DEVICE)
    x, w = operands(4 * 8, 16, torch.float32)
    caches = [torch.zeros(1, 1, 4, 8, device=DEVICE) for _ in range(2)]
    torch.library.opcheck(torch.ops.scratchlm.gemv, (x, w, torch.ones(16, device=DEVICE), 1e-5, None, False))
    for gate in (False, True):
        torch.library.opcheck(torch.ops.scratchlm.gemv_rows, (torch.cat([x, 2 * x, -x]), w, gate))
    rope16 = RotaryEmbedding(16, 4, device=DEVICE)
    caches16 = [torch.zeros(1, 1, 4, 16, device=DEVICE) for _ in range(2)]
    torch.library.opcheck(torch.ops.scratchlm.gemv_rows_qkv, (
        torch.randn(1, 2, 16, device=DEVICE), torch.randn(4 * 16, 16, device=DEVICE), rope16.cos, rope16.sin,
        torch.tensor([[1, 2]], device=DEVICE), *caches16, 2))
    torch.library.opcheck(torch.ops.scratchlm.gemv_qkv, (x, w, None, 1e-5, rope.cos, rope.sin,
                                                         torch.tensor([2], device=DEVICE), *caches, 2))


def test_gemv_qkv_arguments_are_checked():
    from scratchlm.model.rope import RotaryEmbedding

    rope = RotaryEmbedding(8, 4, device=DEVICE)
    x, w = operands(4 * 8, 16, torch.float32)  # 2 query heads + 1 key + 1 value head of 8
    cache = torch.zeros(1, 1, 4, 8, device=DEVICE)
    position = torch.tensor([1], device=DEVICE)
    gv.gemv_qkv(x, w, None, 1e-5, rope.cos, rope.sin, position, cache, cache.clone(), 2)  # valid
    with pytest.raises(ValueError, match="n_heads"):
        gv.gemv_qkv(x, w, None, 1e-5, rope.cos, rope.sin, position, cache, cache.clone(), 3)
    with pytest.raises(ValueError, match="caches"):
        gv.gemv_qkv(x, w, None, 1e-5, rope.cos, rope.sin, position, cache, cache[..., :4].clone(), 2)
    with pytest.raises(ValueError, match="cos and sin"):
        gv.gemv_qkv(x, w, None, 1e-5, rope.cos[:, :3], rope.sin, position, cache, cache.clone(), 2)
    with pytest.raises(ValueError, match="one row"):
        gv.gemv_qkv(torch.cat([x, x]), w, None, 1e-5, rope.cos, rope.sin, position, cache, cache.clone(), 2)
    with pytest.raises(ValueError, match="position"):
        gv.gemv_qkv(x, w, None, 1e-5, rope.cos, rope.sin, position.int(), cache, cache.clone(), 2)


def test_applies_only_to_one_half_row_on_cuda_without_grad():
    x, w = operands(8, 16, torch.bfloat16)
    assert not gv.applies(x.cpu(), w.cpu())  # CPU: the matmul
    if ON_GPU:
        with torch.no_grad():
            assert gv.applies(x, w) and not gv.applies(torch.cat([x, x]), w)  # on by default
            assert not gv.applies(x.float(), w.float())
            with gv.enabled(False):
                assert not gv.applies(x, w)
        with gv.enabled(True):
            assert not gv.applies(x, w)  # autograd on: training keeps the matmul


def test_several_rows_apply_from_two_to_sixteen():
    x, w = operands(8, 16, torch.bfloat16, (16,))
    assert not gv.applies_rows(x.cpu(), w.cpu())
    if ON_GPU:
        with torch.no_grad():
            assert gv.applies_rows(x[:2], w) and gv.applies_rows(x.view(4, 4, 16), w)
            assert not gv.applies_rows(x[:1], w) and not gv.applies_rows(torch.cat([x, x[:1]]), w)
            with gv.enabled(False):
                assert not gv.applies_rows(x, w)
        assert not gv.applies_rows(x, w)  # autograd on


def assert_kernels_decode_like_plain_model(monkeypatch, model, forced, tokens: torch.Tensor, prefill: int) -> None:
    """A prefill of tokens[:, :prefill] through a KV cache, then a forward of the rest, with the GEMV kernels off
    and as `forced`: the same logits and caches (float32 tolerance)."""
    from scratchlm.inference.kv_cache import KVCache
    from scratchlm.model import layers

    results = []
    for kernels in (None, forced):
        monkeypatch.setattr(layers, "_gemv", kernels)
        cache = KVCache(model.config, tokens.shape[0], device=DEVICE)
        with torch.no_grad():
            model(tokens[:, :prefill], torch.arange(prefill, device=DEVICE), kv_cache=cache)
            logits = model(tokens[:, prefill:], torch.arange(prefill, tokens.shape[1], device=DEVICE), kv_cache=cache)
        results.append((logits, cache))
    (plain, plain_cache), (fused, fused_cache) = results
    assert_close_scaled(fused.double(), plain.double(), "logits", **TOLERANCES[torch.float32])
    for a, b in zip(plain_cache.k + plain_cache.v, fused_cache.k + fused_cache.v):
        assert_close_scaled(b.double(), a.double(), "cache", **TOLERANCES[torch.float32])


def test_model_decodes_several_rows_through_the_kernels(monkeypatch):
    """The model's path for 2-16 rows (a verification pass, a small batch) with the several-row kernel taking
    every product, SwiGLU's gate and RoPE + the cache store (forced on for float32 rows, so it runs here too):
    the unfused model's logits and cache, and the kernel called for each projection of each layer and the head."""
    from scratchlm.model import ModelConfig, TransformerLM, layers

    calls = []

    def counted_rows(x, w, gate):
        calls.append((gv.n_rows(x), gate))
        return gv.gemv_rows(x, w, gate)

    def counted_qkv(x, *args):
        calls.append((gv.n_rows(x), "qkv"))
        return gv.gemv_rows_qkv(x, *args)

    forced = layers._GemvKernels(lambda x, w: False, gv.gemv, gv.gemv_qkv,
                                 lambda x, w: 1 < gv.n_rows(x) <= gv.MAX_ROWS and not torch.is_grad_enabled(),
                                 counted_rows, counted_qkv)
    config = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, context_length=16)  # heads of 16
    model = TransformerLM(config, device=DEVICE).eval()
    assert_kernels_decode_like_plain_model(monkeypatch, model, forced, torch.randint(0, 50, (2, 8), device=DEVICE), 5)
    layer = ["qkv", False, True, False]  # q/k/v (+ RoPE + cache store), o, gate/up (+ SwiGLU's gate), down
    per_pass = layer * config.n_layers + [False]  # and the head
    # the 2 x 5-token prefill, then the 2 x 3 rows
    assert calls == [(10, gate) for gate in per_pass] + [(6, gate) for gate in per_pass], calls


def test_attention_decodes_through_the_qkv_kernel(monkeypatch):
    """The model's one-row decode path with the kernels taking every product (forced on for float32 rows, so it
    runs here too): the fused projection + RoPE + cache store gives the unfused model's logits and cache, a
    prefill (several rows) and QK-norm models keep the separate operations."""
    from scratchlm.model import ModelConfig, TransformerLM, layers

    calls = []

    def counted_qkv(*args):
        calls.append(args[0].shape)
        return gv.gemv_qkv(*args)

    forced = layers._GemvKernels(lambda x, w: x.numel() == x.shape[-1] and not torch.is_grad_enabled(), gv.gemv,
                                 counted_qkv)
    for qk_norm in (False, True):
        config = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, context_length=16,
                             qk_norm=qk_norm)
        model = TransformerLM(config, device=DEVICE).eval()
        assert_kernels_decode_like_plain_model(monkeypatch, model, forced, torch.randint(0, 50, (1, 6), device=DEVICE), 5)
        assert len(calls) == (0 if qk_norm else config.n_layers), calls  # the decode step's layers only
        calls.clear()


@pytest.mark.gpu
def test_linear_dispatches_decode_rows_to_the_kernel():
    """By default a bf16 Linear under no_grad gives a one-row input to the kernel (bit for bit the kernel's
    result, and the float64 product within bf16 rounding, like the matmul it replaces)."""
    from scratchlm.model.layers import Linear

    layer = Linear(2048, 6144, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 1, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ours = layer(x)
        with gv.enabled(False):
            matmul = layer(x)
    assert torch.equal(ours, gemv(x, layer.weight))
    assert_close_scaled(ours.double(), (x.double() @ layer.weight.double().T), "kernel", **TOLERANCES[torch.bfloat16])
    assert_close_scaled(matmul.double(), (x.double() @ layer.weight.double().T), "matmul", **TOLERANCES[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(("batch", "queries"), [(1, 1), (1, 5), (4, 1), (2, 8)], ids=str)
def test_decode_step_with_fused_kernels_matches_the_matmuls(tie, batch, queries):
    """A whole bf16 decode step (one token, or a few per row as in a verification pass, for a batch of rows
    with a KV cache holding a prompt) with the kernels (on by default): every projection with its norm / gate /
    residual fused, by the GEMV for one row and the several-row kernel for 2-16. Against the float64 model, its
    logits are as close as the unfused bf16 step's (within bf16 tolerance, and at most 1.5x the unfused step's
    largest error)."""
    import copy

    from scratchlm.inference.kv_cache import KVCache
    from scratchlm.model import ModelConfig, TransformerLM

    config = ModelConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, context_length=64,
                         tie_embeddings=tie)
    model = TransformerLM(config, device="cuda").to(torch.bfloat16).eval()
    tokens = torch.randint(0, 1000, (batch, 8 + queries), device="cuda")
    logits = {}
    for name, net, on in [("float64", copy.deepcopy(model).double(), False), ("unfused", model, False),
                          ("fused", model, True)]:
        cache = KVCache(config, batch, device="cuda", dtype=next(net.parameters()).dtype)
        with torch.no_grad(), gv.enabled(on):
            net(tokens[:, :8], torch.arange(8, device="cuda"), kv_cache=cache)
            logits[name] = net(tokens[:, 8:], torch.arange(8, 8 + queries, device="cuda"), kv_cache=cache).double()
    for name in ("unfused", "fused"):
        assert_close_scaled(logits[name], logits["float64"], f"{name} decode logits", **TOLERANCES[torch.bfloat16])
    errors = {name: (logits[name] - logits["float64"]).abs().max().item() for name in ("unfused", "fused")}
    assert errors["fused"] <= 1.5 * errors["unfused"], errors
