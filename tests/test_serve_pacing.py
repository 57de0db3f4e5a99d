"""Stream pacing (`--stream-interval`): a stream's deltas merged over the interval lose nothing.

The merge itself (texts, logprobs and finish reasons per choice), `Paced`'s timing on a fake clock
(first step and finishing steps at once, the rest held until the interval passes, what is left
handed on before the end), and a paced server streaming through the real `openai` package the
same text and logprobs as an unpaced one, in fewer chunks.
"""

# ruff: noqa: F811  (the fixtures imported from test_serve are parameters of the tests here)
from __future__ import annotations

from concurrent.futures import Future

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from psyduck.errors import PsyDuckError
from psyduck.serve.batch import Delta, TokenLogprob
from psyduck.serve.pacing import Paced, merge_deltas
from test_serve import RUN_NAME, loaded, make_app, run_dir, serving  # noqa: F401


def lp(token: int) -> TokenLogprob:
    return TokenLogprob(token, -1.0, [])


steps_strategy = st.lists(  # steps of a 3-choice job: each step, some choices' deltas
    st.lists(st.tuples(st.integers(0, 2), st.text(max_size=3), st.integers(0, 99)), max_size=3,
             unique_by=lambda t: t[0]),
    min_size=1, max_size=8,
)


@given(steps_strategy)
def test_merged_deltas_carry_each_choices_text_and_logprobs_in_order(raw):
    steps = [[Delta(i, text, None, [lp(tok)]) for i, text, tok in step] for step in raw]
    merged = {d.index: d for d in merge_deltas(steps)}
    for i in range(3):
        mine = [(text, tok) for step in raw for j, text, tok in step if j == i]
        if not mine:
            assert i not in merged
            continue
        assert merged[i].text == "".join(t for t, _ in mine)
        assert [x.token for x in merged[i].logprobs] == [tok for _, tok in mine]
    assert steps == [[Delta(i, text, None, [lp(tok)]) for i, text, tok in step] for step in raw]  # inputs untouched


def test_merge_keeps_the_finish_reason_and_one_step_as_it_is():
    one = [Delta(0, "a")]
    assert merge_deltas([one]) is one
    merged = merge_deltas([[Delta(0, "a"), Delta(1, "x")], [Delta(0, "b", "length"), Delta(1, "y")]])
    assert [(d.index, d.text, d.finish_reason) for d in merged] == [(0, "ab", "length"), (1, "xy", None)]


def test_paced_holds_steps_within_the_interval_and_hands_the_rest_on_before_the_end():
    now = [0.0]
    posted: list = []
    paced = Paced(posted.append, 0.05, clock=lambda: now[0])
    paced.push([Delta(0, "a")])  # the first step: at once
    for t, text in ((0.01, "b"), (0.03, "c"), (0.06, "d"), (0.07, "e")):
        now[0] = t
        paced.push([Delta(0, text)])
    assert [[d.text for d in item] for item in posted] == [["a"], ["bcd"]]  # d came 0.06 s after a
    now[0] = 0.08
    paced.push([Delta(0, "f", "stop")])  # a finishing step: at once, with what was held
    future: Future = Future()
    future.set_result([])
    paced.close(future)
    assert [[(d.text, d.finish_reason) for d in item] for item in posted[:3]] == [[("a", None)], [("bcd", None)], [("ef", "stop")]]
    assert posted[3] is future and len(posted) == 4


def test_paced_close_hands_on_held_deltas_first():
    posted: list = []
    paced = Paced(posted.append, 10.0, clock=lambda: 1.0)
    paced.push([Delta(0, "a")])
    paced.push([Delta(0, "b")])  # held: the client leaves, or the server stops, before a finish
    future: Future = Future()
    future.set_result([])
    paced.close(future)
    assert [[d.text for d in item] for item in posted[:2]] == [["a"], ["b"]]
    assert posted[2] is future


def test_zero_interval_hands_on_every_step():
    posted: list = []
    paced = Paced(posted.append, 0.0, clock=lambda: 1.0)
    for text in "abc":
        paced.push([Delta(0, text)])
    assert [[d.text for d in item] for item in posted] == [["a"], ["b"], ["c"]]


@pytest.mark.parametrize("bad", [-0.1, 11, "0.1", True, float("nan")])
def test_a_bad_stream_interval_is_one_clear_error(run_dir, loaded, bad):
    with pytest.raises(PsyDuckError, match=r"^stream-interval must be a number of seconds from 0 to 10 \(e.g. 0.05\), got "):
        make_app(run_dir, loaded, stream_interval=bad)


def test_a_paced_stream_sends_the_same_tokens_in_fewer_chunks(run_dir, loaded):
    ask = {"model": RUN_NAME, "prompt": "the cat", "max_tokens": 40, "temperature": 0.8, "seed": 5, "logprobs": 2,
           "stream": True, "stream_options": {"include_usage": True}, "extra_body": {"ignore_eos": True}}

    def streamed(interval: float) -> tuple[list, str, list]:
        with serving(make_app(run_dir, loaded, stream_interval=interval)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            chunks = list(client.completions.create(**ask))
        parts = [ch.choices[0] for ch in chunks if ch.choices]
        return parts, "".join(p.text for p in parts), [t for p in parts for t in p.logprobs.tokens]

    each, text, tokens = streamed(0.0)
    paced, paced_text, paced_tokens = streamed(10.0)  # all but the first token and the last step held
    assert len(each) == 40 and len(tokens) == 40
    assert paced_text == text and paced_tokens == tokens
    assert len(paced) == 2 and paced[-1].finish_reason == "length"
