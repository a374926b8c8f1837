"""`scratchlm chat`: talk to a checkpoint in the terminal (streamed replies; /reset, /quit; Ctrl-C stops a reply)."""

from __future__ import annotations

import argparse
import sys

from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams
from scratchlm.inference.loading import load_for_inference
from scratchlm.serve.chat_format import format_chat

HELP = "/reset starts a new conversation, /quit (or Ctrl-D) leaves; Ctrl-C stops a reply"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the run folder's tokenizer/)")
    parser.add_argument("--system", help="a system message that opens the conversation")
    parser.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style penalty, 1 = off (default: 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first reply (then seed + 1, ...)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16")
    parser.set_defaults(func=chat_cmd)


def chat_cmd(args: argparse.Namespace) -> int:
    if args.max_tokens <= 0:
        raise ValueError("--max-tokens must be positive")
    model, tokenizer = load_for_inference(args.checkpoint, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    engine = Engine(model, EngineConfig(max_slots=1, sync_every=2), tokenizer)
    eot = tokenizer.special_ids.get("<|endoftext|>")
    opening = [{"role": "system", "content": args.system}] if args.system else []
    history = list(opening)
    print(f"chatting with {args.checkpoint}: {HELP}")
    for turn in range(sys.maxsize):
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line == "/quit":
            return 0
        if line == "/reset":
            history = list(opening)
            print("(new conversation)")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        prompt, stop, history = fit(history, tokenizer, engine.max_len, args.max_tokens, len(opening))
        if prompt is None:
            print("(that message alone fills the context; say something shorter)")
            continue
        params = SamplingParams(max_tokens=min(args.max_tokens, engine.max_len - len(prompt)),
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                repetition_penalty=args.repetition_penalty, stop=stop,
                                stop_token_ids=() if eot is None else (eot,),
                                seed=None if args.seed is None else args.seed + turn)
        reply = []
        print("model>", end="", flush=True)
        try:
            for out in engine.stream(prompt, params):
                reply.append(out.text)
                print(out.text, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        print()
        history.append({"role": "assistant", "content": "".join(reply).strip()})
    return 0


def fit(history: list[dict], tokenizer, max_len: int, max_tokens: int, keep: int) -> tuple[list[int] | None, tuple, list]:
    """(prompt ids, stop strings, history) with the oldest turns after the first `keep` messages dropped until
    the prompt leaves room for a reply of min(max_tokens, half the context); prompt None if even the last
    message alone does not fit."""
    room = min(max_tokens, max_len // 2)
    while True:
        text, stop = format_chat(history, tokenizer)
        prompt = tokenizer.encode(text)
        if len(prompt) + room <= max_len:
            return prompt, stop, history
        if len(history) <= keep + 1:
            return None, stop, history[:-1]
        history = history[:keep] + history[keep + 1 :]
