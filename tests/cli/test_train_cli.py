"""`scratchlm train | generate | plot | export` end to end on real text, and their errors as exit code 2."""

from __future__ import annotations

import json

import pytest

from scratchlm.cli.main import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, request):
    """A tokenizer, train/val token files and a 6-step training run of a tiny model."""
    from tests.conftest import shared_data

    corpus = str(shared_data("tinystories/tinystories_valid_head.txt"))
    tmp = tmp_path_factory.mktemp("cli_train")
    tok, run = tmp / "tok", tmp / "run"
    assert main(["tokenizer", "train", "--input", corpus, "--out", str(tok), "--vocab-size", "400", "--no-progress"]) == 0
    for split in ("train", "val"):
        assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--input", corpus, "--out", str(tmp / f"{split}.bin"),
                     "--num-workers", "1", "--no-progress"]) == 0
    argv = ["train", "--config", "train/cpu-tiny", "--data.train", str(tmp / "train.bin"), "--data.val", str(tmp / "val.bin"),
            "--data.tokenizer", str(tok), "--out", str(run), "--steps", "6", "--batch-size", "2", "--log-interval", "2",
            "--eval-batches", "2", "--model.vocab_size=400", "--model.context_length=32", "--sample-tokens", "5"]
    assert main(argv) == 0
    return run


def test_train_writes_a_complete_run(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoint.pt", "best.pt", "config.json", "run_info.json", "metrics.jsonl", "summary.json", "tokenizer"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 128 and config["model"]["vocab_size"] == 400 and config["steps"] == 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["sample"].startswith("Once upon a time")


def test_generate_is_reproducible_with_a_seed(run_dir, capsys):
    argv = ["generate", "--checkpoint", str(run_dir), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("Once upon a time")
    assert main(argv[:-2] + ["--temperature", "0", "--num-samples", "2"]) == 0
    samples = capsys.readouterr().out.split("--- sample")[1:]
    assert len(samples) == 2 and samples[0].split("\n", 1)[1] == samples[1].split("\n", 1)[1]  # greedy: identical


def test_plot_writes_a_png(run_dir, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "train/cpu-tiny"], "no training data"),
    (["train", "--config", "train/cpu-tiny", "--data.train", "missing.bin"], "missing.bin"),
    (["train", "--config", "train/cpu-tiny", "--set", "model.d_model=102", "--data.train", "x.bin"], "divisible"),
    (["train", "--config", "train/nope"], "nope"),
    (["generate", "--checkpoint", "missing", "--prompt", "x"], "no checkpoint"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--out", str(tmp_path / "run")] if argv[0] == "train" else argv) == 2
    assert message in capsys.readouterr().err


def test_existing_run_needs_resume(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    argv = ["train", "--config", str(run_dir / "config.json"), "--steps", "8"]
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == config["steps"]
