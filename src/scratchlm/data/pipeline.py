"""The data pipeline: a list of steps from a TOML file, run over many input files by an executor, resumably.

    inputs = ["{data}/webcrawl/warc/*.warc.gz"]     # files, folders or globs; {data} = the data folder
    [[steps]]
    type = "extract"                                # see scratchlm.data.steps.STEP_TYPES
    mode = "main"
    [[steps]]
    type = "langid"
    languages = ["en"]
    ...

**Tasks and stages.** One task per input file (files are the unit crawls come in; a task reads its file
once). Document steps run inside a task. A global step (deduplication) cuts the list into stages, with a
barrier between them (scratchlm.data.steps explains summarize / decide / bind):

    stage 0, per task:  read -> document steps ... -> shard        + summary for global step 1
    decide step 1, once over all summaries                          -> state
    stage 1, per task:  shard of stage 0 -> apply step 1 -> document steps ... -> shard  + summary for step 2
    ...
    last stage, per task: ... -> output/shard-TTTTT.jsonl.gz

so a pipeline with g global steps reads its data g + 1 times, and two-pass line dedup is its summary in one
stage and its application in the next. Shards keep document order, so the output is a pure function of
the inputs and the steps, whatever the executor and the number of workers.

**Resumption.** A task writes every output under a temporary name, renames them into place, and only then
writes its stats file `stats/stage-K/task-TTTTT.json`, the completion marker. On (re)start, a task with a
marker is skipped; any output of a task without one is deleted and the task runs again. A decision is one
atomically written file. So killing a run at any point and starting it again gives the same bytes as an
uninterrupted run (tests/data/test_pipeline.py kills one with SIGKILL).

**Run folder.** config.json / run_info.json (the resolved pipeline, code version), plan.json (inputs and
stages; a restart with a different plan is refused), stages/K/ (intermediate shards, summaries,
state.npz; removed at the end unless keep_intermediate), output/ (the kept documents), dropped/stage-K/
(dropped documents with metadata drop_reason, if write_dropped), stats/ and stats.json (per step: documents
in and out, drop reasons, bytes, seconds). Seconds are CPU seconds of the task's process (time.process_time):
on a shared machine wall time measures the neighbours as much as the step.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scratchlm.atomic import atomic_path, write_text_atomic
from scratchlm.config import ConfigError, write_run_info
from scratchlm.data.document import Document
from scratchlm.data.executors import Executor, LocalExecutor
from scratchlm.data.readers import ReadStats, read_documents
from scratchlm.data.steps import build_step, is_global

STATS_VERSION = 1


@dataclass(kw_only=True)
class PipelineConfig:
    inputs: list[str] = field(metadata={"help": "input files, folders or globs; {data} is the data folder"})
    format: Literal["auto", "warc", "wet", "jsonl", "html", "text"] = field(
        default="auto", metadata={"help": "reader for every input (auto: by file name)"})
    steps: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "[[steps]] tables: type + settings"})
    write_dropped: bool = field(default=False, metadata={"help": "also write dropped documents, with the reason"})
    keep_intermediate: bool = field(default=False, metadata={"help": "keep the stage shards after the run"})

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("inputs is empty: give at least one file, folder or glob")
        self.build_steps()  # a bad step fails now, with its name, not in a worker

    def build_steps(self) -> list[Any]:
        return [build_step(table) for table in self.steps]


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Input files in a fixed order: each pattern's matches sorted, folders walked recursively (hidden
    files skipped); "{data}" is replaced by the data folder. Names must be unique (they name the outputs)."""
    from scratchlm.data.sources import data_root

    files: list[Path] = []
    for pattern in patterns:
        if "{data}" in pattern:
            pattern = pattern.replace("{data}", str(data_root()))
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ConfigError(f"input {pattern!r} matches no file")
        for match in map(Path, matches):
            if match.is_dir():
                files += sorted(p for p in match.rglob("*") if p.is_file() and not p.name.startswith("."))
            elif match.is_file():
                files.append(match)
            else:
                raise ConfigError(f"input {str(match)!r} does not exist")
    names = Counter(p.name for p in files)
    if repeated := [n for n, c in names.items() if c > 1]:
        raise ConfigError(f"input file names must be unique (they key document ids); repeated: {repeated[:5]}")
    return files


