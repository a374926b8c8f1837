"""run_eval end to end on a tiny model: report card, generations, cached tasks; compare table; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.cli.main import main
from scratchlm.config import ConfigError
from scratchlm.eval import harness
from scratchlm.eval.harness import EvalConfig, run_eval
from scratchlm.eval.report import compare_table, load_report
from tests.eval.tiny import byte_tokenizer, tiny_model, write_run


@pytest.fixture
def local_data(tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_text("Once upon a time there was a tiny model. " * 20)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                           for i in range(3)))
    math = tmp_path / "math.jsonl"
    math.write_text(json.dumps({"problem": "Compute 1/2.", "solution": r"It is $\boxed{\frac12}$.", "answer": r"\frac{1}{2}"}) + "\n")
    return {"perplexity_text": str(text), "gsm8k_data": str(gsm), "math_data": str(math)}


def test_run_eval_writes_report_generations_and_reuses_finished_tasks(tmp_path, local_data, monkeypatch):
    tok, model = byte_tokenizer(), tiny_model(257, context_length=128)
    cfg = EvalConfig(checkpoint="tiny", tasks="perplexity,gsm8k,math", max_new_tokens=8, batch_size=2, **local_data)
    report = run_eval(cfg, model, tok, tmp_path / "out", step=7)
    assert set(report["tasks"]) == {"perplexity", "gsm8k", "math"} and report["step"] == 7
    assert report["tasks"]["gsm8k"]["n"] == 3 and report["tasks"]["math"]["n"] == 1
    records = [json.loads(line) for line in (tmp_path / "out/generations/gsm8k.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in records] == ["1", "2", "3"] and all("output" in r for r in records)
    assert load_report(tmp_path / "out") == json.loads(json.dumps(report))
    md = (tmp_path / "out/report.md").read_text()
    assert "| perplexity | bits_per_byte |" in md and "| gsm8k | accuracy |" in md

    monkeypatch.setattr(harness, "_run_task", lambda *a, **k: pytest.fail("a finished task was run again"))
    again = run_eval(cfg, model, tok, tmp_path / "out", step=7)
    assert again["tasks"] == report["tasks"]
    changed = EvalConfig(checkpoint="tiny", tasks="gsm8k", max_new_tokens=4, batch_size=2, **local_data)
    with pytest.raises(pytest.fail.Exception):  # other settings: not reused
        run_eval(changed, model, tok, tmp_path / "out")
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    with pytest.raises(pytest.fail.Exception):  # other weights (retrained into the same --out): not reused
        run_eval(cfg, model, tok, tmp_path / "out", step=7)


def test_instruction_safety_and_mmlu_tasks_on_shared_data(tmp_path, data_path):
    data_path("alignment/simple_safety_tests.csv")
    tok, model = byte_tokenizer(), tiny_model(257, context_length=512)
    cfg = EvalConfig(checkpoint="tiny", tasks="mmlu,alpaca,safety", limit=3, max_new_tokens=4, batch_size=4)
    report = run_eval(cfg, model, tok, tmp_path / "out")
    assert report["tasks"]["mmlu"]["n"] == 3 and 0 <= report["tasks"]["mmlu"]["accuracy"] <= 1
    assert report["tasks"]["safety"]["n"] == 3 and report["tasks"]["alpaca"]["n"] == 3
    safety = [json.loads(line) for line in (tmp_path / "out/generations/safety.jsonl").read_text().splitlines()]
    assert {"prompt", "output", "refused", "harm_area"} <= set(safety[0])


def test_compare_table_lines_up_metrics():
    a = {"checkpoint": "base", "step": 100, "tasks": {"gsm8k": {"accuracy": 0.1}, "perplexity": {"bits_per_byte": 1.5, "perplexity": 30.0}}}
    b = {"checkpoint": "sft", "step": 200, "tasks": {"gsm8k": {"accuracy": 0.25}}}
    table = compare_table([a, b]).splitlines()
    assert table[0] == "| checkpoint | step | perplexity bits_per_byte (lower) | perplexity perplexity (lower) | gsm8k accuracy (higher) |"
    assert table[2] == "| base | 100 | 1.5000 | 30 | 0.1000 |" and table[3] == "| sft | 200 | – | – | 0.2500 |"


def test_chat_models_get_the_bare_question_unless_there_are_shots(monkeypatch):
    from scratchlm.alignment.chat import render_prompt
    from scratchlm.eval import tasks

    seen = []
    monkeypatch.setattr(tasks, "_generate", lambda model, tok, prompts, settings, progress: seen.extend(prompts) or
                        [_Done("#### 2")] * len(prompts))
    example = {"question": "What is 1 + 1?", "answer": "#### 2"}
    metrics, _ = tasks.evaluate_gsm8k(None, None, [example], [], tasks.GenerationSettings(), format_prompt=render_prompt)
    assert seen[-1] == render_prompt("What is 1 + 1?") and metrics["accuracy"] == 1.0
    tasks.evaluate_gsm8k(None, None, [example], [example], tasks.GenerationSettings(), format_prompt=render_prompt)
    assert seen[-1] == render_prompt("Question: What is 1 + 1?\nAnswer: #### 2\n\nQuestion: What is 1 + 1?\nAnswer:")
    tasks.evaluate_gsm8k(None, None, [example], [], tasks.GenerationSettings())
    assert seen[-1] == "Question: What is 1 + 1?\nAnswer:"


class _Done:
    def __init__(self, text: str):
        self.text, self.finished = text, True


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown tasks"):
        EvalConfig(tasks="perplexity,bogus")
    with pytest.raises(ConfigError, match="limit"):
        EvalConfig(limit=0)


def test_cli_eval_and_compare(tmp_path, local_data, capsys):
    tok = byte_tokenizer()
    run = write_run(tmp_path / "run", tiny_model(257, context_length=64), tok, step=3)
    assert main(["eval", "--checkpoint", str(run), "--tasks", "perplexity,gsm8k", "--max-new-tokens", "4",
                 "--device", "cpu", "--perplexity-text", local_data["perplexity_text"],
                 "--gsm8k-data", local_data["gsm8k_data"], "--out", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1/report.json").is_file()
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "r1"), str(tmp_path / "r1"), "--out", str(tmp_path / "cmp.md")]) == 0
    out = capsys.readouterr().out
    assert out.count("| 3 |") == 2 and (tmp_path / "cmp.md").read_text() == out
