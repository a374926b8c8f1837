"""The HTTP API through real clients (the `openai` package and httpx) against a real uvicorn server: answers
equal the engine's own greedy output, streaming follows OpenAI's chunk format, errors are 4xx JSON,
a full queue is a 503, disconnects free their slot, many clients at once are all answered."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from scratchlm.serve.chat_format import format_chat
from tests.serve.conftest import expected_text, require, running, slow_down

openai = require("openai", "pip install openai")


@pytest.fixture(scope="module")
def server(tiny_run):
    """(base URL, model, tokenizer) of one server shared by the read-only tests of this module."""
    from scratchlm.inference.engine import EngineConfig
    from scratchlm.serve.app import ServeConfig, build_app

    _, model, tokenizer = tiny_run
    app = build_app(model, tokenizer, EngineConfig(max_slots=4, sync_every=3), ServeConfig(max_queue=32, model_name="tiny"))
    with running(app) as url:
        yield url, model, tokenizer


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_completions_and_logprobs(server):
    url, model, tok = server
    response = client(url).completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=0,
                                              logprobs=0)
    choice = response.choices[0]
    assert choice.text == expected_text(model, tok, "Once upon a time", 20)
    assert choice.finish_reason in ("length", "stop") and response.usage.prompt_tokens == len(tok.encode("Once upon a time"))
    assert len(choice.logprobs.token_logprobs) == response.usage.completion_tokens
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)


def test_top_logprobs_completions_and_chat(server):
    """Alternatives per position, best first; under greedy decoding the chosen token is the first of them."""
    url, _, tok = server
    response = client(url).completions.create(model="tiny", prompt="The dog", max_tokens=8, temperature=0, logprobs=3)
    lp = response.choices[0].logprobs
    assert len(lp.top_logprobs) == len(lp.tokens) == len(lp.token_logprobs)
    for token, chosen, alternatives in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        values = list(alternatives.values())
        assert 1 <= len(alternatives) <= 3 and values == sorted(values, reverse=True)
        assert alternatives.get(token) == pytest.approx(chosen) and values[0] == pytest.approx(chosen)
    chat = client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    for entry in chat.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert bytes(entry.top_logprobs[1].bytes).decode("utf-8", "replace") == entry.top_logprobs[1].token
    r = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_chat_plain_and_streamed_agree(server):
    url, model, tok = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the dog."}]
    text, stop = format_chat(messages)
    expected = expected_text(model, tok, text, 30, stop)
    plain = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
    assert plain.choices[0].message.content == expected and plain.choices[0].message.role == "assistant"
    chunks = list(client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0,
                                                       stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_streamed_completion_wire_format(server):
    url, model, tok = server
    body = {"model": "tiny", "prompt": "The dog", "max_tokens": 12, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected_text(model, tok, "The dog", 12)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_models_health_and_page(server):
    url, _, _ = server
    assert [m.id for m in client(url).models.list().data] == ["tiny"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 4 and health["max_queue"] == 32
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "<script>" in page.text and "/v1/chat/completions" in page.text


@pytest.mark.parametrize(("body", "status", "param"), [
    (b'{"model": "tiny", "prompt": ', 400, None),  # malformed JSON
    ({"model": "tiny", "prompt": "hi", "max_tokns": 5}, 400, "max_tokns"),  # unknown field
    ({"model": "tiny", "prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "prompt": "the dog " * 200}, 400, "prompt"),  # longer than the context
    ({"model": "tiny", "prompt": "x" * 100_000}, 400, "prompt"),  # refused before encoding
    ({"model": "tiny", "prompt": "hi", "max_tokens": 500}, 400, "max_tokens"),  # beyond the context
    ({"model": "tiny", "prompt": [1, 2, 99999]}, 400, "prompt"),
    ({"model": "tiny", "prompt": "hi", "logprobs": 6}, 400, "logprobs"),  # OpenAI's limit: 5
    ({"model": "other", "prompt": "hi"}, 404, "model"),
])
def test_bad_completion_requests_get_json_errors(server, body, status, param):
    url, _, _ = server
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{url}/v1/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] and (param is None or error["param"] == param)


def test_bad_chat_requests_and_unknown_paths(server):
    url, _, _ = server
    bad = [{"model": "tiny", "messages": []}, {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
           {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000},
           {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": True, "n": 2},
           {"model": "tiny", "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}]
    for body in bad:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (body, r.text)
    r = httpx.get(f"{url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.BadRequestError):
        client(url).completions.create(model="tiny", prompt="hi", max_tokens=10_000)
    assert httpx.get(f"{url}/health").json()["in_flight"] == 0  # nothing leaked


def test_many_clients_at_once(server):
    """16 concurrent clients on 4 slots: every answer equals that prompt's single-request output."""
    url, model, tok = server
    prompts = [f"The dog number {i} saw" for i in range(16)]

    def ask(prompt: str) -> str:
        return client(url).completions.create(model="tiny", prompt=prompt, max_tokens=10 + len(prompt) % 7,
                                              temperature=0).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [expected_text(model, tok, p, 10 + len(p) % 7) for p in prompts]
    assert httpx.get(f"{url}/health").json()["in_flight"] == 0


def test_sampled_n_choices_are_seeded(server):
    url, _, _ = server
    kwargs = dict(model="tiny", prompt="The cat", max_tokens=8, temperature=2.0, n=3, seed=11)  # hot: 3 equal texts would be a bug
    first, again = (client(url).completions.create(**kwargs) for _ in range(2))
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1 and [c.index for c in first.choices] == [0, 1, 2]


def test_full_queue_gets_503_and_memory_stays_fixed(make_app):
    """1 slot + 1 queue place, engine blocked: the third request is refused at once, the first two finish."""
    app = make_app(max_batch=1, max_queue=1)
    gate = threading.Event()
    engine = app.state.worker.engine
    step, cache = engine.step, engine.cache.k[0].data_ptr()
    engine.step = lambda: gate.wait(10) and step()
    with running(app) as url:
        body = {"model": "tiny", "prompt": "The dog", "max_tokens": 5, "temperature": 0}
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(httpx.post, f"{url}/v1/completions", json=body, timeout=30) for _ in range(2)]
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/health").json()["in_flight"] < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
            assert refused.status_code == 503 and "capacity" in refused.json()["error"]["message"]
            gate.set()
            assert [f.result().status_code for f in pending] == [200, 200]
    assert engine.cache.k[0].data_ptr() == cache  # the cache is the one allocated at start


def test_disconnect_frees_the_slot(make_app):
    app = make_app(max_batch=1, max_queue=0, sync_every=1)
    slow_down(app, 0.05)  # 100 tokens would take > 5 s
    with running(app) as url:
        body = {"model": "tiny", "prompt": "The dog", "max_tokens": 100, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        deadline = time.monotonic() + 3
        while httpx.get(f"{url}/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(f"{url}/health").json()
        assert health["in_flight"] == 0 and health["running"] == 0
