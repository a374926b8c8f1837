"""Alignment data: instruction pairs for SFT (several file formats), Anthropic HH preference pairs for DPO,
and packing of encoded examples into fixed-length rows.

Packing puts whole examples one after another into rows of seq_len + 1 tokens (next-fit, in the given
order; an example longer than a row is cut at the row's end) and pads the rest of a row with a mask of
False. Attention crosses example boundaries inside a row: the model has no document mask, and an example
only ever follows complete earlier ones, which end in <|end|>. The loss reads only masked-in (response)
targets, so prompts, padding and the previous example never enter it.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

import torch

from scratchlm.alignment.chat import Turn
from scratchlm.eval.datasets import read_jsonl

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24


def sft_pair(record: dict) -> tuple[str, str]:
    """(prompt, response) from a record of any supported format: {prompt, response} (CS336 SFT),
    {instruction, input?, output} (Alpaca), {instruction, instances: [{input, output}]} (Self-Instruct seeds),
    {question, answer} (GSM8K: calculator annotations dropped, the '#### N' line kept for answer parsing)."""
    if "prompt" in record and "response" in record:
        return record["prompt"], record["response"]
    if "question" in record and "answer" in record:
        return record["question"], _CALCULATOR.sub("", record["answer"])
    if "instruction" in record:
        example = record["instances"][0] if record.get("instances") else record
        if "output" not in example:
            raise ValueError(f"instruction record without an output: {str(record)[:80]}")
        extra = example.get("input") or ""
        return (f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]), example["output"]
    raise ValueError(f"unrecognized SFT record with keys {sorted(record)}; expected prompt/response, "
                     "instruction/output, instruction/instances or question/answer")


def load_sft_pairs(paths: list[str | os.PathLike], limit: int | None = None) -> list[tuple[str, str]]:
    """Pairs from every file (at most `limit` per file), in file order."""
    return [sft_pair(r) for path in paths for r in read_jsonl(path, limit)]


# --- preference pairs ------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[Turn]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [("user", "hi"), ("assistant", "hello")]."""
    pieces = _HH_TURN.split(text)
    if pieces[0].strip():
        raise ValueError(f"HH dialogue does not start with a turn: {text[:60]!r}")
    return [("user" if role == "Human" else "assistant", body.strip())
            for role, body in zip(pieces[1::2], pieces[2::2], strict=True)]


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[Turn]  # the shared dialogue, ending with the user's turn
    chosen: str
    rejected: str


def hh_pair(record: dict) -> PreferencePair | None:
    """The shared prefix and the two final assistant replies; None when the dialogues differ earlier, do not
    end with an assistant turn, or end identically (such pairs carry no preference)."""
    chosen, rejected = parse_hh_dialogue(record["chosen"]), parse_hh_dialogue(record["rejected"])
    if len(chosen) < 2 or len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]:
        return None
    if chosen[-1][0] != "assistant" or rejected[-1][0] != "assistant" or chosen[-2][0] != "user":
        return None
    if chosen[-1][1] == rejected[-1][1] or not chosen[-1][1] or not rejected[-1][1]:
        return None
    return PreferencePair(chosen[:-1], chosen[-1][1], rejected[-1][1])


def load_hh_pairs(path: str | os.PathLike, limit: int | None = None) -> tuple[list[PreferencePair], int]:
    """(usable pairs, number skipped) from an HH-RLHF .jsonl(.gz)."""
    pairs = [hh_pair(r) for r in read_jsonl(path, limit)]
    kept = [p for p in pairs if p is not None]
    return kept, len(pairs) - len(kept)


# --- packing ---------------------------------------------------------------------------------------------------


@dataclass
class Packed:
    tokens: torch.Tensor  # (rows, seq_len + 1) long: inputs are [:, :-1], targets [:, 1:]
    mask: torch.Tensor  # (rows, seq_len + 1) bool: True where the token is a response token (a loss target)
    truncated: int  # examples cut at a row's end

    def targets(self, ignore_index: int = -100) -> torch.Tensor:
        """(rows, seq_len) targets with ignore_index wherever the target is not a response token."""
        return torch.where(self.mask[:, 1:], self.tokens[:, 1:], ignore_index)


def pack_examples(examples: list[tuple[list[int], list[bool]]], seq_len: int, *, pack: bool = True,
                  pad_id: int = 0) -> Packed:
    """Rows of seq_len + 1 tokens; pack=False puts one example per row (padding only)."""
    width = seq_len + 1
    rows: list[tuple[list[int], list[bool]]] = []
    truncated = 0
    for ids, mask in examples:
        if len(ids) > width:
            ids, mask, truncated = ids[:width], mask[:width], truncated + 1
        if pack and rows and len(rows[-1][0]) + len(ids) <= width:
            rows[-1][0].extend(ids)
            rows[-1][1].extend(mask)
        else:
            rows.append((list(ids), list(mask)))
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    masks = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (ids, mask) in enumerate(rows):
        tokens[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        masks[r, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
    return Packed(tokens, masks, truncated)


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded shuffle, then the last `fraction` (at least one item when fraction > 0)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(fraction * len(items))) if fraction > 0 and len(items) > 1 else 0
    cut = len(items) - n_held
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]
