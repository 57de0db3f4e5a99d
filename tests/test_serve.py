"""psyduck serve: OpenAI's client, a real browser and schemathesis against a tiny trained run.

One tiny run is trained once for the whole file; servers run in-process (uvicorn in a thread, on a
free port of 127.0.0.1) so the tests talk real HTTP without paying for a model load each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import uvicorn
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.testclient import TestClient

from psyduck.serve import routes
from psyduck.serve.app import create_app
from psyduck.serve.errors import ApiError
from psyduck.serve.prompts import encode_prompts
from psyduck.serve.schemas import CompletionRequest
from psyduck.serve.state import ServeState
from psyduck.generate import TextStream

RUN_NAME = "tiny-run"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WORDS = (
    "the a model learns to predict next token from text data train loss value small large attention "
    "layer head block weight gradient step batch window byte unicode café 東京"
).split()


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny run, its model loaded once, servers on free ports
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A 5-step run of the tiny preset on a small made-up corpus (the model's text is gibberish)."""
    from psyduck.config import get_preset
    from psyduck.data.prepare import prepare
    from psyduck.train import train

    root = tmp_path_factory.mktemp("serve")
    rng = random.Random(0)
    text = "\n\n".join(" ".join(rng.choices(WORDS, k=40)) for _ in range(300))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    prepare("text", "bpe-300", root / "data", path=str(root / "corpus.txt"), show_progress=False)
    cfg = get_preset("tiny").replace(
        {"data.path": str(root / "data"), "max_iters": 5, "eval_interval": 5, "eval_iters": 1, "sample_tokens": 0}
    )
    train(cfg, root / RUN_NAME, progress=False)
    return root / RUN_NAME


@pytest.fixture(scope="session")
def loaded(run_dir):
    from psyduck.runs import load_run

    return load_run(run_dir)


def make_app(run_dir, loaded, **kwargs):
    model, tok = loaded
    return create_app(run_dir, model=model, tokenizer=tok, **kwargs)