# ---------------------------------------------------------------------------------------------------
# Shards: JSONL.gz of documents


def read_shard(path: str | os.PathLike) -> Iterator[Document]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield Document(id=record["id"], text=record["text"], url=record["url"], metadata=record["metadata"])


class ShardWriter:
    """Streams documents into a shard, JSON lines {id, url, text, metadata} in gzip without a timestamp (same
    documents, same bytes), under a temporary name; `commit` renames it into place."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.raw = open(self.tmp, "wb")
        self.file = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0)

    def write(self, doc: Document) -> None:
        record = {"id": doc.id, "url": doc.url, "text": doc.text, "metadata": doc.metadata}
        self.file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")

    def commit(self) -> None:
        self.file.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        os.replace(self.tmp, self.path)


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class StepStats:
    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "seconds": round(self.seconds, 6), "dropped": dict(sorted(self.dropped.items()))}


def doc_bytes(doc: Document) -> int:
    return len(doc.html) if doc.html is not None else len(doc.text.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------------
# Plan: stages and tasks


@dataclass(frozen=True)
class Stage:
    """Document steps run in one pass; `apply` is the global step whose decision opens the stage, `summarize`
    the one whose summary it writes (None for the first and the last stage)."""

    index: int
    apply: Any
    steps: list[Any]
    summarize: Any


def plan_stages(steps: list[Any]) -> list[Stage]:
    stages, current, opening = [], [], None
    for step in steps:
        if is_global(step):
            stages.append(Stage(len(stages), opening, current, step))
            current, opening = [], step
        else:
            current.append(step)
    stages.append(Stage(len(stages), opening, current, None))
    return stages


@dataclass(frozen=True)
class TaskJob:
    """Everything one task needs (picklable: it travels to worker processes and Ray workers)."""

    run_dir: Path
    stage: Stage
    last: bool
    task: int
    input: Path
    format: str
    write_dropped: bool


def _stage_dir(run_dir: Path, k: int) -> Path:
    return run_dir / "stages" / str(k)


def task_outputs(job: TaskJob) -> dict[str, Path]:
    """Where the task's files go (the marker last)."""
    name = f"shard-{job.task:05d}"
    outputs = {"shard": (job.run_dir / "output" if job.last else _stage_dir(job.run_dir, job.stage.index)) / f"{name}.jsonl.gz"}
    if job.stage.summarize is not None:
        outputs["summary"] = _stage_dir(job.run_dir, job.stage.index) / f"summary-{job.task:05d}.npz"
    if job.write_dropped:
        outputs["dropped"] = job.run_dir / "dropped" / f"stage-{job.stage.index}" / f"{name}.jsonl.gz"
    outputs["marker"] = job.run_dir / "stats" / f"stage-{job.stage.index}" / f"task-{job.task:05d}.json"
    return outputs


def _clean(job: TaskJob) -> None:
    """Remove whatever an interrupted attempt of this task left (outputs and temporary files)."""
    for path in task_outputs(job).values():
        path.unlink(missing_ok=True)
        for tmp in path.parent.glob(f".{path.name}*.tmp"):
            tmp.unlink(missing_ok=True)


