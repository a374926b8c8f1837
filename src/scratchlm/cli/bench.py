"""`scratchlm bench model`: forward/backward/optimizer times, throughput, MFU and memory of a preset's model."""

from __future__ import annotations

import argparse

from scratchlm.config import add_dataclass_args, build_config, collect_dataclass_args


def register(parser: argparse.ArgumentParser) -> None:
    from scratchlm.profiling import BenchConfig  # imports torch, as `train` does

    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    help_ = ("time a training step of a preset's model phase by phase (fp32/bf16, eager/compiled): tokens/s, "
             "TFLOP/s, MFU, peak memory; optional profiler trace and CUDA memory snapshot")
    model = verbs.add_parser("model", help=help_, description=help_)
    add_dataclass_args(model, BenchConfig)
    model.set_defaults(func=model_cmd)


def model_cmd(args: argparse.Namespace) -> int:
    from scratchlm.profiling import BenchConfig, format_table, run_model_bench

    # build_config directly, not config_from_args: this stage's --preset (BenchConfig.train_preset) names a
    # training preset to measure, not a preset of BenchConfig itself.
    cfg = build_config(BenchConfig, **collect_dataclass_args(args, BenchConfig))
    result = run_model_bench(cfg)
    for label, table in result.top_ops.items():
        print(f"== top ops, {label} (trace in {result.run_dir})\n{table}")
    for label, breakdown in result.memory.items():
        print(f"== memory, {label}\n{breakdown.summary()}")
    print(format_table(result.record))
    print(f"-> {result.run_dir / 'bench.json'}")
    return 0
