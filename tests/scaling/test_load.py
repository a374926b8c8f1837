"""load_runs: sweep results (.jsonl), CSV and the cs336 list, and one-line errors naming file and line."""

from __future__ import annotations

import json

import pytest

from scratchlm.scaling import Run, load_runs

HEADER = "name,budget,params,tokens,compute,loss"
RECORD = {"name": "C1e18-N50M", "budget": 1e18, "params": 5e7, "tokens": 3.3e9, "compute": 1.01e18, "loss": 3.21}


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_with_curves(tmp_path):
    curve = [[1e17, 4.5], [5e17, 3.6], [1.01e18, 3.21]]
    extra = {**RECORD, "name": "b", "depth": 4, "params_non_embedding": 4e7}  # unknown keys are ignored
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({**RECORD, "curve": curve}) + "\n\n" + json.dumps(extra) + "\n")
    runs = load_runs(path)
    assert runs[0] == Run(params=5e7, tokens=3.3e9, compute=1.01e18, loss=3.21, budget=1e18,
                          curve=[(1e17, 4.5), (5e17, 3.6), (1.01e18, 3.21)], name="C1e18-N50M")
    assert runs[1].curve is None and runs[1].name == "b"


def test_csv(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text(f"{HEADER}\nr1,1e18,5e7,3.3e9,1.01e18,3.21\n,1e18,1e8,1.6e9,1e18,3.1\n")
    runs = load_runs(path)
    assert [r.params for r in runs] == [5e7, 1e8] and runs[0].name == "r1" and runs[1].name == ""
    assert runs[0].curve is None


def test_cs336_list(tmp_path):
    path = tmp_path / "isoflops.json"
    path.write_text(json.dumps([{"parameters": 1e8, "compute_budget": 6e18, "final_loss": 5.5}]))
    (run,) = load_runs(path)
    assert (run.params, run.compute, run.budget, run.loss) == (1e8, 6e18, 6e18, 5.5)
    assert run.tokens == pytest.approx(6e18 / (6 * 1e8))


@pytest.mark.parametrize(("name", "text", "message"), [
    ("r.jsonl", json.dumps(RECORD) + "\n{not json\n", "r.jsonl:2: not valid JSON"),
    ("r.jsonl", json.dumps({**RECORD, "loss": None}) + "\n", "r.jsonl:1: loss must be a number"),
    ("r.jsonl", json.dumps({k: v for k, v in RECORD.items() if k != "loss"}), "r.jsonl:1: missing field(s) loss"),
    ("r.jsonl", json.dumps({**RECORD, "params": -3}) + "\n", "r.jsonl:1: params must be a positive finite number"),
    ("r.jsonl", json.dumps({**RECORD, "tokens": "many"}) + "\n", "r.jsonl:1: tokens must be a number"),
    ("r.jsonl", json.dumps({**RECORD, "curve": [[1, 2, 3]]}), "r.jsonl:1: curve must be a list of [compute, loss]"),
    ("r.jsonl", "[1, 2]\n", "r.jsonl:1: expected a JSON object, got list"),
    ("r.jsonl", "\n", "r.jsonl: no runs in the file"),
    ("r.csv", "name,budget,params,loss\n", "r.csv:1: the header lacks column(s) tokens, compute"),
    ("r.csv", f"{HEADER}\na,1,2,3,4,5\nb,1,2,3,4,nan\n", "r.csv:3: loss must be a positive"),
    ("r.csv", f"{HEADER}\na,1,2,3,4,5,6\n", "r.csv:2: more cells than header columns"),
    ("r.json", json.dumps({"runs": []}), "r.json: expected a JSON list"),
    ("r.json", json.dumps([{"parameters": 1e8, "final_loss": 5}]), "r.json: entry 0: expected an object with keys"),
    ("r.json", "[{", "r.json:1: not valid JSON"),
    ("r.txt", "whatever", "r.txt: unknown results format '.txt'"),
])
def test_bad_files_raise_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_runs(path)
    assert str(info.value).startswith(str(path) + message.removeprefix(name)), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nope.jsonl")
