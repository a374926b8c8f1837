"""Tokenized output: the pipeline's JSONL.gz shards -> token files that `scratchlm train` reads.

One task per shard (the same executors and completion markers as the pipeline): every document is encoded
with our BPE tokenizer, followed by the end-of-text token, and goes to the validation split when a hash of
its id falls below `val_fraction` (a fixed function of the id: the split does not depend on the number of
shards or workers), else to training. Each task writes `parts/{train,val}-TTTTT.bin`, token files in the
tokenizer stage's format (scratchlm.tokenizer.token_files: flat uint16/uint32 + JSON sidecar), then its
marker. Once every task is done, the parts are concatenated in shard order into `train.bin` and `val.bin`
(each with its sidecar) and `manifest.json` lists the shards and counts:

    scratchlm data tokenize RUN/output --tokenizer TOK --out TOKENS
    scratchlm train --data.train TOKENS/train.bin --data.val TOKENS/val.bin ...
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchlm.atomic import atomic_path, write_text_atomic
from scratchlm.data.executors import Executor, LocalExecutor
from scratchlm.data.pipeline import read_shard
from scratchlm.tokenizer.bpe import Tokenizer
from scratchlm.tokenizer.token_files import read_sidecar, read_tokens, token_dtype, write_sidecar, write_token_file

EOT = "<|endoftext|>"
SPLITS = ("train", "val")


def in_validation(doc_id: str, val_fraction: float) -> bool:
    """A fixed pseudo-random choice per document id: P = val_fraction."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")
    return h < val_fraction * 2**64


@dataclass(frozen=True)
class _Job:
    shard: Path
    task: int
    out_dir: Path
    tokenizer: Tokenizer
    val_fraction: float


def _part(out_dir: Path, split: str, task: int) -> Path:
    return out_dir / "parts" / f"{split}-{task:05d}.bin"


def _marker(out_dir: Path, task: int) -> Path:
    return out_dir / "parts" / f"task-{task:05d}.json"


def _tokenize_task(job: _Job) -> None:
    tok = job.tokenizer
    eot = tok.special_ids[EOT]
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    counts = {s: {"documents": 0, "text_bytes": 0} for s in SPLITS}
    for doc in read_shard(job.shard):
        split = "val" if in_validation(doc.id, job.val_fraction) else "train"
        text = doc.text
        for special in tok.special_tokens:  # web text may spell a special token; it must not become one
            text = text.replace(special, "")
        ids[split] += tok.encode(text)
        ids[split].append(eot)
        counts[split]["documents"] += 1
        counts[split]["text_bytes"] += len(text.encode("utf-8", "surrogatepass"))
    for split in SPLITS:
        write_token_file(_part(job.out_dir, split, job.task), np.array(ids[split], dtype=np.int64),
                         vocab_size=tok.vocab_size, tokenizer_sha256=tok.hash,
                         text_bytes=counts[split]["text_bytes"], special_tokens=tok.special_ids)
        counts[split]["tokens"] = len(ids[split])
    record = {"shard": str(job.shard), **counts}
    write_text_atomic(_marker(job.out_dir, job.task), json.dumps(record, indent=1) + "\n")


def _concatenate(parts: list[Path], out: Path, tok: Tokenizer) -> dict:
    """One token file from parts, in order, with a sidecar listing them."""
    count = text_bytes = 0
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        for part in parts:
            tokens = read_tokens(part, tok.hash)
            np.asarray(tokens).tofile(f)
            count += len(tokens)
            text_bytes += read_sidecar(part)["text_bytes"]
    sources = [{"path": str(p), "tokens": read_sidecar(p)["count"]} for p in parts]
    return write_sidecar(out, count=count, vocab_size=tok.vocab_size, tokenizer_sha256=tok.hash,
                         special_tokens=tok.special_ids, text_bytes=text_bytes, sources=sources)


def tokenize_shards(shards: list[str | os.PathLike], tokenizer: Tokenizer, out_dir: str | os.PathLike,
                    executor: Executor | None = None, val_fraction: float = 0.01, keep_parts: bool = False) -> dict:
    """Encode pipeline shards into out_dir/{train,val}.bin (resumable); returns the manifest."""
    if EOT not in tokenizer.special_ids:
        raise ValueError(f"the tokenizer has no {EOT} special token to separate documents; train it with "
                         f"--special-token '{EOT}'")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    shards = [Path(p) for p in shards]
    if not shards:
        raise ValueError("no shards to tokenize")
    out_dir = Path(out_dir)
    jobs = [_Job(p, t, out_dir, tokenizer, val_fraction) for t, p in enumerate(shards)]
    (executor or LocalExecutor()).run(_tokenize_task, [j for j in jobs if not _marker(out_dir, j.task).exists()],
                                      desc="tokenize")
    records = [json.loads(_marker(out_dir, t).read_text(encoding="utf-8")) for t in range(len(shards))]
    manifest = {"format": "scratchlm.token_shards", "version": 1, "tokenizer_sha256": tokenizer.hash,
                "vocab_size": tokenizer.vocab_size, "dtype": token_dtype(tokenizer.vocab_size).name,
                "val_fraction": val_fraction, "shards": records}
    for split in SPLITS:
        meta = _concatenate([_part(out_dir, split, t) for t in range(len(shards))], out_dir / f"{split}.bin", tokenizer)
        manifest[split] = {"path": f"{split}.bin", "tokens": meta["count"], "text_bytes": meta["text_bytes"],
                           "documents": sum(r[split]["documents"] for r in records)}
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    if not keep_parts:
        shutil.rmtree(out_dir / "parts")
    return manifest
