"""SFT, DPO and GRPO runs end to end on a tiny model: outputs, held-out metrics, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scratchlm.alignment import DPOConfig, GRPOConfig, SFTConfig, dpo, grpo, sft
from scratchlm.alignment.chat import CHAT_TOKENS
from scratchlm.cli.main import main
from scratchlm.config import build_config
from scratchlm.optim import OptimizerConfig
from scratchlm.train.checkpoint import load_trained_model
from tests.eval.tiny import byte_tokenizer, tiny_model, write_run

QUIET = {"report": lambda line: None}


@pytest.fixture
def base(tmp_path):
    return str(write_run(tmp_path / "base", tiny_model(257, context_length=48), byte_tokenizer()))


@pytest.fixture
def sft_data(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": str(i + 1)}) + "\n" for i in range(40)))
    return str(path)


def _sft_config(base, data, out, **kw):
    settings = {"batch_size": 4, "device": "cpu", "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 3,
                "val_fraction": 0.1, "optimizer": OptimizerConfig(lr=3e-3, weight_decay=0.0)}
    return SFTConfig(base=base, out=str(out), data=[data], **{**settings, **kw})


def test_sft_trains_saves_a_loadable_chat_checkpoint_and_resumes_exactly(tmp_path, base, sft_data):
    summary = sft(_sft_config(base, sft_data, tmp_path / "full", steps=6), **QUIET)
    assert summary["steps"] == 6 and summary["val"]["loss"] < summary["val_start"]["loss"]
    trained = load_trained_model(tmp_path / "full")
    assert trained.model.config.vocab_size == 260 and all(t in trained.tokenizer.special_ids for t in CHAT_TOKENS)

    sft(_sft_config(base, sft_data, tmp_path / "split", steps=3), **QUIET)
    with pytest.raises(ValueError, match="--resume"):
        sft(_sft_config(base, sft_data, tmp_path / "split", steps=6), **QUIET)
    sft(_sft_config(base, sft_data, tmp_path / "split", steps=6), resume=True, **QUIET)
    resumed = load_trained_model(tmp_path / "split")
    for (name, a), b in zip(trained.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="differs"):
        sft(_sft_config(base, sft_data, tmp_path / "split", steps=8, batch_size=2), resume=True, **QUIET)


def test_dpo_caches_the_reference_and_moves_held_out_margins(tmp_path, base):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"chosen": f"\n\nHuman: What is {i} + 1?\n\nAssistant: {i + 1}",
                                        "rejected": f"\n\nHuman: What is {i} + 1?\n\nAssistant: {i + 7}"}) + "\n"
                            for i in range(24)))
    cfg = DPOConfig(base=base, out=str(tmp_path / "dpo"), data=str(path), steps=4, batch_size=4, val_fraction=0.25,
                    device="cpu", log_interval=1, eval_interval=0, checkpoint_interval=0, beta=0.5,
                    optimizer=OptimizerConfig(lr=3e-3, weight_decay=0.0))
    summary = dpo(cfg, **QUIET)
    start, end = summary["val_start"], summary["val"]
    assert start["reward_accuracy"] == 0.5 and math.isclose(start["loss"], math.log(2), rel_tol=1e-6)  # policy == ref
    assert end["loss"] != start["loss"] and summary["data"] == {"pairs": 24, "skipped": 0, "train_pairs": 18, "val_pairs": 6}
    cached = torch.load(tmp_path / "dpo/reference_logps.pt", weights_only=True)
    assert cached["train"].shape == (18, 2) and cached["val"].shape == (6, 2)
    records = [json.loads(line) for line in (tmp_path / "dpo/metrics.jsonl").read_text().splitlines()]
    assert {"reward_margin", "reward_accuracy", "grad_norm"} <= set(records[1])


@pytest.mark.parametrize("loss", ["grpo_clip", "reinforce_with_baseline", "no_baseline"])
def test_grpo_runs_each_loss_and_logs_its_metrics(tmp_path, base, loss):
    steps = 2 if loss == "grpo_clip" else 1
    cfg = GRPOConfig(base=base, out=str(tmp_path / "grpo"), steps=steps, digits=1, prompts_per_step=2, group_size=3,
                     max_new_tokens=4, eval_problems=4, loss=loss, epochs=2, kl_coef=0.1, format_weight=0.5,
                     aggregation="masked_normalize" if loss == "no_baseline" else "masked_mean", batch_size=4,
                     device="cpu", log_interval=1, eval_interval=0, checkpoint_interval=0)
    summary = grpo(cfg, **QUIET)
    assert len(summary["curve"]) == steps and 0 <= summary["val"]["accuracy"] <= 1
    train = [json.loads(line) for line in (tmp_path / "grpo/metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(train) == steps
    for key in ("reward", "accuracy", "entropy", "clip_fraction", "kl", "response_length", "grad_norm", "loss"):
        assert math.isfinite(train[0][key]), key
    assert 1 <= train[0]["response_length"] <= 4 and train[0]["entropy"] > 0


def test_sft_cli(tmp_path, base, sft_data, capsys):
    assert main(["sft", "--base", base, "--out", str(tmp_path / "cli"), "--data", sft_data, "--steps", "2",
                 "--batch-size", "2", "--device", "cpu", "--eval-interval", "0"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out and (tmp_path / "cli/checkpoint.pt").is_file()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(__file__).parents[2] / "configs/alignment").glob("*.toml")))
def test_alignment_presets_resolve(preset):
    cls = {"sft": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig}[preset.split("-")[0]]
    cfg = build_config(cls, f"alignment/{preset}")
    assert cfg.device == "auto" and cfg.dtype == "auto" and cfg.steps > 0
