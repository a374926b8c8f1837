"""The whole product pipeline end to end on a small default, about 3 minutes on 2 CPU cores:

    data      raw web crawl (the WARC samples) -> the web pipeline -> clean documents     (web/)
    pretrain  BPE tokenizer on TinyStories, train / sft / val text split, token files,
              the `cpu-tiny` model                                                         (tokenizer/, text/, model/)
    sft       "Tell me a story about NAME." -> a real story opening, in the chat template   (sft/)
    eval      report cards of the pretrained and the SFT model: perplexity and bits/byte
              on the held-out split, chat generations, and the comparison table            (eval/)

Every stage is optional (`stages`). A finished stage writes `stages/<stage>.json` (its summary and a key made
of its settings and those of the stages it reads); running the same command again skips a stage whose key
matches and redoes one whose settings changed, with everything after it. An interrupted pretrain or sft
stage starts over, or continues with `resume=True`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.alignment.chat import prompt_formatter
from scratchlm.alignment.sft import SFTConfig, sft
from scratchlm.atomic import atomic_write, write_text_atomic
from scratchlm.config import ConfigError, build_config
from scratchlm.config_schema import to_dict
from scratchlm.data import sources
from scratchlm.data.pipeline import PipelineConfig, expand_inputs, read_shard, run_pipeline
from scratchlm.data.report import format_stats
from scratchlm.eval.generation import generate_texts
from scratchlm.eval.harness import EvalConfig, run_eval
from scratchlm.eval.report import compare_table
from scratchlm.tokenizer import BPETrainConfig, train_tokenizer
from scratchlm.tokenizer.corpus import ByteRange, iter_blocks
from scratchlm.tokenizer.token_files import encode_files, read_tokens, token_stats
from scratchlm.train import TrainConfig, Trainer
from scratchlm.train.checkpoint import load_trained_model

log = logging.getLogger(__name__)

STAGES = ("data", "pretrain", "sft", "eval")


def default_train_config() -> TrainConfig:
    return build_config(TrainConfig, "train/cpu-tiny")


@dataclass(kw_only=True)
class WebDataConfig:
    """The data stage: the web pipeline's steps (a `configs/data/` preset) over the WARC samples."""

    pipeline: str = field(default="data/webcrawl", metadata={"help": "pipeline preset (configs/data/NAME.toml): its steps"})
    inputs: list[str] = field(default_factory=lambda: ["{data}/webcrawl/warc/*.warc.gz"],
                              metadata={"help": "files or globs; {data} = the data folder"})
    mix: bool = field(default=False, metadata={
        "help": "add the clean web text to the pretraining corpus (tokenizer and training split; validation stays TinyStories)"})