@contextlib.contextmanager
def serving(app):
    """Run `app` with uvicorn in a thread on a free port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def base_url(run_dir, loaded):
    """The main server: a generous cap (the browser's Stop test needs a long generation)."""
    with serving(make_app(run_dir, loaded, max_tokens_cap=4096, max_concurrency=4, max_queue=32)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def get_json(url: str, path: str, timeout: float = 10) -> dict:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_idle(url: str, timeout: float = 10) -> None:
    """Wait until the server reports no generation running or queued."""
    wait_health(url, {"active": 0, "queued": 0}, timeout)


# ---------------------------------------------------------------------------------------------
# The real OpenAI client
# ---------------------------------------------------------------------------------------------

def test_openai_client_lists_the_model_and_completes(client, loaded):
    _, tok = loaded
    assert [m.id for m in client.models.list().data] == [RUN_NAME]
    assert client.models.retrieve(RUN_NAME).id == RUN_NAME

    prompt = "the model learns"
    out = client.completions.create(model=RUN_NAME, prompt=prompt, max_tokens=12, extra_body={"ignore_eos": True})
    assert out.object == "text_completion" and out.model == RUN_NAME and out.id.startswith("cmpl-")
    assert len(out.choices) == 1 and isinstance(out.choices[0].text, str)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(tok.encode(prompt))
    assert out.usage.completion_tokens == 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12

    # two prompts x n=2: four choices, indexed prompt-major; the prompt counted once per prompt
    out = client.completions.create(model=RUN_NAME, prompt=["the", "a model"], n=2, max_tokens=3, temperature=0.5)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.usage.prompt_tokens == len(tok.encode("the")) + len(tok.encode("a model"))
    assert 4 <= out.usage.completion_tokens <= 12

    # echo, token-id prompts, and top_k as an extension
    ids = tok.encode("the model")
    out = client.completions.create(model=RUN_NAME, prompt=ids, max_tokens=4, echo=True, extra_body={"top_k": 5})
    assert out.choices[0].text.startswith("the model")


def test_openai_stream_is_well_formed(client, base_url):
    stream = client.completions.create(
        model=RUN_NAME, prompt="the loss", max_tokens=10, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices]
    assert 2 <= len(content) <= 10  # the first token at once, then up to --stream-interval's worth each (test_serve_pacing.py)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    assert [c.choices[0].finish_reason for c in content] == [None] * (len(content) - 1) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10

    # the same request, raw: server-sent events ending with [DONE]
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "the", "max_tokens": 4, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    body = resp.read().decode()
    conn.close()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and body.endswith("data: [DONE]\n\n")
    assert all("choices" in json.loads(e[6:]) for e in events[:-1])


def test_seed_and_temperature_give_repeatable_text(client):
    def text(**kw):
        kw = {"model": RUN_NAME, "prompt": "a small model", "max_tokens": 20, "extra_body": {"ignore_eos": True}, **kw}
        return [c.text for c in client.completions.create(**kw).choices]

    assert text(seed=7, temperature=0.9) == text(seed=7, temperature=0.9)
    assert text(seed=7, temperature=0.9, n=2) == text(seed=7, temperature=0.9, n=2)
    assert text(seed=7, temperature=0.9) != text(seed=8, temperature=0.9)
    assert text(temperature=0) == text(temperature=0)  # greedy needs no seed
    streamed = client.completions.create(model=RUN_NAME, prompt="a small model", max_tokens=20, seed=7, temperature=0.9,
                                         stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text(seed=7, temperature=0.9)[0]


def test_stop_strings_end_the_completion_before_them(client):
    greedy = {"model": RUN_NAME, "prompt": "the model", "max_tokens": 30, "temperature": 0, "extra_body": {"ignore_eos": True}}
    full = client.completions.create(**greedy).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    out = client.completions.create(**greedy, stop=[stop, "never-seen-xyz"]).choices[0]
    assert out.text == expected and out.finish_reason == "stop"
    streamed = list(client.completions.create(**greedy, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_twenty_concurrent_streams_all_complete(client, base_url):
    def one(i: int) -> tuple[int, int, str | None]:
        stream = client.completions.create(
            model=RUN_NAME, prompt=f"the {WORDS[i]}", max_tokens=24, temperature=1.0, seed=i, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True, "top_k": 50},
        )
        events, usage, finish = 0, None, None
        for chunk in stream:
            if chunk.choices:
                events += 1
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return events, usage, finish

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(1 <= events <= 24 for events, _, _ in results)  # tokens merged over --stream-interval
    assert [(usage, finish) for _, usage, finish in results] == [(24, "length")] * 20
    wait_idle(base_url)


# ---------------------------------------------------------------------------------------------
# Bad requests and access
# ---------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ({"max_tokens": 5}, 400, "prompt", None),  # no prompt
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens", None),
    ({"prompt": "x", "max_tokens": -3}, 400, "max_tokens", None),
    ({"prompt": "x", "max_tokens": 65}, 400, "max_tokens", "max_tokens_too_large"),
    ({"prompt": "x", "temperature": -0.1}, 400, "temperature", None),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ({"prompt": "x", "top_p": 1.01}, 400, "top_p", None),
    ({"prompt": "the " * 40}, 400, "prompt", "context_length_exceeded"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"prompt": 5}, 400, "prompt", None),
    ({"prompt": []}, 400, "prompt", None),
    ({"prompt": [[]]}, 400, "prompt", None),
    ({"prompt": [10**6]}, 400, "prompt", None),
    ({"prompt": [1, "a"]}, 400, "prompt", None),  # the first element picks the shape; the rest must match
    ({"prompt": ["a", 1]}, 400, "prompt", None),
    ({"prompt": [[1], "a"]}, 400, "prompt", None),
    ({"prompt": "x", "n": 0}, 400, "n", None),
    ({"prompt": ["a"] * 9, "n": 2}, 400, "n", None),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"prompt": "x", "top_k": -2}, 400, "top_k", None),
    ({"prompt": "x", "top_k": 0}, 400, "top_k", None),  # refused, as `psyduck generate --top-k 0` is
    ({"prompt": "the " * 100_000}, 400, "prompt", "context_length_exceeded"),  # refused before tokenizing
    ({"prompt": "x", "seed": 2**70}, 400, "seed", None),
    ({"prompt": "x", "logprobs": 21}, 400, "logprobs", None),
    ({"prompt": "x", "best_of": 2}, 400, "best_of", "unsupported_parameter"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens", None),
]


@pytest.fixture(scope="module")
def local(run_dir, loaded):
    with TestClient(make_app(run_dir, loaded, max_tokens_cap=64, max_prompt_tokens=32)) as c:
        yield c


@pytest.mark.parametrize(("body", "status", "param", "code"), BAD_REQUESTS, ids=[str(b)[:40] for b, *_ in BAD_REQUESTS])
def test_bad_requests_get_openai_style_errors(local, body, status, param, code):
    r = local.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param and err["code"] == code


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b'{"prompt": "x", "temperature": NaN}', b""])
def test_malformed_bodies_are_400(local, raw):
    r = local.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_framework_errors_have_the_openai_shape_too(local):
    r = local.get("/v1/nowhere")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = local.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_openai_client_raises_its_usual_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=RUN_NAME, prompt="x", max_tokens=5000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci-002", prompt="x")


