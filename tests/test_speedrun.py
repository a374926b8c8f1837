"""The speedrun's stages on real data with tiny step counts: web data -> pretrain -> SFT -> report cards,
skipping finished stages on a rerun, redoing what a changed setting touches, and the pieces it adds
(the train / sft / val split, story instruction pairs)."""

import json
import re

import pytest

from scratchlm.cli.main import main
from scratchlm.config import ConfigError
from scratchlm.speedrun import SpeedrunConfig, split_text, story_examples
from scratchlm.train.checkpoint import load_trained_model

CORPUS = "tinystories/tinystories_valid_head.txt"
TINY = ["--set", "tokenizer.vocab_size=300", "--no-tokenizer.progress", "--train.steps=3", "--train.batch_size=2",
        "--train.model.context_length=64", "--train.sample_tokens=4", "--train.eval_batches=2", "--sft.steps=2",
        "--sft.batch_size=2", "--eval.windows=4", "--eval.prompts=2", "--eval.max_new_tokens=8"]


def test_split_text_cuts_three_parts_at_blank_lines(data_path, tmp_path):
    corpus = data_path(CORPUS)
    parts = split_text([corpus], tmp_path, val_fraction=0.1, sft_fraction=0.2)
    texts = {name: path.read_text() for name, path in parts.items()}
    whole = corpus.read_text()
    assert texts["train"] + texts["sft"] + texts["val"] == whole
    for name, share in [("train", 0.7), ("sft", 0.2), ("val", 0.1)]:
        assert abs(len(texts[name]) / len(whole) - share) < 0.01
    assert texts["train"].endswith("\n\n") and texts["sft"].endswith("\n\n")


def test_story_examples_are_real_story_openings(data_path):
    text = data_path(CORPUS).read_text()
    examples = story_examples(text, max_chars=450)
    assert len(examples) > 100
    paragraphs = {p.strip() for p in text.split("\n\n")}
    for e in examples:
        assert e["response"] in paragraphs and e["response"].startswith("Once upon a time") and len(e["response"]) <= 450
        named = re.fullmatch(r"Tell me a story about ([A-Z][a-z]+)\.", e["prompt"])
        assert f"named {named.group(1)}" in e["response"] if named else (
            e["prompt"] == "Tell me a story." and not re.search(r"\bnamed [A-Z][a-z]+\b", e["response"]))
    assert 0 < sum(e["prompt"] == "Tell me a story." for e in examples) < len(examples)
    assert story_examples(text, max_chars=100) == [e for e in examples if len(e["response"]) <= 100]


@pytest.mark.parametrize("kwargs,message", [
    ({"stages": ["pretrain", "chat"]}, "unknown stages"),
    ({"stages": ["data", "sft"]}, "add pretrain"),
    ({"val_fraction": 0.5, "sft_fraction": 0.5}, "must leave text"),
    ({"sft_fraction": 0.0}, "sft_fraction > 0"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SpeedrunConfig(**kwargs)


def test_speedrun_all_stages_then_resume(data_path, tmp_path, capsys):
    data_path("webcrawl/warc")
    out = tmp_path / "run"
    argv = ["speedrun", "--out", str(out), "--corpus", CORPUS, *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "stages" / "data.json").read_text())["summary"]
    assert "| langid |" in printed and "| dedup_minhash |" in printed and "clean documents" in printed
    assert 0 < data["documents"] < data["documents_in"] and (out / "web" / "clean.txt").stat().st_size == data["bytes"]
    assert json.loads((out / "stages" / "pretrain.json").read_text())["summary"]["corpus"] == [str(data_path(CORPUS))]
    # SFT: the chat tokens were added, the examples are the stories of the sft part
    tuned = load_trained_model(out / "sft")
    assert "<|assistant|>" in tuned.tokenizer.special_ids and tuned.step == 2
    examples = [json.loads(line) for line in (out / "text" / "sft.jsonl").read_text().splitlines()]
    assert examples == story_examples((out / "text" / "sft.txt").read_text(), 450)
    # eval: a card per model, generations, the comparison table
    for name in ("pretrained", "sft"):
        report = json.loads((out / "eval" / name / "report.json").read_text())
        assert report["tasks"]["perplexity"]["bits_per_byte"] > 0
        assert len((out / "eval" / name / "generations" / "stories.jsonl").read_text().splitlines()) == 2
    assert "| pretrained | 3 |" in printed and "| sft | 2 |" in printed
    assert f"scratchlm chat --checkpoint {out}/sft" in printed and f"scratchlm serve --checkpoint {out}/sft" in printed

    # the same command again: every stage is skipped, nothing is rewritten
    checkpoint_time = (out / "model" / "checkpoint.pt").stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 4
    assert (out / "model" / "checkpoint.pt").stat().st_mtime_ns == checkpoint_time
    # a changed SFT setting redoes sft and eval only
    assert main([*argv, "--sft.steps=3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 2 and "| sft | 3 |" in printed
    assert (out / "model" / "checkpoint.pt").stat().st_mtime_ns == checkpoint_time


def test_speedrun_without_warc_samples_skips_the_data_stage(data_path, tmp_path, capsys):
    data_path(CORPUS)
    out = tmp_path / "run"
    argv = ["speedrun", "--out", str(out), "--corpus", CORPUS, "--stages", "data", "pretrain",
            "--data.inputs", str(tmp_path / "none" / "*.warc.gz"), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "data: skipped, no WARC samples match" in printed and "web data:" not in printed
    assert not (out / "stages" / "data.json").exists() and not (out / "sft").exists()
    assert "scratchlm generate --checkpoint" in printed


def test_speedrun_mixes_web_text_into_pretraining(data_path, tmp_path, capsys):
    data_path("webcrawl/warc")
    out = tmp_path / "run"
    assert main(["speedrun", "--out", str(out), "--corpus", CORPUS, "--stages", "data", "pretrain", "--data.mix", *TINY]) == 0
    pretrain = json.loads((out / "stages" / "pretrain.json").read_text())["summary"]
    assert pretrain["corpus"][-1] == str(out / "web" / "clean.txt")
    assert "mixed into the pretraining corpus" in capsys.readouterr().out
    clean = (out / "web" / "clean.txt").stat().st_size
    assert pretrain["tokenizer"]["input_bytes"] == data_path(CORPUS).stat().st_size + clean
    assert pretrain["stats"]["bytes"] == (out / "text" / "train.txt").stat().st_size + clean
