"""`scratchlm bench model` on the cpu-tiny preset: a well-formed bench.json whose numbers agree with each other
and with the model's FLOP count, a trace with per-layer ranges, clear errors; a short run on CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.cli.main import main
from scratchlm.config import ConfigError
from scratchlm.profiling import BenchConfig, format_table, run_model_bench
from scratchlm.profiling.model_bench import load_train_config, variants

BATCH, SEQ = 2, 16
TINY_PRESET = """
batch_size = 2
[model]
vocab_size = 64
context_length = 16
d_model = 32
n_layers = 4
n_heads = 2
"""


def tiny_bench(tmp_path, **overrides) -> BenchConfig:
    settings = dict(train_preset="cpu-tiny", batch=BATCH, seq=SEQ, repeats=2, warmup=0, device="cpu",
                    out=str(tmp_path / "bench"))
    return BenchConfig(**{**settings, **overrides})


def check_row(row: dict, flops_per_token: float, repeats: int = 2, tokens: int = BATCH * SEQ) -> None:
    for phase in ("forward", "backward", "optimizer", "step"):
        stats = row[phase]
        assert 0 < stats["min"] <= stats["q25"] <= stats["median"] <= stats["q75"] <= stats["max"]
        assert stats["repeats"] == repeats
    assert row["tokens_per_second"] == pytest.approx(tokens / row["step"]["median"], rel=1e-9)
    assert row["tflops"] == pytest.approx(flops_per_token * row["tokens_per_second"] / 1e12, rel=1e-9)


def test_bench_json_is_consistent(tmp_path):
    result = run_model_bench(tiny_bench(tmp_path))
    record = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert record == json.loads(json.dumps(result.record))
    assert {"config.json", "run_info.json"} <= {p.name for p in (tmp_path / "bench").iterdir()}
    assert json.loads((tmp_path / "bench" / "config.json").read_text())["train_preset"] == "cpu-tiny"
    # the exact count, from the preset's shape: 4 layers x (4 d^2 + 3 d d_ff) + LM head, attention over
    # (SEQ + 1) / 2 keys per query on average; training = 3x forward
    d, d_ff, vocab, layers = 128, 384, 4096, 4
    forward = 2 * (layers * (4 * d * d + 3 * d * d_ff) + vocab * d) + layers * 4 * d * (SEQ + 1) / 2
    assert record["flops_per_token"] == pytest.approx(3 * forward, rel=1e-12)
    [row] = record["rows"]
    assert row["label"] == "fp32 eager"  # dtype and compile "auto" on CPU
    check_row(row, record["flops_per_token"])
    assert row["mfu"] is None  # no datasheet peak for a CPU
    n = record["params"]
    assert row["memory"]["parameters"] == row["memory"]["gradients"] == 4 * n
    assert row["memory"]["optimizer_state"] == 8 * n
    assert row["peak_memory_bytes"] == row["memory"]["peak_allocated"] > 16 * n  # + activations



def test_two_dtypes_with_profile_and_memory(tmp_path):
    preset = tmp_path / "tiny.toml"  # a preset given as a path; smaller than cpu-tiny, for speed
    preset.write_text(TINY_PRESET)
    result = run_model_bench(tiny_bench(tmp_path, train_preset=str(preset), dtype="both", repeats=1, profile=True,
                                        memory=True))
    record = result.record
    assert [r["label"] for r in record["rows"]] == ["fp32 eager", "bf16 eager"]
    for row in record["rows"]:
        check_row(row, record["flops_per_token"], repeats=1)
        trace = json.loads((tmp_path / "bench" / row["trace"]).read_text())
        names = {e["name"] for e in trace["traceEvents"]}
        assert {"layers.0.attn.forward", "layers.3.ffn.backward", "forward", "backward", "optimizer"} <= names
        assert "aten::mm" in result.top_ops[row["label"]]
        assert row["memory_snapshot"] is None  # CPU: no allocator snapshot
        assert "peak allocated" in result.memory[row["label"]].summary()
    assert {"trace-fp32-eager.json", "trace-bf16-eager.json"} <= {p.name for p in (tmp_path / "bench").iterdir()}
    table = format_table(record)
    assert "fp32 eager" in table and "bf16 eager" in table and "tok/s" in table
    assert len({len(line) for line in table.splitlines()[1:]}) == 1  # aligned columns


def test_variants_and_validation():
    cfg = load_train_config(BenchConfig(train_preset="gpt2-small-124m", attention="naive"))
    assert cfg.model.attention == "naive" and cfg.model.d_model == 768
    cpu = torch.device("cpu")
    assert variants(BenchConfig(), cfg, cpu) == variants(BenchConfig(dtype="fp32", compile="off"), cfg, cpu)
    labels = [v.label for v in variants(BenchConfig(dtype="both", compile="both"), cfg, cpu)]
    assert labels == ["fp32 eager", "fp32 compiled", "bf16 eager", "bf16 compiled"]
    with pytest.raises(ConfigError, match="cpu-tiny"):
        load_train_config(BenchConfig(train_preset="no-such-model"))
    with pytest.raises(ConfigError, match="context_length 128"):
        load_train_config(BenchConfig(seq=129))
    for bad in (dict(batch=0), dict(seq=0), dict(repeats=0), dict(warmup=-1), dict(compile="on", warmup=0)):
        with pytest.raises(ConfigError):
            BenchConfig(**bad)


@pytest.mark.parametrize("argv,message", [
    (["--preset", "no-such-model"], "training presets: cpu-tiny, gpt-1.3b, gpt-350m"),
    (["--preset", "cpu-tiny", "--seq", "1000"], "exceeds the model's context_length 128"),
    (["--preset", "cpu-tiny", "--batch", "0"], "batch must be >= 1"),
    (["--preset", "cpu-tiny", "--dtype", "fp16"], "did you mean 'bf16'"),
])
def test_cli_errors_exit_2(argv, message, capsys, tmp_path):
    assert main(["bench", "model", *argv, "--out", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err


def test_cli_prints_the_table(capsys, tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET)
    argv = ["bench", "model", "--preset", str(preset), "--seq", "8", "--repeats", "1", "--warmup", "0",
            "--device", "cpu", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fwd ms" in out and "fp32 eager" in out and "bench.json" in out
    assert (tmp_path / "b" / "bench.json").is_file()


@pytest.mark.gpu
def test_bench_on_cuda(tmp_path):
    # sdpa: cpu-tiny's head size 32 is not one the flash kernels are tuned for (that is tests/kernels' business)
    result = run_model_bench(tiny_bench(tmp_path, batch=4, seq=128, repeats=3, device="cuda", dtype="both",
                                        compile="off", attention="sdpa", memory=True, profile=True))
    for row in result.record["rows"]:
        check_row(row, result.record["flops_per_token"], repeats=3, tokens=4 * 128)
        assert row["peak_memory_bytes"] > 16 * result.record["params"]
        assert (tmp_path / "bench" / row["memory_snapshot"]).stat().st_size > 0
        assert row["memory"]["saved_activations"] > 0
        if any(name in torch.cuda.get_device_name() for name in ("H100", "H200")):
            assert 0 < row["mfu"] < 1
        names = {e["name"] for e in json.loads((tmp_path / "bench" / row["trace"]).read_text())["traceEvents"]}
        assert "layers.0.attn.forward" in names
