"""A tiny trained-tokenizer + random-model run folder, and real uvicorn servers on free loopback ports."""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from scratchlm.config import to_dict
from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.tokenizer import Tokenizer, train_bpe
from scratchlm.train.checkpoint import save_checkpoint
from scratchlm.train.config import TrainConfig

EOT = "<|endoftext|>"
TEXT = ("Once upon a time there was a little dog. The dog liked to run in the park with the other dogs. "
        "One day the dog saw a cat and they became friends. ")


def missing(reason: str) -> None:
    """Under CI=true a missing test dependency fails (CI must run what it claims to test); elsewhere it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, install: str):
    """The module, or `missing` with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed: {install}")


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model: a torch thread pool only adds overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run folder, model, tokenizer): a 300-token BPE and a 2-layer random model of context 128."""
    tmp = tmp_path_factory.mktemp("serve_run")
    (tmp / "text.txt").write_text(TEXT * 30, encoding="utf-8")
    tokenizer = Tokenizer(*train_bpe(tmp / "text.txt", 300, [EOT], num_workers=1, progress=False), [EOT])
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=128, d_model=32, n_layers=2, n_heads=4)
    torch.manual_seed(0)
    model = fit_briefly(TransformerLM(config), tokenizer.encode(TEXT * 4)).eval()
    run = tmp / "run"
    tokenizer.save(run / "tokenizer")
    save_checkpoint(run / "checkpoint.pt", model=model, optimizer=None, step=0, config=to_dict(TrainConfig(model=config)),
                    tokenizer_sha256=tokenizer.hash)
    return run, model, tokenizer


def fit_briefly(model: TransformerLM, ids: list[int], steps: int = 50) -> TransformerLM:
    """A few AdamW steps on the text, so that greedy replies are words (readable failures, real stop strings)
    rather than random bytes. One thread: for this size a pool only adds overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (8,), generator=gen)
        batch = torch.stack([data[s : s + 65] for s in starts])  # (8, 65)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model


def expected_text(model, tokenizer, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> str:
    """What one greedy request gets from an engine of its own (the reference for the server's answers)."""
    engine = Engine(model, EngineConfig(max_slots=1), tokenizer)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop,
                            stop_token_ids=(tokenizer.special_ids[EOT],))
    return engine.generate([tokenizer.encode(prompt)], params)[0].text


def slow_down(app, seconds: float) -> None:
    """Make every engine step of this app's worker take at least `seconds` (streaming becomes observable)."""
    engine = app.state.worker.engine
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    engine.step = slow_step


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def make_app(tiny_run):
    """make_app(max_batch=4, max_queue=8, sync_every=2) -> a fresh app on the tiny model."""
    from scratchlm.serve.app import ServeConfig, build_app

    _, model, tokenizer = tiny_run

    def make(max_batch: int = 4, max_queue: int = 8, sync_every: int = 2):
        return build_app(model, tokenizer, EngineConfig(max_slots=max_batch, sync_every=sync_every),
                         ServeConfig(max_queue=max_queue, model_name="tiny"))
    return make
