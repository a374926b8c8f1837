"""The CLI end to end on small real data: train -> encode -> stats, speedrun, errors as exit code 2."""

import json
import os

import pytest

from scratchlm.cli.main import main


def test_tokenizer_train_encode_stats(data_path, tmp_path, capsys):
    corpus = str(data_path("tinystories/tinystories_valid_head.txt"))
    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", corpus, "--out", str(tok), "--vocab-size", "600", "--no-progress", "--set", "pattern=gpt4"]) == 0
    assert json.loads((tok / "config.json").read_text())["bpe"]["pattern"] == "gpt4"
    assert {"scratchlm_tokenizer.json", "tokenizer.json", "vocab.json", "merges.txt", "run_info.json"} <= {p.name for p in tok.iterdir()}
    # Same run again: recognised as done.
    assert main(["tokenizer", "train", "--input", corpus, "--out", str(tok), "--vocab-size", "600", "--set", "pattern=gpt4"]) == 0
    assert "already holds" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--input", corpus, "--out", str(tmp_path / "t.bin"), "--num-workers", "1", "--no-progress"]) == 0
    assert main(["tokenizer", "stats", "--tokenizer", str(tok), "--tokens", str(tmp_path / "t.bin"), "--json", str(tmp_path / "s.json")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["bytes"] == os.path.getsize(corpus) and 2 < stats["bytes_per_token"] < 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["tokenizer", "train", "--input", "missing.txt", "--out", "x"], "not found"),
        (["tokenizer", "train", "--input", __file__, "--out", "x", "--vocab-size", "10"], "too small"),
        (["tokenizer", "train", "--input", __file__, "--out", "x", "--set", "vocab_sise=300"], "did you mean"),
        (["tokenizer", "encode", "--tokenizer", "nowhere", "--input", __file__, "--out", "x.bin"], "not found"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_speedrun_small(data_path, tmp_path, capsys):
    corpus = "tokenizer/address.txt"
    data_path(corpus)
    argv = ["speedrun", "--out", str(tmp_path / "run"), "--corpus", corpus, "--stages", "pretrain", "--set", "tokenizer.vocab_size=300",
            "--no-tokenizer.progress", "--train.steps=4", "--train.batch_size=2", "--train.model.context_length=16",
            "--train.sample_tokens=4", "--train.eval_batches=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bytes/token" in out and "validation: loss" in out and "sample:" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["tokenizer"]["vocab_size"] == 300 and config["train"]["model"]["vocab_size"] == 300
    assert (tmp_path / "run" / "model" / "checkpoint.pt").is_file()
