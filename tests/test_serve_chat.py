"""/v1/chat/completions through the real `openai` package, and `--batching off` still answering.

Plain and streamed replies, seeded repeatability, logprobs, OpenAI-shaped 400s for bad
conversations, 20 concurrent chat streams that all complete (they share the engine's batch), and
the server's reply equal to what `psyduck chat` shows for the same conversation.
"""

# ruff: noqa: F811  (the fixtures imported from test_serve are parameters of the tests here)
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from psyduck.chat import plain_template
from test_serve import RUN_NAME, loaded, make_app, run_dir, serving  # noqa: F401  # noqa: F401

HELLO = [{"role": "system", "content": "brief"}, {"role": "user", "content": "the cat"}]


@pytest.fixture(scope="module", params=["on", "off"])
def chat_client(request, run_dir, loaded):
    app = make_app(run_dir, loaded, max_tokens_cap=256, max_concurrency=20, max_queue=8, batching=request.param == "on")
    with serving(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


def test_chat_plain_and_streamed_agree(chat_client, loaded):
    _, tok = loaded
    r = chat_client.chat.completions.create(model=RUN_NAME, messages=HELLO, max_tokens=12, temperature=0)
    c = r.choices[0]
    assert r.object == "chat.completion" and c.message.role == "assistant" and c.finish_reason in ("stop", "length")
    prompt = plain_template().encode(tok, HELLO)  # a run without a template of its own
    assert r.usage.prompt_tokens == len(prompt) and 0 < r.usage.completion_tokens <= 12
    chunks = list(chat_client.chat.completions.create(
        model=RUN_NAME, messages=HELLO, max_completion_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content and "\nUser:" not in text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == c.finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and chunks[-1].choices == []


def test_chat_seed_repeats_and_n_choices_differ(chat_client):
    ask = {"model": RUN_NAME, "messages": HELLO, "max_tokens": 10, "temperature": 1.0, "seed": 11, "n": 3,
           "extra_body": {"ignore_eos": True}}
    a, b = (chat_client.chat.completions.create(**ask) for _ in range(2))
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices] and len(set(texts)) > 1


def test_chat_logprobs(chat_client):
    r = chat_client.chat.completions.create(model=RUN_NAME, messages=HELLO, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3, extra_body={"ignore_eos": True, "stop": None})
    content = r.choices[0].logprobs.content
    assert 0 < len(content) <= 6 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)  # greedy: the top one
    assert r.choices[0].message.content.startswith("".join(t.token for t in content)[: len(r.choices[0].message.content)])


@pytest.mark.parametrize(("messages", "fragment"), [
    ([], "messages is empty"),
    ([{"role": "wizard", "content": "hi"}], "role 'wizard' is not one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "the " * 5000}], "tokens long"),
])
def test_bad_conversations_get_openai_400s(chat_client, messages, fragment):
    with pytest.raises(openai.BadRequestError) as e:
        chat_client.chat.completions.create(model=RUN_NAME, messages=messages, max_tokens=4)
    assert e.value.body["param"] == "messages" and fragment in e.value.body["message"]


def test_twenty_concurrent_chat_streams_all_complete(chat_client):
    def one(i: int) -> tuple[str, str | None]:
        chunks = chat_client.chat.completions.create(
            model=RUN_NAME, messages=[{"role": "user", "content": f"word {i}"}], max_tokens=16, temperature=0.8, seed=i,
            stream=True, extra_body={"ignore_eos": True},
        )
        parts = [(ch.choices[0].delta.content or "", ch.choices[0].finish_reason) for ch in chunks if ch.choices]
        return "".join(p for p, _ in parts), parts[-1][1]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20 and all(reason in ("stop", "length") for _, reason in results)


def test_playground_chat_tab_streams_and_stops_in_a_real_browser(run_dir, loaded, tmp_path):
    import re

    from playwright.sync_api import expect
    from test_serve import browser_page, wait_idle

    with serving(make_app(run_dir, loaded, max_tokens_cap=4096)) as url, browser_page(viewport={"width": 1200, "height": 820}) as (page, errors):
        page.goto(url + "/")
        expect(page.locator("#model-name")).to_have_text(RUN_NAME)
        page.click("#mode-chat")
        expect(page.locator("#chat-pane")).to_be_visible()
        expect(page.locator("#prompt")).to_be_hidden()
        set_range = "([id, v]) => { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('input')); }"
        page.evaluate(set_range, ["max_tokens", "3"])  # short: the next turn must fit the 32-token context
        page.uncheck("#eot")
        page.fill("#chat-input", "the cat")
        page.click("#chat-send")
        expect(page.locator(".msg.user")).to_have_text("the cat")
        expect(page.locator(".msg.assistant")).not_to_be_empty(timeout=30_000)
        expect(page.locator("#chat-send")).to_be_enabled(timeout=30_000)  # the reply finished
        expect(page.locator("#chat-stats")).to_contain_text("tokens")

        # a second turn would not fit this model's 32-token context: the server says so, in one line
        page.fill("#chat-input", "a dog ran over the hill")
        page.click("#chat-send")
        expect(page.locator("#chat-stats")).to_contain_text("accepts at most", timeout=10_000)
        assert page.locator(".msg.assistant").count() == 1

        # Clear starts over; a long reply streams in, and Stop ends it
        page.click("#chat-clear")
        assert page.locator(".msg").count() == 0
        page.evaluate(set_range, ["max_tokens", "4096"])
        page.fill("#chat-input", "a")
        page.click("#chat-send")
        second = page.locator(".msg.assistant").first
        expect(second).to_have_text(re.compile(".{20}", re.DOTALL), timeout=30_000)
        expect(page.locator("#chat-stop")).to_be_enabled()
        page.click("#chat-stop")
        expect(page.locator("#chat-stats")).to_contain_text("stopped", timeout=10_000)
        assert page.locator(".msg").count() == 2
        wait_idle(url)
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        assert not errors, errors


def test_a_model_served_without_a_run_folder_chats_with_the_plain_template(loaded):
    from fastapi.testclient import TestClient

    from psyduck.serve.app import create_app

    model, tok = loaded
    with TestClient(create_app(model=model, tokenizer=tok, model_name="m")) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(plain_template().encode(tok, HELLO))


def test_server_replies_are_what_psyduck_chat_shows(run_dir, loaded):
    """Both answer with the template's `reply`: the space the plain template leaves to the model is dropped."""
    import argparse
    import io

    from psyduck.chat_command import ChatSession, reply_to

    _, tok = loaded
    args = argparse.Namespace(run=str(run_dir), max_new_tokens=12, temperature=0.0, top_k=None, top_p=None, seed=None,
                              exact=False, device="cpu", checkpoint=None, system=HELLO[0]["content"])
    terminal = io.StringIO()
    reply_to(ChatSession(args), HELLO[1]["content"], terminal)
    with serving(make_app(run_dir, loaded, max_tokens_cap=64)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        ask = {"model": RUN_NAME, "messages": HELLO, "max_tokens": 12, "temperature": 0}
        whole = client.chat.completions.create(**ask).choices[0].message.content
        streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(**ask, stream=True)
                           if ch.choices)
        raw = client.completions.create(model=RUN_NAME, prompt=plain_template().encode(tok, HELLO), max_tokens=12,
                                        temperature=0, stop=list(plain_template().stop_strings)).choices[0].text
    assert raw.startswith(" ")  # what the model writes after "Assistant:" begins with the header's space...
    assert whole == streamed == terminal.getvalue().removesuffix("\n") == raw[1:]  # ...which no answer shows
