"""Inference speed: our engine vs Hugging Face `generate` on the same weights, against the bandwidth bound.

    python benchmarks/inference.py                                   # GPU: gpt2-small-124m, gpt-350m, gpt-1.3b
    python benchmarks/inference.py --quick                           # CPU smoke test on cpu-tiny (seconds)
    python benchmarks/inference.py --presets gpt2-small-124m --batches 1,8 --no-hf
    bash benchmarks/inference_trained.sh OUT     # trained target + draft on Gutenberg: real acceptance

For each preset (configs/train/<name>.toml's model shape, random weights: speed does not depend on their
values, but speculative acceptance does, see below), in one process, same weights for both sides:
- copy bandwidth: a large device-to-device copy, (read + written bytes) / time;
- decode at batch 1: tokens/s after the first token, vs the memory-bandwidth bound = copy bandwidth /
  (weight bytes + the KV bytes a token must read at the mean context), per --modes: eager, and on CUDA with
  CUDA graphs and compiled + CUDA graphs, each with one-row matmuls by cuBLAS and ("-gemv") by our Triton GEMV
  with its fused norms and residual adds (the default);
- end-to-end generation at batch 1, 8, 32, 128 (prompt --prompt-len random tokens, --new-tokens greedy
  tokens each, prefill included): ours (`Engine` in --batch-mode, one slot per sequence) vs `LlamaForCausalLM.generate`
  from our weights (scratchlm.export's mapping), tokens generated per second and the ratio;
- prefill tokens/s (one --prefill-len sequence) and time to first token (prompt --prompt-len, 1 new token);
- speculative decoding at batch 1 (`SpeculativeDecoder`, a --draft-layers x --draft-d-model draft) for each
  k in --ks and mode in --spec-modes: speed-up over plain cached decoding in the same mode and the acceptance
  rate. With random weights acceptance is chance agreement between unrelated models; give trained
  checkpoints for meaningful numbers (benchmarks/inference_trained.sh). A round's time does not depend on
  what it accepts, so each row also gives it in plain decode steps and the acceptance rate at which
  speculative decoding breaks even and doubles the speed (`speculative.acceptance_for_speedup`).

Timings: median of --repeats runs after a warm-up run (compilation and CUDA-graph capture stay outside), CUDA
synchronised around each run. Writes benchmarks/results/inference.{json,md} (--quick: inference_quick.*,
trained checkpoints: inference_trained.*; or --results-name).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm import kernels  # noqa: E402
from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.config import build_config  # noqa: E402
from scratchlm.export import llama_config, to_hf_state_dict  # noqa: E402
from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from scratchlm.inference.loading import DTYPES  # noqa: E402
from scratchlm.inference.speculative import SpeculativeDecoder, acceptance_for_speedup  # noqa: E402
from scratchlm.inference.tuning import tune_gemv_tiles  # noqa: E402
from scratchlm.model import ModelConfig, TransformerLM  # noqa: E402
from scratchlm.profiling import copy_bandwidth, profile_steps, top_ops  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.tokenizer import Tokenizer  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402
from scratchlm.train.checkpoint import load_trained_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


@contextlib.contextmanager
def gemv_enabled(on: bool) -> Iterator[None]:
    """scratchlm.kernels.gemv on or off (where it exists: CUDA with Triton; elsewhere nothing to switch)."""
    if not torch.cuda.is_available():
        yield
        return
    from scratchlm.kernels.gemv import enabled

    with enabled(on):
        yield


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(run: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of `repeats` runs of `run()` after one warm-up run."""
    run()
    seconds = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `run()` over `repeats` runs after one warm-up run."""
    return statistics.median(timed_runs(run, device, repeats))


# -- ours -------------------------------------------------------------------------------------------------

# Engine modes: EngineConfig settings, and whether one-row matmuls use our Triton GEMV with its fused norms,
# gate and residual adds (off by default until measured: "-gemv" modes are the A/B). "kernels" (compiled, no
# graphs) is what --profile traces: graphs would hide the kernels.
MODES = {"eager": (dict(cuda_graphs=False), False), "graphs": ({}, False), "graphs-gemv": ({}, True),
         "compiled": (dict(compile=True), False), "compiled-gemv": (dict(compile=True), True),
         "kernels": (dict(compile=True, cuda_graphs=False), False),
         "kernels-gemv": (dict(compile=True, cuda_graphs=False), True)}


class Ours:
    """One engine per (batch size, mode): every run of a shape reuses its cache and its CUDA graphs."""

    def __init__(self, model: TransformerLM, max_len: int, prefill_graphs: bool = True):
        self.model, self.max_len, self.prefill_graphs, self.engines = model, max_len, prefill_graphs, {}

    def generate(self, prompts: list[list[int]], new_tokens: int, mode: str,
                 temperature: float = 0.0) -> Callable[[], object]:
        """Generation of `new_tokens` per prompt (prefill included; greedy by default), one slot per prompt."""
        key = (len(prompts), mode)
        settings, use_gemv = MODES[mode]
        if key not in self.engines:
            config = EngineConfig(max_slots=len(prompts), max_len=self.max_len, sync_every=16,
                                  prefill_graphs=self.prefill_graphs, **settings)
            self.engines[key] = Engine(self.model, config)
        engine, params = self.engines[key], SamplingParams(max_tokens=new_tokens, temperature=temperature, seed=0)

        def run() -> object:
            with gemv_enabled(use_gemv):
                return engine.generate(prompts, params)
        return run

    def decode_rate(self, prompt: list[int], new_tokens: int, device: torch.device, repeats: int, mode: str) -> dict:
        """Batch-1 decode tokens/s after the first token: (n - 1) / (time(n tokens) - time(1 token))."""
        full = timed(self.generate([prompt], new_tokens, mode), device, repeats)
        first = timed(self.generate([prompt], 1, mode), device, repeats)
        return {"tokens_per_second": (new_tokens - 1) / (full - first), "ttft_s": first, "total_s": full}


# -- Hugging Face ---------------------------------------------------------------------------------------

def hf_model(model: TransformerLM, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**llama_config(model.config))
    config._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(config).to(device=next(model.parameters()).device, dtype=dtype).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_embeddings else set()):
        raise RuntimeError(f"HF weights do not match: missing {missing}, unexpected {unexpected}")
    return hf


def hf_generate(hf, prompts: torch.Tensor, new_tokens: int) -> Callable[[], object]:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                  eos_token_id=None, attention_mask=torch.ones_like(prompts))
    return torch.no_grad()(lambda: hf.generate(prompts, **kwargs))


# -- one preset -----------------------------------------------------------------------------------------

def model_config(preset: str, args: argparse.Namespace) -> ModelConfig:
    config = build_config(TrainConfig, f"train/{preset}").model
    needed = args.prompt_len + args.new_tokens
    return dataclasses.replace(config, context_length=max(config.context_length, needed, args.prefill_len + 1))


def bytes_per_token(model: TransformerLM, context: float) -> float:
    """Weights (each read once per decode step) + the keys and values of `context` positions, at batch 1."""
    c, size = model.config, next(model.parameters()).element_size()
    kv = 2 * c.n_layers * c.kv_heads * c.head_dim * size * context
    return model.num_params() * size + kv


def profile_decode(ours: Ours, prompt: list[int], args: argparse.Namespace, device: torch.device) -> dict:
    """Where a batch-1 decode step's time goes: the top kernels (CPU ops on CPU) per generated token, from
    torch.profiler over one generation of --new-tokens tokens (prefill included, 1/new_tokens of it per row).
    Programmatic dependent launch is off here: with it a kernel starts before the one before it ends, and its
    profiled time would include that wait."""
    profiles = {}
    previous, kernels.PDL = kernels.PDL, False
    try:
        for mode in args.profile_modes if device.type == "cuda" else ["eager"]:
            profiles[mode] = profile_mode(ours, prompt, args, device, mode)
    finally:
        kernels.PDL = previous
    return profiles


def profile_mode(ours: Ours, prompt: list[int], args: argparse.Namespace, device: torch.device, mode: str) -> dict:
    run = ours.generate([prompt], args.new_tokens, mode)
    run()  # compile and warm up outside the profile
    prof = profile_steps(run, 1, device)
    ops = top_ops(prof, device, rows=args.profile, per=args.new_tokens)
    total = sum(op["us"] for op in top_ops(prof, device, rows=None, per=args.new_tokens))
    log(f"profile {mode}: {total:,.1f} us/token")
    for op in ops:
        log(f"  {op['us']:8.1f} us/token {op['calls']:6.1f} calls/token  {op['name'][:100]}")
    return {"us_per_token": total, "ops": ops}


def text_tokens(args: argparse.Namespace) -> torch.Tensor | None:
    """--prompt-text encoded with --tokenizer (real text: what speculative acceptance needs), or None."""
    if args.prompt_text is None:
        return None
    tokenizer = Tokenizer.load(args.tokenizer)
    return torch.tensor(tokenizer.encode(args.prompt_text.read_text(encoding="utf-8", errors="replace")))


def bench_preset(result: dict, model: TransformerLM, draft: TransformerLM, args: argparse.Namespace,
                 device: torch.device, dtype: torch.dtype, bandwidth: float, save: Callable[[], None]) -> None:
    """Fill `result` section by section, saving after each."""
    name = result["preset"]
    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    text = text_tokens(args)

    def prompts(batch: int, length: int) -> torch.Tensor:
        """(batch, length): consecutive windows of --prompt-text, else random tokens."""
        if text is None:
            return torch.randint(0, vocab, (batch, length), generator=gen)
        if batch * length > len(text):
            raise SystemExit(f"--prompt-text holds {len(text)} tokens, fewer than {batch} x {length}")
        return text[:batch * length].view(batch, length)

    prompt = prompts(1, args.prompt_len)[0].tolist()
    # 1) batch-1 decode vs the bandwidth bound: eager, CUDA graphs, compiled + CUDA graphs
    bound = bandwidth / bytes_per_token(model, args.prompt_len + args.new_tokens / 2)
    modes = args.modes or ["eager"] + (["graphs", "graphs-gemv"] + (
        [] if args.no_compile else ["compiled", "compiled-gemv"]) if device.type == "cuda" else [])
    ours = Ours(model, args.prompt_len + args.new_tokens, args.prefill_graphs)
    tiles = tune_gemv_tiles(model, max_len=args.prompt_len + args.new_tokens)  # as every engine does; reported
    if tiles:
        result["gemv_tiles"] = {"chosen": min(tiles, key=tiles.get), "us_per_step": {r: t * 1e6 for r, t in tiles.items()}}
    result["decode"] = {}
    for mode in modes:
        rate = ours.decode_rate(prompt, args.new_tokens, device, args.repeats, mode)
        rate["fraction_of_bound"] = rate["tokens_per_second"] / bound
        result["decode"][mode] = rate
        log(f"{name}: decode b=1 {mode} {rate['tokens_per_second']:,.0f} tok/s "
            f"({rate['fraction_of_bound']:.0%} of the {bound:,.0f} tok/s bound), TTFT {rate['ttft_s'] * 1e3:.1f} ms")
    result["bound_tokens_per_second"] = bound
    if args.profile:
        result["profile"] = profile_decode(ours, prompt, args, device)
    save()
    result["batch_mode"] = batch_mode = args.batch_mode if device.type == "cuda" else "eager"
    # 2) prefill and time to first token (ours; HF's beside it below)
    # Prefill = the engine's time to the first token of a long prompt (chunked, graphed prefill and one decode
    # step), against HF's forward over the same prompt
    prefill_len = min(args.prefill_len, model.config.context_length - 1)  # a checkpoint's context may be shorter
    long_prompt = prompts(1, prefill_len).to(device)
    prefill = Ours(model, prefill_len + 1, args.prefill_graphs).generate(long_prompt.tolist(), 1, batch_mode)
    result["prefill"] = {"tokens": prefill_len, "ours": prefill_len / timed(prefill, device, args.repeats)}
    hf = hf_model(model, dtype) if not args.no_hf else None
    if hf is not None:
        result["prefill"]["hf"] = prefill_len / timed(
            torch.no_grad()(lambda: hf(long_prompt, use_cache=True)), device, args.repeats)
        ids = torch.tensor([prompt], device=device)
        result["ttft_hf_s"] = timed(hf_generate(hf, ids, 1), device, args.repeats)
    save()
    # 3) end-to-end generation at each batch size
    result["batches"] = []
    for batch in args.batches:
        batch_prompts = prompts(batch, args.prompt_len)
        row = {"batch": batch}
        runs = timed_runs(ours.generate(batch_prompts.tolist(), args.new_tokens, batch_mode), device, args.repeats)
        row["ours_tokens_per_second"] = batch * args.new_tokens / statistics.median(runs)
        # each run too: batch 128 at 1.3B has read ~15% slower in some runs of unchanged code (docs/inference.md)
        row["ours_tokens_per_second_runs"] = [batch * args.new_tokens / seconds for seconds in runs]
        if hf is not None:
            seconds = timed(hf_generate(hf, batch_prompts.to(device), args.new_tokens), device, args.repeats)
            row["hf_tokens_per_second"] = batch * args.new_tokens / seconds
            row["speedup"] = row["ours_tokens_per_second"] / row["hf_tokens_per_second"]
        log(f"{name}: batch {batch}: ours {row['ours_tokens_per_second']:,.0f} tok/s (runs "
            + ", ".join(f"{rate:,.0f}" for rate in row["ours_tokens_per_second_runs"]) + ")"
            + (f", HF {row['hf_tokens_per_second']:,.0f} tok/s ({row['speedup']:.2f}x)" if hf is not None else ""))
        result["batches"].append(row)
        save()
    # 4) speculative decoding at batch 1
    if args.ks:
        draft_ours = Ours(draft, ours.max_len, args.prefill_graphs)
        result["speculative"] = bench_speculative(ours, draft_ours, prompt, args, device)
    save()


def bench_speculative(target: Ours, draft: Ours, prompt: list[int], args: argparse.Namespace,
                      device: torch.device) -> list[dict]:
    """Per --spec-modes mode and temperature: speculative decoding against plain cached decoding by the engine,
    both with CUDA graphs and our GEMV on CUDA, compiled or not (eager on CPU). One SpeculativeDecoder per k,
    kept across runs (its graphs are reused)."""
    out = []
    for mode in args.spec_modes if device.type == "cuda" else ["eager"]:
        out += bench_speculative_mode(target, draft, prompt, args, device, mode)
    return out


def bench_speculative_mode(target: Ours, draft: Ours, prompt: list[int], args: argparse.Namespace,
                           device: torch.device, mode: str) -> list[dict]:
    n, compiled = args.new_tokens, mode == "compiled"
    plain_mode = {"eager": "eager", "graphs": "graphs-gemv", "compiled": "compiled-gemv"}[mode]
    decoders = {k: SpeculativeDecoder(target.model, draft.model, len(prompt) + n, k=k, compile=compiled)
                for k in args.ks}
    out = []
    for temperature in args.temperatures:
        plain = timed(target.generate([prompt], n, plain_mode, temperature), device, args.repeats)
        draft_plain = timed(draft.generate([prompt], n, plain_mode, temperature), device, args.repeats)
        # greedy: the same tokens as plain decoding, up to where a near-tie's rounding (one row vs k + 1 rows
        # through different kernels) picks the other token
        greedy = target.generate([prompt], n, plain_mode, 0.0)()[0].token_ids if temperature == 0 else None
        rows = []
        for k, decoder in decoders.items():
            stats: list[dict] = []
            outputs: list[list[int]] = []

            def run(decoder: SpeculativeDecoder = decoder, stats: list[dict] = stats, outputs: list[list[int]] = outputs,
                    temperature: float = temperature) -> None:
                tokens, s = decoder.generate(prompt, n, temperature=temperature, seed=len(stats))
                assert len(tokens) == n
                stats.append(s)
                outputs.append(tokens)

            seconds = timed(run, device, args.repeats)
            accepted, proposed = sum(s["accepted"] for s in stats), sum(s["proposed"] for s in stats)
            # a round's time does not depend on what it accepts: in plain steps, it says what acceptance pays
            round_cost = (seconds / statistics.median(s["rounds"] for s in stats)) / (plain / n)
            rows.append({"k": k, "tokens_per_second": n / seconds, "speedup": plain / seconds,
                         "acceptance_rate": accepted / proposed if proposed else 0.0,
                         "tokens_per_target_forward": statistics.mean(s["tokens_per_target_forward"] for s in stats),
                         "round_us": seconds / statistics.median(s["rounds"] for s in stats) * 1e6,
                         "round_cost": round_cost,
                         "acceptance_for_1x": acceptance_for_speedup(1.0, k, round_cost),
                         "acceptance_for_2x": acceptance_for_speedup(2.0, k, round_cost)})
            if greedy is not None:
                rows[-1]["tokens_as_plain_greedy"] = next(
                    (i for i, (a, b) in enumerate(zip(outputs[-1], greedy, strict=True)) if a != b), n)
            log(f"speculative {mode} T={temperature} k={k}: {plain / seconds:.2f}x, acceptance "
                f"{rows[-1]['acceptance_rate']:.3f}")
        out.append({"mode": mode, "plain_tokens_per_second": n / plain, "draft_tokens_per_second": n / draft_plain,
                    "draft_params": draft.model.num_params(), "temperature": temperature, "rows": rows})
    return out


# -- report ---------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = [f"# Inference ({report['device']}, {report['dtype']})", "",
             ("Random weights (speed does not depend on them)" if report["random_weights"] else "Trained checkpoints")
             + f"; prompts: {report['prompts']}; prompt {report['prompt_len']} tokens, {report['new_tokens']} new tokens (greedy), prefill "
             f"{report['prefill_len']} tokens; median of {report['repeats']} runs. Copy bandwidth "
             f"{report['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s.", ""]
    for r in report["presets"]:
        lines += [f"## {r['preset']} ({r['params'] / 1e6:.0f}M parameters)", "",
                  "| decode, batch 1 | tokens/s | of the bandwidth bound | time to first token |", "|---|---|---|---|"]
        for mode, d in r.get("decode", {}).items():
            lines.append(f"| ours, {mode} | {d['tokens_per_second']:,.0f} | {d['fraction_of_bound']:.0%} of "
                         f"{r['bound_tokens_per_second']:,.0f} | {d['ttft_s'] * 1e3:.1f} ms |")
        if "ttft_hf_s" in r:
            lines.append(f"| HF generate | | | {r['ttft_hf_s'] * 1e3:.1f} ms |")
        if "gemv_tiles" in r:
            steps = ", ".join(f"{rule} {us:,.0f} us" for rule, us in sorted(r["gemv_tiles"]["us_per_step"].items(),
                                                                          key=lambda item: item[1]))
            lines += ["", f"One-row GEMV tiles: {r['gemv_tiles']['chosen']} (a decode step's graph under each "
                      f"rule: {steps})."]
        for mode, prof in r.get("profile", {}).items():
            lines += ["", f"Where a decode token's time goes ({mode}, {prof['us_per_token']:,.0f} us per token "
                      "of kernel time):", "", "| us / token | calls / token | share | kernel |", "|---|---|---|---|"]
            lines += [f"| {o['us']:,.1f} | {o['calls']:.1f} | {o['share']:.0%} | `{o['name'][:90]}` |" for o in prof["ops"]]
        if "prefill" not in r:
            continue
        prefill = r["prefill"]
        lines += ["", f"Prefill ({prefill['tokens']} tokens): ours {prefill['ours']:,.0f} tokens/s"
                  + (f", HF {prefill['hf']:,.0f} tokens/s ({prefill['ours'] / prefill['hf']:.2f}x)" if "hf" in prefill else "")
                  + ".", "", f"| batch | ours ({r['batch_mode']}) tokens/s | HF generate tokens/s | ours / HF |", "|---|---|---|---|"]
        for b in r.get("batches", []):
            hf = f"{b['hf_tokens_per_second']:,.0f} | {b['speedup']:.2f}x" if "speedup" in b else "– | –"
            lines.append(f"| {b['batch']} | {b['ours_tokens_per_second']:,.0f} | {hf} |")
        for s in r.get("speculative", []):
            lines += ["", f"Speculative decoding, batch 1, temperature {s['temperature']}, {s.get('mode', 'eager')}: plain "
                      f"{s['plain_tokens_per_second']:,.0f} tok/s, draft ({s['draft_params'] / 1e6:.1f}M) alone "
                      f"{s['draft_tokens_per_second']:,.0f} tok/s.", "",
                      "| k | tokens/s | speed-up | acceptance | tokens / target forward | round: us (plain steps) "
                      "| acceptance for 1x / 2x |", "|---|---|---|---|---|---|---|"]
            for row in s["rows"]:
                needed = " / ".join("–" if a is None else f"{a:.2f}" for a in (row["acceptance_for_1x"],
                                                                              row["acceptance_for_2x"]))
                lines.append(f"| {row['k']} | {row['tokens_per_second']:,.0f} | {row['speedup']:.2f}x | "
                             f"{row['acceptance_rate']:.3f} | {row['tokens_per_target_forward']:.2f} | "
                             f"{row['round_us']:,.0f} ({row['round_cost']:.2f}) | {needed} |")
            if "tokens_as_plain_greedy" in s["rows"][0]:
                same = ", ".join(f"{row['tokens_as_plain_greedy']} (k = {row['k']})" for row in s["rows"])
                lines += ["", f"Tokens equal to plain greedy decoding's before the first difference, of "
                          f"{report['new_tokens']}: {same}."]
        lines.append("")
    if report["random_weights"]:
        lines.append("Acceptance rates with random weights are chance agreement between unrelated models.")
    return "\n".join(lines) + "\n"


def log(message: str) -> None:
    print(message, flush=True)


def parse_args() -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:N")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--presets", default="gpt2-small-124m,gpt-350m,gpt-1.3b", help="configs/train/<name> model shapes")
    parser.add_argument("--batches", type=ints, default=[1, 8, 32, 128])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill-len", type=int, default=1024)
    parser.add_argument("--ks", type=lambda s: ints(s) if s else [], default=[2, 4, 8],
                        help="speculative draft lengths ('' skips speculative decoding)")
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--draft-d-model", type=int, default=256)
    parser.add_argument("--draft-heads", type=int, default=4)
    parser.add_argument("--target-checkpoint", type=Path, help="trained target (replaces --presets)")
    parser.add_argument("--draft-checkpoint", type=Path, help="trained draft on the same tokenizer")
    parser.add_argument("--prompt-text", type=Path, help="prompts from this text file (default: random tokens)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for --prompt-text")
    parser.add_argument("--spec-modes", type=lambda s: s.split(","), default=["compiled"],
                        help="speculative decoding on CUDA: graphs and/or compiled (each against plain decoding "
                             "in the same mode)")
    parser.add_argument("--temperatures", type=floats, default=[1.0], help="speculative sampling temperatures (0: greedy)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--batch-mode", choices=list(MODES), default="graphs-gemv",
                        help="engine mode of the batch runs on CUDA (compiled: one compilation per batch size)")
    parser.add_argument("--modes", type=lambda s: s.split(","), help=f"batch-1 decode modes, of {list(MODES)} "
                        "(default: all but the kernels ones that exist on the device)")
    parser.add_argument("--prefill-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="engines replay prefill chunks as CUDA graphs too (EngineConfig.prefill_graphs)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decode (minutes of compiling per batch size)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list the N most expensive kernels of a batch-1 decode step (torch.profiler)")
    parser.add_argument("--profile-modes", type=lambda s: s.split(","), default=["kernels-gemv"],
                        help="engine modes to profile on CUDA (kernels: compiled without graphs, -gemv: our GEMV)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--results-name", help="results file stem (default: inference, inference_trained with "
                                               "checkpoints, inference_quick with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="cpu-tiny, small sizes, 1 thread: a smoke test of the script, not a measurement")
    args = parser.parse_args()
    unknown = (set(args.modes or []) - MODES.keys() | set(args.profile_modes) - MODES.keys()
               | set(args.spec_modes) - {"graphs", "compiled"})
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    if (args.prompt_text is None) != (args.tokenizer is None):
        parser.error("--prompt-text and --tokenizer go together")
    if args.quick:
        args.presets, args.batches, args.prompt_len, args.new_tokens = "cpu-tiny", [1, 4], 16, 16
        args.prefill_len, args.ks, args.repeats, args.draft_d_model = 64, [2], 1, 64
        args.threads = args.threads or 1  # tiny ops: a thread pool only adds overhead (and noise on busy cores)
    return args


def models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[str, TransformerLM, TransformerLM]]:
    """(name, target, draft) per preset (random weights), or the two checkpoints."""
    if args.target_checkpoint or args.draft_checkpoint:
        if not (args.target_checkpoint and args.draft_checkpoint):
            raise SystemExit("give both --target-checkpoint and --draft-checkpoint")
        target, draft = (load_trained_model(p, device).model.to(dtype).eval()
                         for p in (args.target_checkpoint, args.draft_checkpoint))
        return [(str(args.target_checkpoint), target, draft)]
    out = []
    for preset in args.presets.split(","):
        config = model_config(preset, args)
        torch.manual_seed(args.seed)
        target = TransformerLM(config, device=device, dtype=dtype).eval()
        draft_config = dataclasses.replace(config, n_layers=args.draft_layers, d_model=args.draft_d_model,
                                           n_heads=args.draft_heads, n_kv_heads=None, d_ff=None)
        out.append((preset, target, TransformerLM(draft_config, device=device, dtype=dtype).eval()))
    return out


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    # one compiled decode step per engine (batch size): more than dynamo's default 8 recompiles of the step
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    if not args.no_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            log("transformers is not installed: skipping the Hugging Face baseline")
            args.no_hf = True
    bandwidth = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 26))
    log(f"copy bandwidth {bandwidth / 1e9:,.1f} GB/s")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "dtype": str(dtype).removeprefix("torch."), "random_weights": args.target_checkpoint is None,
              "prompts": "random tokens" if args.prompt_text is None else f"windows of {args.prompt_text.name}",
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "prefill_len": args.prefill_len,
              "repeats": args.repeats, "prefill_graphs": args.prefill_graphs, "bandwidth_bytes_per_s": bandwidth,
              "presets": [], "run_info": run_info()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.results_name or ("inference_quick" if args.quick else
                                 "inference" if args.target_checkpoint is None else "inference_trained")

    def save() -> None:
        """Results so far: a run cut short (a time limit) keeps every finished section."""
        write_text_atomic(RESULTS / f"{stem}.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(RESULTS / f"{stem}.md", markdown(report))

    for name, target, draft in models(args, device, dtype):
        report["presets"].append({"preset": name, "params": target.num_params(), "config": dataclasses.asdict(target.config)})
        bench_preset(report["presets"][-1], target, draft, args, device, dtype, bandwidth, save)
    print(markdown(report))


if __name__ == "__main__":
    main()
