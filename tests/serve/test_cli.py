"""`scratchlm serve` as a real process (answers, then SIGINT/SIGTERM: a clean exit 0 after finishing the
request in flight) and `scratchlm chat` driven through its prompt."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from scratchlm.cli.main import main
from scratchlm.inference.engine import Engine
from scratchlm.serve.chat_format import format_chat
from tests.serve.conftest import expected_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_stops_cleanly(tiny_run):
    """SIGTERM; SIGINT takes the same path (uvicorn's handler, then our no-op instead of the default)."""
    run, model, tok = tiny_run
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scratchlm", "serve", "--checkpoint", str(run), "--port", str(port),
                             "--device", "cpu", "--sync-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.1)
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == run.name
        # a streamed request is in flight when the signal comes: it is finished, then the process exits 0
        body = {"model": run.name, "prompt": "The dog", "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            events = [first, *(line for line in lines if line)]
        assert events[-1] == "data: [DONE]"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_chat_repl(tiny_run, monkeypatch, capsys):
    """Two turns with the history kept, /reset, an interrupted reply (Ctrl-C during decoding), /quit."""
    run, model, tok = tiny_run
    lines = iter(["Hello there", "And the dog?", "/reset", "Hello there", "Stop me", "Hello there", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    steps = {"n": 0}
    real_step = Engine.step

    def step(self):
        steps["n"] += 1
        if threading.current_thread() is threading.main_thread() and steps.get("interrupt"):
            steps["interrupt"] = False
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Engine, "step", step)
    real_format = format_chat

    def spy(messages, tokenizer=None):  # interrupt the reply to "Stop me"
        if messages[-1]["content"] == "Stop me":
            steps["interrupt"] = True
        return real_format(messages, tokenizer)

    monkeypatch.setattr("scratchlm.cli.chat.format_chat", spy)
    assert main(["chat", "--checkpoint", str(run), "--temperature", "0", "--max-tokens", "12", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    replies = [line.removeprefix("model>") for line in out.splitlines() if line.startswith("model>")]
    first_text, stop = format_chat([{"role": "user", "content": "Hello there"}])
    first = expected_text(model, tok, first_text, 12, stop)
    second_text, _ = format_chat([{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first.strip()},
                                  {"role": "user", "content": "And the dog?"}])
    assert replies[0] == first and replies[1] == expected_text(model, tok, second_text, 12, stop)
    assert replies[2] == first  # /reset forgot the first exchange
    assert replies[3].endswith("[stopped]") and "(new conversation)" in out
    # the conversation after the interrupted reply goes on, with the stopped (empty) reply in its history
    history = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first.strip()},
               {"role": "user", "content": "Stop me"}, {"role": "assistant", "content": ""},
               {"role": "user", "content": "Hello there"}]
    assert replies[4] == expected_text(model, tok, format_chat(history)[0], 12, stop)
