"""`scratchlm serve`: an OpenAI-compatible HTTP server (completions, chat, streaming) with a chat page at /."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from scratchlm.inference.engine import EngineConfig
from scratchlm.inference.loading import load_for_inference

log = logging.getLogger(__name__)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the run folder's tokenizer/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default: 8)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503s (default: 64)")
    parser.add_argument("--max-len", type=int, help="positions per sequence, prompt + completion (default: the context)")
    parser.add_argument("--sync-every", type=int, default=4, help="decode steps per host read = streaming granularity (default: 4)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step (CUDA only: fused kernels, slow first requests)")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="launch decode kernels one by one instead of replaying CUDA graphs (debugging)")
    parser.add_argument("--no-tune-gemv", dest="tune_gemv", action="store_false",
                        help="skip timing the batch-1 decode step's GEMV tiles at start (CUDA; keeps the default tiles)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16")
    parser.add_argument("--model-name", help="the model id clients send (default: the run folder's name)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish on Ctrl-C/SIGTERM (default: 30)")
    parser.set_defaults(func=serve_cmd)


def serve_cmd(args: argparse.Namespace) -> int:
    import uvicorn

    from scratchlm.serve.app import ServeConfig, build_app

    checkpoint = Path(args.checkpoint)
    name = args.model_name or (checkpoint if checkpoint.is_dir() else checkpoint.parent).resolve().name
    config = ServeConfig(host=args.host, port=args.port, max_queue=args.max_queue, model_name=name,
                         shutdown_timeout=args.shutdown_timeout)
    engine_config = EngineConfig(max_slots=args.max_batch, max_len=args.max_len, sync_every=args.sync_every,
                                 compile=args.compile, cuda_graphs=args.cuda_graphs, tune_gemv=args.tune_gemv)
    model, tokenizer = load_for_inference(checkpoint, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    app = build_app(model, tokenizer, engine_config, config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                           timeout_graceful_shutdown=config.shutdown_timeout))
    # uvicorn stops accepting on SIGINT/SIGTERM, lets in-flight requests finish (up to the timeout), runs the
    # app's shutdown (the engine thread stops), then re-raises the signal under the handlers it found: these
    # no-ops make that clean stop exit 0 instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    log.info("serving %s on http://%s:%d (chat page at /)", name, config.host, config.port)
    server.run()
    return 0