@dataclass(kw_only=True)
class SpeedrunEvalConfig:
    """The eval stage: held-out perplexity through the eval harness, and a few chat generations."""

    prompts: int = field(default=4, metadata={"help": "story prompts (names from the held-out split) to generate for"})
    max_new_tokens: int = field(default=120, metadata={"help": "generation length limit"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (0 = greedy)"})
    windows: int | None = field(default=None, metadata={"help": "perplexity windows (default: the whole held-out split)"})

    def __post_init__(self) -> None:
        if self.prompts < 0 or self.max_new_tokens <= 0 or self.temperature < 0:
            raise ConfigError("eval.prompts and eval.temperature must be >= 0, eval.max_new_tokens > 0")


def default_sft_config() -> SFTConfig:
    # data, base and out are set by the run; 40 steps at 1e-4 lowered the held-out response loss and kept the
    # pretrained perplexity within 10% (3e-4 and 1e-3 forgot more: docs/speedrun.md)
    return build_config(SFTConfig, None, steps=40, batch_size=8, device="cpu", val_fraction=0.1, log_interval=10,
                        eval_interval=0, checkpoint_interval=0, **{"optimizer.lr": 1e-4, "schedule.warmup_steps": 5})


@dataclass(kw_only=True)
class SpeedrunConfig:
    stages: list[str] = field(default_factory=lambda: list(STAGES),
                              metadata={"help": f"stages to run, from {', '.join(STAGES)} (sft and eval need pretrain)"})
    corpus: list[str] = field(
        default_factory=lambda: ["tinystories/tinystories_valid_head.txt"],
        metadata={"help": "files under the data folder (see `scratchlm data where`)"},
    )
    fallback_download: str = field(default="tinystories-valid", metadata={"help": "corpus to download when the data folder is absent"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the corpus (its end) held out for validation"})
    sft_fraction: float = field(default=0.1, metadata={"help": "share of the corpus (before the validation part) kept out of "
                                                                 "pretraining for the SFT stories"})
    max_story_chars: int = field(default=450, metadata={"help": "longest story paragraph used as an SFT response"})
    out: str = field(default="runs/speedrun", metadata={"help": "output folder"})
    data: WebDataConfig = field(default_factory=WebDataConfig)
    tokenizer: BPETrainConfig = field(default_factory=lambda: BPETrainConfig(vocab_size=4096))
    train: TrainConfig = field(default_factory=default_train_config, metadata={"help": "training run (preset train/cpu-tiny)"})
    sft: SFTConfig = field(default_factory=default_sft_config, metadata={"help": "fine-tuning run (data, base, out: set by the run)"})
    eval: SpeedrunEvalConfig = field(default_factory=SpeedrunEvalConfig)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1 or not 0 <= self.sft_fraction < 1 or self.val_fraction + self.sft_fraction >= 1:
            raise ConfigError(f"val_fraction in (0, 1) and sft_fraction in [0, 1) must leave text to pretrain on, "
                              f"got {self.val_fraction} and {self.sft_fraction}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
        if {"sft", "eval"} & set(self.stages) and "pretrain" not in self.stages:
            raise ConfigError("the sft and eval stages start from the pretrained model: add pretrain to stages")
        if "sft" in self.stages and self.sft_fraction == 0:
            raise ConfigError("the sft stage needs stories: set sft_fraction > 0, or drop sft from stages")


# ---------------------------------------------------------------------------------------------------
# Corpus and text


def resolve_corpus(config: SpeedrunConfig) -> list[Path]:
    try:
        return [sources.shared_data_path(p) for p in config.corpus]
    except FileNotFoundError as e:
        log.warning("%s; downloading %s instead", e, config.fallback_download)
        return [sources.download(config.fallback_download)]


def split_text(paths: list[Path], out_dir: Path, val_fraction: float, sft_fraction: float = 0.0) -> dict[str, Path]:
    """Concatenate the corpus and cut it into train | sft | val (val: the last `val_fraction`, sft: the
    `sft_fraction` before it), each cut at the blank line nearest below its target so no paragraph straddles
    two parts: {train, sft, val}.txt in out_dir. For small corpora: read into memory."""
    text = "\n\n".join("".join(iter_blocks(ByteRange(str(p)))) for p in paths)

    def cut_below(fraction: float) -> int:
        target = int(len(text) * fraction)
        cut = text.rfind("\n\n", 0, target)
        return target if cut <= 0 else cut + 2

    sft_start, val_start = cut_below(1 - val_fraction - sft_fraction), cut_below(1 - val_fraction)
    parts = {"train": text[:sft_start], "sft": text[sft_start:val_start], "val": text[val_start:]}
    for name, part in parts.items():
        write_text_atomic(out_dir / f"{name}.txt", part)
    return {name: out_dir / f"{name}.txt" for name in parts}


_NAMED = re.compile(r"\bnamed ([A-Z][a-z]+)\b")


def story_examples(text: str, max_chars: int) -> list[dict[str, str]]:
    """Instruction pairs from real stories: each paragraph that opens a story ("Once upon a time") and fits in
    max_chars is a response; its prompt is "Tell me a story about Roxy." when it names a character ("... named
    Roxy"), else "Tell me a story.". Story boundaries are not recoverable in the TinyStories slice, so the
    opening paragraph is the whole response: it fits the model's 128-token context with its end token."""
    examples = []
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip()
        if paragraph.startswith("Once upon a time") and len(paragraph) <= max_chars:
            named = _NAMED.search(paragraph)
            prompt = f"Tell me a story about {named.group(1)}." if named else "Tell me a story."
            examples.append({"prompt": prompt, "response": paragraph})
    return examples


# ---------------------------------------------------------------------------------------------------
# Stage bookkeeping


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(out: Path, stage: str, key: str) -> dict | None:
    """The summary of a finished stage with this key, else None."""
    marker = out / "stages" / f"{stage}.json"
    if marker.is_file() and (record := json.loads(marker.read_text(encoding="utf-8")))["key"] == key:
        return record["summary"]
    return None


def _finish(out: Path, stage: str, key: str, summary: dict) -> dict:
    write_text_atomic(out / "stages" / f"{stage}.json", json.dumps({"key": key, "summary": summary}, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------
# Stages


def run_data(config: WebDataConfig, run_dir: Path, report: Callable[[str], None]) -> dict:
    """The web pipeline into run_dir, and its kept documents as run_dir/clean.txt (blank-line separated)."""
    pipeline = build_config(PipelineConfig, config.pipeline, inputs=config.inputs)
    shutil.rmtree(run_dir, ignore_errors=True)  # a few seconds: simpler than resuming, and the plan may have changed
    stats = run_pipeline(pipeline, run_dir)
    texts = [doc.text.strip() for shard in sorted((run_dir / "output").glob("shard-*.jsonl.gz")) for doc in read_shard(shard)]
    clean = "\n\n".join(texts) + "\n"
    write_text_atomic(run_dir / "clean.txt", clean)
    report(format_stats(stats))
    return {"inputs": stats["inputs"], "records": stats["reader"]["records"], "documents_in": stats["steps"][0]["docs_out"],
            "documents": len(texts), "html_bytes": stats["steps"][1]["bytes_in"], "bytes": len(clean.encode()),
            "clean_text": str(run_dir / "clean.txt")}


def web_inputs_present(config: WebDataConfig) -> bool:
    try:
        return bool(expand_inputs(config.inputs))
    except (ConfigError, FileNotFoundError):  # a pattern matches nothing, or $SCRATCHLM_DATA is wrong
        return False


def run_pretrain(config: SpeedrunConfig, out: Path, web_text: Path | None, resume: bool) -> dict:
    """Tokenizer, train / sft / val split, token files, training (web_text joins the tokenizer corpus and the
    training split)."""
    corpus = resolve_corpus(config)
    extra = [web_text] if web_text is not None else []
    tok, tok_stats = train_tokenizer(corpus + extra, out / "tokenizer", config.tokenizer)
    parts = split_text(corpus, out / "text", config.val_fraction, config.sft_fraction)
    progress = config.tokenizer.progress
    train_meta = encode_files(tok, [parts["train"], *extra], out / "train.bin", progress=progress)
    encode_files(tok, [parts["val"]], out / "val.bin", progress=progress)
    stats = token_stats(tok, read_tokens(out / "train.bin"), train_meta["text_bytes"])

    cfg = config.train
    cfg.data.train, cfg.data.val, cfg.data.tokenizer = str(out / "train.bin"), str(out / "val.bin"), str(out / "tokenizer")
    cfg.out = str(out / "model")
    cfg.model.vocab_size = tok.vocab_size
    if not resume:
        shutil.rmtree(cfg.out, ignore_errors=True)  # a stage starts over unless asked to resume
    trainer = Trainer(cfg, resume=resume)
    summary = trainer.fit()
    return {
        "corpus": [str(p) for p in corpus + extra],
        "tokenizer": tok_stats,
        "tokens": train_meta["count"],
        "stats": stats,
        "params": trainer.model.num_params(),
        "training": summary,
    }


def run_sft(config: SpeedrunConfig, out: Path, resume: bool, report: Callable[[str], None]) -> dict:
    examples = story_examples((out / "text" / "sft.txt").read_text(encoding="utf-8"), config.max_story_chars)
    if len(examples) < 2:
        raise ValueError(f"only {len(examples)} story openings in {out / 'text' / 'sft.txt'}: raise sft_fraction "
                         "or max_story_chars, or drop sft from stages")
    data = out / "text" / "sft.jsonl"
    with atomic_write(data) as f:
        f.writelines(json.dumps(e) + "\n" for e in examples)
    cfg = config.sft
    cfg.base, cfg.data, cfg.out = str(out / "model"), [str(data)], str(out / "sft")
    if not resume:
        shutil.rmtree(cfg.out, ignore_errors=True)
    summary = sft(cfg, resume=resume, report=report)
    return {"examples": len(examples), "example": examples[0], **summary}


def run_eval_stage(config: SpeedrunConfig, out: Path, models: dict[str, Path]) -> dict:
    """A report card per model (the harness's perplexity task on the held-out split) plus story generations
    for prompts naming characters of held-out stories: eval/<name>/{report.md, report.json, generations/}."""
    val = out / "text" / "val.txt"
    named = [e["prompt"] for e in story_examples(val.read_text(encoding="utf-8"), config.max_story_chars)
             if e["prompt"] != "Tell me a story."]
    prompts = list(dict.fromkeys(named))[: config.eval.prompts]
    cards: dict[str, Any] = {}
    for name, checkpoint in models.items():
        trained = load_trained_model(checkpoint, "cpu")
        card_dir = out / "eval" / name  # the harness redoes cached tasks when the weights changed
        cfg = EvalConfig(checkpoint=str(checkpoint), tasks="perplexity", perplexity_text=str(val), device="cpu",
                         dtype="float32", limit=config.eval.windows)
        card = run_eval(cfg, trained.model, trained.tokenizer, card_dir, step=trained.step)
        style = prompt_formatter(trained.tokenizer)  # the chat template when the model has its tokens
        shown = [style(p) if style else p for p in prompts]
        completions = generate_texts(trained.model, trained.tokenizer, shown, config.eval.max_new_tokens,
                                     temperature=config.eval.temperature, seed=0)
        records = [{"prompt": p, "input": s, "output": c.text, "finished": c.finished}
                   for p, s, c in zip(prompts, shown, completions, strict=True)]
        with atomic_write(card_dir / "generations" / "stories.jsonl") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        cards[name] = {"report": card, "generations": records, "path": str(card_dir)}
    table = compare_table([c["report"] for c in cards.values()], names=list(cards))
    write_text_atomic(out / "eval" / "compare.md", table)
    return {"cards": cards, "table": table}


def run(config: SpeedrunConfig, resume: bool = False, report: Callable[[str], None] = print) -> dict[str, Any]:
    """The stages in `config.stages`, each skipped when already finished with the same settings. Returns
    {stage: summary} for the stages that ran or were finished before (a data stage without its WARC samples
    is skipped with a message and absent)."""
    out = Path(config.out)
    results: dict[str, Any] = {}
    keys: dict[str, str] = {}

    def stage(name: str, key: str, body: Callable[[], dict]) -> None:
        keys[name] = key
        if (done := _finished(out, name, key)) is not None:
            report(f"== {name}: finished before, skipped ({out / 'stages' / (name + '.json')})")
            results[name] = done
            return
        report(f"== {name}")
        results[name] = _finish(out, name, key, body())

    if "data" in config.stages:
        if web_inputs_present(config.data):
            stage("data", _key(to_dict(config.data)), lambda: run_data(config.data, out / "web", report))
        else:
            report(f"== data: skipped, no WARC samples match {config.data.inputs} in the data folder (`scratchlm data "
                   "where` shows it; set $SCRATCHLM_DATA to the shared data folder to run this stage)")
    web_text = Path(results["data"]["clean_text"]) if config.data.mix and "data" in results else None
    if "pretrain" in config.stages:
        settings = {k: to_dict(getattr(config, k)) for k in ("corpus", "val_fraction", "sft_fraction", "tokenizer", "train")}
        stage("pretrain", _key(settings, keys.get("data") if web_text else None),
              lambda: run_pretrain(config, out, web_text, resume))
    if "sft" in config.stages:
        stage("sft", _key(to_dict(config.sft), config.max_story_chars, keys["pretrain"]),
              lambda: run_sft(config, out, resume, report))
    if "eval" in config.stages:
        models = {"pretrained": out / "model", **({"sft": out / "sft"} if "sft" in results else {})}
        stage("eval", _key(to_dict(config.eval), config.max_story_chars, keys["pretrain"], keys.get("sft")),
              lambda: run_eval_stage(config, out, models))
    return results