def test_api_key_is_checked_as_a_bearer_token(run_dir, loaded):
    with TestClient(make_app(run_dir, loaded, api_key="sekret")) as c:
        body = {"prompt": "the", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sekret"}):
            r = c.post("/v1/completions", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        assert c.get(f"/api/runs/{RUN_NAME}/metrics").status_code == 401
        ok = {"Authorization": "Bearer sekret"}
        assert c.post("/v1/completions", json=body, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # no secrets there
        assert c.get("/api/info").status_code == 401  # the model's size and the run's name are the key's
        assert c.get("/api/info", headers=ok).json()["auth"] is True


def test_a_huge_body_gets_413_at_once_while_health_answers(base_url):
    """50 MB claimed and sent: refused on its Content-Length, in OpenAI's shape, within a second."""
    body = b'{"prompt": "' + b"the " * (50 * 10**6 // 4) + b'"}'
    raw = socket.create_connection(("127.0.0.1", int(base_url.rsplit(":", 1)[1])), timeout=5)
    t0 = time.monotonic()
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))

    def send_body() -> None:
        with contextlib.suppress(OSError):  # the server closes the connection behind its answer
            raw.sendall(body)

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    assert get_json(base_url, "/health", timeout=1)["status"] == "ok"  # while the body is on its way
    response = http.client.HTTPResponse(raw)
    response.begin()
    err = json.loads(response.read())["error"]
    assert time.monotonic() - t0 < 1, "the 413 must come before the body is read"
    assert response.status == 413 and response.getheader("Connection") == "close"
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "request_too_large"
    assert "--max-body-mb" in err["message"]
    sender.join(10)
    raw.close()
    assert get_json(base_url, "/health")["status"] == "ok"


def test_body_limit_holds_for_bodies_without_a_length(run_dir, loaded):
    def chunks(body: bytes):  # an iterator: sent chunked, with no Content-Length
        yield from (body[i : i + 300] for i in range(0, len(body), 300))

    with TestClient(make_app(run_dir, loaded, max_body_mb=0.001)) as c:  # 1000 bytes
        small = json.dumps({"prompt": "the", "max_tokens": 2}).encode()
        assert c.post("/v1/completions", content=chunks(small), headers={"Content-Type": "application/json"}).status_code == 200
        big = json.dumps({"prompt": "the " * 400, "max_tokens": 2}).encode()
        for content in (big, chunks(big)):
            r = c.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------
# Load: slots, the queue, disconnects, a free event loop
# ---------------------------------------------------------------------------------------------

def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # generation has started
    return conn, resp


def test_queue_limit_and_disconnects_free_their_slot(run_dir, loaded):
    long = {"prompt": "the", "max_tokens": 100_000, "ignore_eos": True}  # minutes of work if never stopped
    with serving(make_app(run_dir, loaded, max_tokens_cap=100_000, max_concurrency=1, max_queue=1)) as url:
        conn, resp = open_stream(url, long)
        t0 = time.monotonic()
        assert get_json(url, "/health")["active"] == 1
        assert time.monotonic() - t0 < 2, "the event loop must answer while the model works"

        waiter = ThreadPoolExecutor(1)
        queued = waiter.submit(
            lambda: openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).completions.create(
                model=RUN_NAME, prompt="a", max_tokens=3)
        )
        deadline = time.monotonic() + 10
        while get_json(url, "/health")["queued"] != 1:
            assert time.monotonic() < deadline and not queued.done()
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as e:  # one running, one waiting: the third is refused
            openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).completions.create(model=RUN_NAME, prompt="b")
        assert e.value.status_code == 429 and e.value.body["code"] == "server_overloaded"

        resp.close()
        conn.close()  # the streaming client goes away: its slot goes to the queued request
        assert queued.result(timeout=20).usage.completion_tokens >= 1
        waiter.shutdown()
        wait_idle(url)

        # non-streaming clients that hang up, waiting in line or mid-generation, give up their place
        running = post_and_wait(url, long, until={"active": 1, "queued": 0})
        waiting = post_and_wait(url, long, until={"active": 1, "queued": 1})
        waiting.close()
        wait_health(url, {"active": 1, "queued": 0})
        running.close()
        wait_idle(url)


