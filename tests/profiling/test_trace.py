"""Per-layer profiler ranges: present in the exported trace, removed afterwards, and without effect on the math."""

from __future__ import annotations

import json

import torch

from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.optim import cross_entropy
from scratchlm.profiling.trace import layer_ranges, profile_steps, top_ops, top_ops_table

CPU = torch.device("cpu")


def tiny_model() -> TransformerLM:
    return TransformerLM(ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=2, attention="naive"))


def loss_and_grads(model: TransformerLM, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = cross_entropy(model(x), torch.roll(x, -1, dims=1))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_trace_has_a_range_per_layer(tmp_path):
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    path = tmp_path / "trace.json"
    with layer_ranges(model) as names:
        prof = profile_steps(lambda: cross_entropy(model(x), x).backward(), steps=2, device=CPU, trace_path=path)
    events = json.loads(path.read_text())["traceEvents"]
    seen = {e["name"] for e in events if e.get("ph") == "X"}
    expected = {f"layers.{i}.{part}{direction}" for i in range(2) for part in ("", "attn.", "ffn.")
                for direction in ("forward", "backward")}
    assert expected == set(names)
    assert expected <= seen and {"step 0", "step 1"} <= seen
    assert "aten::mm" in top_ops_table(prof, CPU)
    rows = top_ops(prof, CPU, rows=5, per=2)
    assert len(rows) == 5 and "aten::mm" in {r["name"] for r in top_ops(prof, CPU, rows=50)}
    assert all(a["us"] >= b["us"] > 0 for a, b in zip(rows, rows[1:])) and 0 < sum(r["share"] for r in rows) <= 1
    # a block's forward range encloses its attention's
    spans = {e["name"]: (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X"}
    block, attn = spans["layers.1.forward"], spans["layers.1.attn.forward"]
    assert block[0] <= attn[0] and attn[1] <= block[1]


def test_hooks_change_nothing_and_are_removed():
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    loss, grads = loss_and_grads(model, x)
    with layer_ranges(model):
        hooked_loss, hooked_grads = loss_and_grads(model, x)
    assert torch.equal(loss, hooked_loss)
    for g, h in zip(grads, hooked_grads):  # the same sums; only the order of a residual's two gradient terms
        torch.testing.assert_close(h, g, rtol=1e-6, atol=1e-7)  # may change (the hooks wrap positional inputs)
    for module in model.modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                    or module._backward_pre_hooks)