def _timed(docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
    """Documents of a reader, its time and output counted in `stats`."""
    it = iter(docs)
    while True:
        start = time.process_time()
        doc = next(it, None)
        stats.seconds += time.process_time() - start
        if doc is None:
            return
        stats.docs_out += 1
        stats.bytes_out += doc_bytes(doc)
        yield doc


def run_task(job: TaskJob) -> dict:
    """One task of one stage: read, apply the steps, write shard, summary, dropped documents, then the marker."""
    _clean(job)
    outputs = task_outputs(job)
    stage = job.stage
    read_stats = ReadStats()
    if stage.index == 0:
        source: Iterable[Document] = read_documents(job.input, job.format, read_stats)
    else:
        source = read_shard(_stage_dir(job.run_dir, stage.index - 1) / f"shard-{job.task:05d}.jsonl.gz")
    steps = list(stage.steps)
    if stage.apply is not None:
        state = load_arrays(_stage_dir(job.run_dir, stage.index - 1) / "state.npz")
        steps.insert(0, stage.apply.bind(job.task, state))
    names = ([stage.apply.name] if stage.apply is not None else []) + [s.name for s in stage.steps]
    read, write = StepStats("read"), StepStats("write")
    step_stats = [StepStats(name) for name in names]
    writer = ShardWriter(outputs["shard"])
    dropped = ShardWriter(outputs["dropped"]) if job.write_dropped else None

    def kept() -> Iterator[Document]:
        for doc in _timed(source, read):
            for step, stats in zip(steps, step_stats):
                stats.docs_in += 1
                stats.bytes_in += doc_bytes(doc)
                start = time.process_time()
                out = step(doc)
                stats.seconds += time.process_time() - start
                if out is None:
                    stats.dropped[doc.metadata.get("drop_reason", stats.name)] += 1
                    doc.metadata.setdefault("drop_reason", stats.name)
                    doc.metadata["dropped_by"] = stats.name
                    if dropped is not None:
                        dropped.write(doc)
                    break
                doc = out
                stats.docs_out += 1
                stats.bytes_out += doc_bytes(doc)
            else:
                start = time.process_time()
                writer.write(doc)
                write.docs_in += 1
                write.bytes_in += doc_bytes(doc)
                write.seconds += time.process_time() - start
                yield doc

    summary_stats = StepStats(f"{stage.summarize.name}:summarize") if stage.summarize is not None else None
    if stage.summarize is not None:
        start = time.process_time()
        summary = stage.summarize.summarize(kept())
        # the summary's own time is what is left after the steps, reads and writes it pulled through
        summary_stats.seconds = time.process_time() - start - read.seconds - write.seconds - sum(s.seconds for s in step_stats)
        with open(outputs["summary"].with_name(f".{outputs['summary'].name}.tmp"), "wb") as f:
            np.savez(f, **summary)  # renamed into place with the shard below
    else:
        for _ in kept():
            pass
    start = time.process_time()
    writer.commit()
    if dropped is not None:
        dropped.commit()
    if stage.summarize is not None:
        os.replace(outputs["summary"].with_name(f".{outputs['summary'].name}.tmp"), outputs["summary"])
    write.docs_out = write.docs_in
    write.seconds += time.process_time() - start
    read.docs_in = read_stats.records if stage.index == 0 else read.docs_out
    record = {
        "version": STATS_VERSION, "stage": stage.index, "task": job.task, "input": str(job.input),
        "reader": read_stats.to_dict() if stage.index == 0 else None,
        "steps": [s.to_dict() for s in [read, *step_stats, write]] + ([summary_stats.to_dict()] if summary_stats else []),
    }
    write_text_atomic(outputs["marker"], json.dumps(record, indent=1) + "\n")  # the completion marker, last
    return record


# ---------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class _ShardTexts:
    """texts(task, position) over the shards of one stage, keeping the last shard read in memory."""

    directory: Path
    cache: dict = field(default_factory=dict)

    def __call__(self, task: int, position: int) -> str:
        if task not in self.cache:
            self.cache.clear()
            self.cache[task] = [doc.text for doc in read_shard(self.directory / f"shard-{task:05d}.jsonl.gz")]
        return self.cache[task][position]


def _decide(run_dir: Path, stage: Stage, num_tasks: int) -> None:
    """The barrier after a stage: its global step's decision from every task's summary, saved once."""
    directory = _stage_dir(run_dir, stage.index)
    state_path = directory / "state.npz"
    marker = run_dir / "stats" / f"stage-{stage.index}" / "decide.json"
    if marker.exists():
        return
    start = time.process_time()
    summaries = [load_arrays(directory / f"summary-{t:05d}.npz") for t in range(num_tasks)]
    state = stage.summarize.decide(summaries, _ShardTexts(directory))
    save_arrays(state_path, state)
    record = {"version": STATS_VERSION, "stage": stage.index, "step": stage.summarize.name,
              "seconds": round(time.process_time() - start, 6)}
    write_text_atomic(marker, json.dumps(record, indent=1) + "\n")


def _plan_record(cfg: PipelineConfig, inputs: list[Path], stages: list[Stage]) -> dict:
    return {"inputs": [str(p) for p in inputs], "format": cfg.format, "steps": cfg.steps,
            "write_dropped": cfg.write_dropped,
            "stages": [[*([s.apply.name] if s.apply else []), *(x.name for x in s.steps)] for s in stages]}


def run_pipeline(cfg: PipelineConfig, run_dir: str | os.PathLike, executor: Executor | None = None,
                 argv: list[str] | None = None) -> dict:
    """Run (or resume) the pipeline into run_dir; returns the aggregated stats (also in run_dir/stats.json)."""
    run_dir = Path(run_dir)
    executor = executor or LocalExecutor()
    inputs = expand_inputs(cfg.inputs)
    stages = plan_stages(cfg.build_steps())
    plan = _plan_record(cfg, inputs, stages)
    plan_path = run_dir / "plan.json"
    if plan_path.exists():
        if json.loads(plan_path.read_text(encoding="utf-8")) != json.loads(json.dumps(plan)):
            raise ConfigError(f"{run_dir} holds a run of a different pipeline or inputs (plan.json); "
                              "use a new output folder, or delete this one")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, cfg, argv)
        write_text_atomic(plan_path, json.dumps(plan, indent=2) + "\n")
    for stage in stages:
        last = stage.index == len(stages) - 1
        jobs = [TaskJob(run_dir, stage, last, t, path, cfg.format, cfg.write_dropped) for t, path in enumerate(inputs)]
        todo = [job for job in jobs if not task_outputs(job)["marker"].exists()]
        executor.run(run_task, todo, desc=f"stage {stage.index + 1}/{len(stages)}")
        if stage.summarize is not None:
            _decide(run_dir, stage, len(inputs))
    stats = collect_stats(run_dir)
    write_text_atomic(run_dir / "stats.json", json.dumps(stats, indent=2) + "\n")
    if not cfg.keep_intermediate:
        shutil.rmtree(run_dir / "stages", ignore_errors=True)
    return stats