def wait_health(url: str, expected: dict, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (h := get_json(url, "/health")) and any(h[k] != v for k, v in expected.items()):
        assert time.monotonic() < deadline, f"/health says {h}, expected {expected}"
        time.sleep(0.05)


def post_and_wait(url: str, body: dict, until: dict) -> socket.socket:
    """POST a completion on a raw socket (never read), then wait until /health shows `until`."""
    raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    payload = json.dumps(body).encode()
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    wait_health(url, until)
    return raw


def test_run_metrics_follow_a_live_metrics_file(loaded, tmp_path):
    live = tmp_path / "live-run"
    live.mkdir()
    metrics = live / "metrics.jsonl"
    with TestClient(make_app(live, loaded)) as c:
        assert c.get("/api/runs/live-run/metrics").json()["rows"] == []  # no evaluation yet
        metrics.write_text(json.dumps({"step": 0, "train_loss": 5.0, "val_loss": 5.1}) + "\n")
        assert [r["step"] for r in c.get("/api/runs/live-run/metrics").json()["rows"]] == [0]
        with open(metrics, "a") as f:  # a diverged evaluation, then a line still being written
            f.write('{"step": 10, "train_loss": NaN, "val_loss": 4.0}\n{"step": 20, "tra')
        rows = c.get("/api/runs/live-run/metrics").json()["rows"]
        assert [r["step"] for r in rows] == [0, 10] and rows[1]["train_loss"] is None
        assert c.get("/api/runs/other/metrics").status_code == 404
        assert c.get("/runs/live-run").headers["content-type"].startswith("text/html")


# ---------------------------------------------------------------------------------------------
# The schema, fuzzed
# ---------------------------------------------------------------------------------------------

def test_schemathesis_finds_no_server_errors(run_dir, loaded):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    with serving(make_app(run_dir, loaded, max_tokens_cap=8)) as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        operations = [op.ok() for op in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/models", "/v1/completions", "/health"}
        tested = set()
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                examples = 25 if op.path == "/v1/completions" else 8

                @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def check(case):
                    response = case.call(base_url=url, timeout=30)
                    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r}: {response.text[:300]}"
                    if response.status_code >= 400:  # every error of ours has OpenAI's shape
                        assert set(response.json()["error"]) == {"message", "type", "param", "code"}

                try:
                    check()
                except Unsatisfiable:  # nothing to break in a request without parameters (GET /health)
                    assert mode == GenerationMode.NEGATIVE
                    continue
                tested.add((op.method.upper(), op.path, mode.value))
        assert ("POST", "/v1/completions", "negative") in tested


# ---------------------------------------------------------------------------------------------
# The playground, in a real browser
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def browser_page(**page_options):
    """A headless Chromium page and the list its script errors land in (the test skips without Chromium)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/ci_browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(**page_options)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def test_playground_streams_in_a_real_browser(base_url, run_dir, tmp_path):
    from playwright.sync_api import expect

    with browser_page(viewport={"width": 1200, "height": 820}) as (page, errors):
        page.goto(base_url + "/")
        expect(page.locator("#model-name")).to_have_text(RUN_NAME)
        page.fill("#prompt", "the model learns to predict")
        set_range = "([id, v]) => { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('input')); }"
        page.evaluate(set_range, ["max_tokens", "60"])
        page.fill("#seed", "3")
        page.click("#generate")
        expect(page.locator("#completion")).not_to_be_empty(timeout=30_000)
        expect(page.locator("#stop")).to_be_disabled(timeout=30_000)  # finished
        stats = page.inner_text("#stats")
        assert "tok/s" in stats and "tokens" in stats
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

        # a long generation: the text streams in while it runs, and the Stop button ends it
        page.evaluate(set_range, ["max_tokens", "4096"])
        page.uncheck("#eot")
        page.click("#generate")
        completion = page.locator("#completion")
        expect(completion).to_have_text(re.compile(".{20}", re.DOTALL), timeout=30_000)
        shown = len(completion.text_content())
        expect(completion).to_have_text(re.compile(f".{{{shown + 20}}}", re.DOTALL), timeout=30_000)
        expect(page.locator("#stop")).to_be_enabled()  # more text arrived, and it is still generating
        page.click("#stop")
        expect(page.locator("#stats")).to_contain_text("stopped", timeout=10_000)
        wait_idle(base_url)

        # the loss curves, refreshed when the run writes another evaluation
        page.goto(f"{base_url}/runs/{RUN_NAME}")
        expect(page.locator("#chart polyline").first).to_be_attached()
        n = page.locator("#rows tr").count()
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 10, "tokens": 2560, "train_loss": 4.5, "val_loss": 4.6}) + "\n")
        expect(page.locator("#rows tr")).to_have_count(n + 1, timeout=10_000)
        page.screenshot(path=str(tmp_path / "curves.png"), full_page=True)
        assert not errors, errors
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def test_playground_asks_for_the_key_of_a_server_that_has_one(run_dir, loaded):
    from playwright.sync_api import expect

    with serving(make_app(run_dir, loaded, api_key="sekret")) as url, browser_page() as (page, errors):
        page.goto(url + "/")
        expect(page.locator("#key-box")).to_be_visible()
        expect(page.locator("#hint")).to_contain_text("API key")
        page.fill("#api-key", "sekret")
        page.locator("#api-key").dispatch_event("change")
        expect(page.locator("#model-name")).to_have_text(RUN_NAME)  # /api/info answered with the key
        page.fill("#prompt", "the model")
        page.click("#generate")
        expect(page.locator("#completion")).not_to_be_empty(timeout=30_000)
        assert not errors, errors


# ---------------------------------------------------------------------------------------------
# Handlers and dependencies, called directly with a small state of their own (no app, no model)
# ---------------------------------------------------------------------------------------------

class ByteTokenizer:
    """A stand-in tokenizer: one id per UTF-8 byte, and 256 for end-of-text."""

    name, vocab_size, eot_id = "bytes", 257, 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def small_state(run_dir: Path | None = None, **limits) -> ServeState:
    return ServeState(model=None, tok=ByteTokenizer(), name="m", run_dir=run_dir, **limits)


def test_check_model_and_check_key_refuse_in_openai_shape():
    state = small_state(api_key="k")
    assert routes.check_model(state, None) is None and routes.check_model(state, "m") is None
    with pytest.raises(ApiError) as e:
        routes.check_model(state, "gpt-4")
    assert (e.value.status, e.value.param, e.value.code) == (404, "model", "model_not_found")
    assert "'m'" in e.value.message

    assert routes.check_key(state, HTTPAuthorizationCredentials(scheme="Bearer", credentials="k")) is None
    for creds in (None, HTTPAuthorizationCredentials(scheme="Bearer", credentials="kk")):
        with pytest.raises(ApiError) as e:
            routes.check_key(state, creds)
        assert (e.value.status, e.value.code) == (401, "invalid_api_key")
        assert e.value.headers == {"WWW-Authenticate": "Bearer"}
    assert routes.check_key(small_state(), None) is None  # no --api-key: nothing to check


def test_sampling_params_fill_defaults_and_apply_the_cap():
    state = small_state(max_tokens_cap=8)

    def fields(**body):
        req = CompletionRequest(prompt="x", **body)
        p = routes.sampling_params(state, req.max_tokens, req)
        return p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.seed, p.stop, p.ignore_eos

    assert fields() == (8, 1.0, None, None, None, (), False)  # default 16, but the cap is lower
    assert fields(max_tokens=3, temperature=0, top_k=5, top_p=0.5, seed=4, stop="\n", ignore_eos=True) == (
        3, 0.0, 5, 0.5, 4, ("\n",), True)
    assert fields(top_k=-1, top_p=1.0, temperature=None, stop=["a", "b"])[1:4] == (1.0, None, None)
    assert fields(stop=["a", "b"])[5] == ("a", "b")
    with pytest.raises(ApiError) as e:
        fields(max_tokens=9)
    assert (e.value.status, e.value.param, e.value.code) == (400, "max_tokens", "max_tokens_too_large")


def test_encode_prompts_shapes_and_limits():
    state = small_state(max_prompt_tokens=4)
    assert encode_prompts(state, "ab") == [[97, 98]]
    assert encode_prompts(state, "") == [[256]]  # an empty prompt starts a new document
    assert encode_prompts(state, [1, 2]) == [[1, 2]]
    assert encode_prompts(state, [[1], [2, 3]]) == [[1], [2, 3]]
    assert encode_prompts(state, ["a", "b"]) == [[97], [98]]
    for prompt, code in (("abcde", "context_length_exceeded"), ([[1], [257]], None), ([], None)):
        with pytest.raises(ApiError) as e:
            encode_prompts(state, prompt)
        assert (e.value.status, e.value.param, e.value.code) == (400, "prompt", code)


def test_a_prompt_too_long_for_any_tokenization_is_refused_untokenized(loaded):
    class Counting(ByteTokenizer):
        encoded: list[int] = []

        def encode(self, text: str) -> list[int]:
            self.encoded.append(len(text))
            return super().encode(text)

    state = ServeState(model=None, tok=Counting(), name="m", max_prompt_tokens=4)
    assert state.token_chars == 1  # one byte per token: at most one character
    with pytest.raises(ApiError) as e:
        encode_prompts(state, ["abc", "x" * 10**6])
    assert e.value.code == "context_length_exceeded" and "at least 1000000 tokens" in e.value.message
    assert Counting.encoded == [3], "only the prompt that may fit is tokenized"

    _, tok = loaded  # the bound is sound for a real BPE: no text needs fewer tokens than it says
    longest = ServeState(model=None, tok=tok, name="m").token_chars
    text = " ".join(WORDS) + " " * 50 + "東京" * 20
    assert longest > 1 and len(tok.encode(text)) >= len(text) / longest


def test_run_metrics_and_health_read_the_state_they_are_given(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    state = small_state(run, max_concurrency=2, max_queue=3)
    assert routes.run_metrics("r1", state).rows == []
    (run / "metrics.jsonl").write_text('{"step": 0, "val_loss": 5.0}\n[1, 2]\n{"step": 5, "val_loss": NaN}\n{"st')
    got = routes.run_metrics("r1", state)
    assert got.run == "r1" and got.rows == [{"step": 0, "val_loss": 5.0}, {"step": 5, "val_loss": None}]
    assert got.updated == (run / "metrics.jsonl").stat().st_mtime
    for name, where in (("r2", state), ("r1", small_state(None))):
        with pytest.raises(ApiError) as e:
            routes.run_metrics(name, where)
        assert (e.value.status, e.value.code) == (404, "run_not_found")

    health = asyncio.run(routes.health(state))
    assert (health.model, health.active, health.queued) == ("m", 0, 0)


def test_sixteen_generations_batch_by_default_and_the_limit_is_kept(run_dir, loaded):
    from psyduck.cli import make_parser
    from psyduck.serve.state import load_state

    model, tok = loaded
    assert make_parser().parse_args(["serve", str(run_dir)]).max_concurrency is None  # the server picks
    for batching, expect in ((True, 16), (False, 4)):
        state = load_state(run_dir, model=model, tokenizer=tok, batching=batching)
        assert (state.max_concurrency, state.slots.concurrency) == (expect, expect)
    assert load_state(run_dir, model=model, tokenizer=tok, max_concurrency=3).slots.concurrency == 3
    assert make_parser().parse_args(["serve", str(run_dir), "--max-concurrency", "3"]).max_concurrency == 3


# ---------------------------------------------------------------------------------------------
# Pieces: text streaming and the CLI
# ---------------------------------------------------------------------------------------------

def test_text_stream_keeps_characters_whole_and_holds_back_stop_prefixes(loaded):
    _, tok = loaded
    text = "café 東京 the model"
    pieces = []
    stream = TextStream(tok)
    ids = tok.encode(text)
    for i, t in enumerate(ids):
        pieces.append(stream.push(t, last=i == len(ids) - 1))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)

    stream = TextStream(tok, stop=("l th",))
    shown = "".join(stream.push(t) for t in tok.encode("small the end"))
    assert shown == "smal" and stream.finish_reason == "stop"
    stream = TextStream(tok)
    assert stream.push(tok.eot_id) == "" and stream.finish_reason == "stop"


def test_cli_serve_is_registered_and_fails_in_one_line(run_dir, capsys):
    from psyduck.cli import main, make_parser

    args = make_parser().parse_args(["serve", str(run_dir)])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)
    assert main(["serve", str(run_dir / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["serve", str(run_dir), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen" in err and err.count("\n") == 1
    assert main(["serve", str(run_dir), "--max-concurrency", "0", "--batching", "off"]) == 2
    assert "max-concurrency" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-body-mb", "0"]) == 2
    err = capsys.readouterr().err
    assert "max-body-mb" in err and err.count("\n") == 1
