"""`scratchlm generate`: sample text from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from scratchlm.inference import generate_batch
from scratchlm.inference.loading import load_for_inference


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the run folder's tokenizer/)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples (default: 1)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style penalty, 1 = off (default: 1)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16")
    parser.set_defaults(func=generate_cmd)


def generate_cmd(args: argparse.Namespace) -> int:
    if args.max_new_tokens <= 0:
        raise ValueError("--max-new-tokens must be positive")
    model, tokenizer = load_for_inference(args.checkpoint, device=args.device, dtype=args.dtype,
                                          tokenizer=args.tokenizer)
    eot = tokenizer.special_ids.get("<|endoftext|>")
    prompt = tokenizer.encode(args.prompt)
    room = model.config.context_length - len(prompt)
    if room <= 0:
        raise ValueError(f"the prompt is {len(prompt)} tokens, the model's context only {model.config.context_length}")
    if args.max_new_tokens > room:
        print(f"note: generating {room} tokens, all that fit in the context", file=sys.stderr)
    outputs = generate_batch(model, [prompt] * args.num_samples, min(args.max_new_tokens, room),
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                             stop_ids=[] if eot is None else [eot], repetition_penalty=args.repetition_penalty)
    for i, ids in enumerate(outputs):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tokenizer.decode([t for t in ids if t != eot]))
    return 0