def collect_stats(run_dir: str | os.PathLike) -> dict:
    """Per-task stats summed per step in pipeline order: read, each step (its summarize and decide time added
    to its own), write. Works on an unfinished run too (finished tasks only)."""
    run_dir = Path(run_dir)
    plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    rows: dict[str, StepStats] = {"read": StepStats("read")}
    for stage_steps in plan["stages"]:
        for name in stage_steps:
            rows.setdefault(name, StepStats(name))
    rows["write"] = StepStats("write")
    reader = ReadStats()
    tasks_done: Counter = Counter()
    for marker in sorted((run_dir / "stats").glob("stage-*/task-*.json")):
        record = json.loads(marker.read_text(encoding="utf-8"))
        tasks_done[record["stage"]] += 1
        if record["reader"]:
            reader.merge(ReadStats(record["reader"]["files"], record["reader"]["records"],
                                   record["reader"]["documents"], Counter(record["reader"]["skipped"])))
        last_stage = record["stage"] == len(plan["stages"]) - 1
        for step in record["steps"]:
            name, _, part = step["name"].partition(":")
            row = rows[name]
            row.seconds += step["seconds"]
            # summaries, and reads and writes of intermediate shards, add time only
            if part or (name == "read" and record["stage"] > 0) or (name == "write" and not last_stage):
                continue
            row.docs_in += step["docs_in"]
            row.docs_out += step["docs_out"]
            row.bytes_in += step["bytes_in"]
            row.bytes_out += step["bytes_out"]
            row.dropped.update(step["dropped"])
    for marker in sorted((run_dir / "stats").glob("stage-*/decide.json")):
        record = json.loads(marker.read_text(encoding="utf-8"))
        rows[record["step"]].seconds += record["seconds"]
    rows["read"].dropped.update({f"reader:{k}": v for k, v in reader.skipped.items()})
    return {"version": STATS_VERSION, "inputs": len(plan["inputs"]), "stages": len(plan["stages"]),
            "tasks_done": {str(k): v for k, v in sorted(tasks_done.items())}, "reader": reader.to_dict(),
            "steps": [row.to_dict() for row in rows.values()]}

