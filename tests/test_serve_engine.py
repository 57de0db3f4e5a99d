"""The batching engine and the completions extras: logprobs, echo, the tokenizer endpoints, and
lm-evaluation-harness's `local-completions` against a live server scoring like `--model psyduck`.

- a batch whose rows join and leave at different steps gives each row the tokens it gets alone;
- prompts that join at one step are prefilled in one forward pass (rows whose windows fill at one
  step are rolled in one), and each row gets the tokens and logprobs it gets alone, greedy and seeded;
- a cancelled job leaves the batch (its cache row is free) at the next step;
- `logprobs` and `echo` with `max_tokens: 0` in OpenAI's legacy shape, equal to the model's own.
"""

# ruff: noqa: F811  (the fixtures imported from test_serve are parameters of the tests here)
from __future__ import annotations

import os
import threading

import openai
import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_serve import loaded, make_app, run_dir, serving  # noqa: F401  (fixtures below)  # noqa: E402,F401

from psyduck.generate import DecodeWeights, GenerationParams
from psyduck.errors import PsyDuckError
from psyduck.serve.batch import PREFILL_TOKENS, Batch, Job, padded_groups
from psyduck.serve.engine import run_alone


def greedy(n: int = 12, **kw) -> GenerationParams:
    return GenerationParams(max_new_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def test_rows_joining_and_leaving_get_the_tokens_they_get_alone(loaded):
    model, tok = loaded
    weights = DecodeWeights.build(model)
    prompts = [tok.encode(t) for t in ("the cat", "a dog ran over the hill and", "x", "one two three four five six")]
    lengths = [12, 5, 20, 9]
    alone = [run_alone(model, tok, weights, Job([p], 1, greedy(m), threading.Event())) for p, m in zip(prompts, lengths)]
    batch = Batch(model, tok, weights)
    jobs = [Job([p], 1, greedy(m), threading.Event()) for p, m in zip(prompts, lengths)]
    batch.join(jobs[0])
    batch.step(); batch.step()
    batch.join(jobs[1]); batch.join(jobs[2])
    batch.step()
    assert batch.cache.active == 3
    batch.join(jobs[3])
    while not batch.empty:
        batch.step()
    for job, solo in zip(jobs, alone, strict=True):
        got = job.future.result()
        assert [c.text for c in got] == [c.text for c in solo] and got[0].tokens == solo[0].tokens
    assert batch.cache.active == 0


def prefills(model: torch.nn.Module, weights: DecodeWeights) -> list[tuple[int, int]]:
    """A list that fills with the (rows, tokens) shape of every forward pass of more than one token."""
    shapes: list[tuple[int, int]] = []

    def seen(_module, args):
        if args[0].shape[1] > 1:
            shapes.append(tuple(args[0].shape))

    weights.net.tok_emb.register_forward_pre_hook(seen)  # the embedding: the first thing a forward reads
    return shapes


def test_prompts_joining_together_are_prefilled_at_once_and_get_what_they_get_alone(loaded):
    model, tok = loaded
    bs = model.config.block_size
    words = "the cat sat on the mat and a dog ran over the hill one two three four five six seven eight".split()
    prompts = [tok.encode(" ".join(words[:k])) for k in (4, 6, 8, 10)]  # 10 to 27 tokens here
    prompts.append(tok.encode(" ".join(words * 3)))  # longer than the window: its end is kept
    assert len(prompts[-1]) > bs and len({len(p) for p in prompts}) == len(prompts)
    settings = [
        dict(params=greedy(14), logprobs=2),
        dict(params=GenerationParams(12, 0.8, seed=3, ignore_eos=True), logprobs=0, n=2),
        dict(params=GenerationParams(10, 1.0, top_k=20, seed=5, ignore_eos=True), logprobs=1),
        dict(params=GenerationParams(16, 0.9, top_p=0.8, seed=11, ignore_eos=True), logprobs=3),
        dict(params=greedy(bs + 4), logprobs=0),  # past the window: rolls on its own
    ]

    def job(i: int) -> Job:
        s = settings[i]
        return Job([prompts[i]], s.get("n", 1), s["params"], threading.Event(), logprobs=s["logprobs"])

    alone = [run_alone(model, tok, DecodeWeights.build(model), job(i)) for i in range(len(prompts))]
    weights = DecodeWeights.build(model)
    shapes = prefills(model, weights)
    batch = Batch(model, tok, weights)
    jobs = [job(i) for i in range(len(prompts))]
    batch.join(*jobs)
    assert shapes == [(len(prompts), bs)]  # one forward pass for all five, padded to the longest
    want = [min(len(p), bs) for p, s in zip(prompts, settings) for _ in range(s.get("n", 1))]
    assert sorted(batch.cache.length.tolist()) == sorted(want)
    while not batch.empty:
        batch.step()
    for got, solo in zip((j.future.result() for j in jobs), alone, strict=True):
        assert [c.text for c in got] == [c.text for c in solo] and [c.tokens for c in got] == [c.tokens for c in solo]
        for a, b in zip(got, solo, strict=True):
            assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs]
            assert [t.logprob for t in a.logprobs] == pytest.approx([t.logprob for t in b.logprobs], abs=1e-5)
            assert [[i for i, _ in t.top] for t in a.logprobs] == [[i for i, _ in t.top] for t in b.logprobs]
    assert alone[1][0].text != alone[1][1].text  # the seeded n=2 job's two choices are two draws


def test_rows_whose_windows_fill_at_one_step_roll_in_one_pass(loaded):
    from psyduck.generate import generate

    model, tok = loaded
    bs = model.config.block_size
    weights = DecodeWeights.build(model)
    prompt = tok.encode("the cat sat on")
    prompts = [prompt, prompt[::-1]]  # the same length: their windows fill at the same step
    expect = [generate(model, torch.tensor([p]), greedy(bs + 6), weights=weights)[0, len(p):].tolist() for p in prompts]
    shapes = prefills(model, weights)
    batch = Batch(model, tok, weights)
    jobs = [Job([p], 1, greedy(bs + 6), threading.Event(), logprobs=0) for p in prompts]
    batch.join(*jobs)
    while not batch.empty:
        batch.step()
    assert shapes == [(2, len(prompts[0])), (2, bs // 2 + 1)]  # the join, then one roll for both
    assert [[t.token for t in j.future.result()[0].logprobs] for j in jobs] == expect


def test_padded_groups_bound_the_padding_and_the_size():
    assert padded_groups([5, 5, 5]) == [[0, 1, 2]]
    assert padded_groups([2, 128, 2, 2]) == [[1, 0], [2, 3]]  # 128 + 2 padded to 256 <= 2 x 130; a third would not fit
    assert padded_groups([]) == []
    big = padded_groups([128] * 100)
    assert [len(g) for g in big] == [PREFILL_TOKENS // 128, 100 - PREFILL_TOKENS // 128]
    assert sorted(i for g in big for i in g) == list(range(100))


def test_a_bad_prompt_fails_its_own_job_not_the_ones_joining_with_it(loaded):
    model, tok = loaded
    batch = Batch(model, tok, DecodeWeights.build(model))
    good = Job([tok.encode("the cat")], 1, greedy(3), threading.Event())
    empty = Job([[]], 1, greedy(3), threading.Event())
    outside = Job([[1, model.config.vocab_size]], 1, greedy(3), threading.Event())
    batch.join(empty, good, outside)
    while not batch.empty:
        batch.step()
    assert good.future.result()[0].tokens == 3
    with pytest.raises(PsyDuckError, match="at least one token"):
        empty.future.result()
    with pytest.raises(PsyDuckError, match=f"token id {model.config.vocab_size} is outside"):
        outside.future.result()


def test_rows_past_the_window_roll_like_the_generation_loop(loaded):
    model, tok = loaded
    from psyduck.generate import generate

    weights = DecodeWeights.build(model)
    bs = model.config.block_size
    prompt = tok.encode("the cat sat on the mat")
    params = greedy(bs + 10)
    expect = generate(model, torch.tensor([prompt]), params, weights=weights)[0, len(prompt):].tolist()
    batch = Batch(model, tok, weights)
    other = Job([tok.encode("a")], 1, greedy(bs + 30), threading.Event())
    job = Job([prompt], 1, params, threading.Event())
    batch.join(other); batch.step(); batch.join(job)
    while not batch.empty:
        batch.step()
    assert job.future.result()[0].text == tok.decode(expect)


def test_a_cancelled_job_frees_its_rows_at_the_next_step(loaded):
    model, tok = loaded
    batch = Batch(model, tok, DecodeWeights.build(model))
    stay, go = (Job([tok.encode("hi")], n, greedy(50), threading.Event()) for n in (1, 3))
    batch.join(stay); batch.join(go)
    batch.step()
    assert batch.cache.active == 4
    go.cancel.set()
    batch.step()
    assert batch.cache.active == 1 and go.future.done() and not stay.future.done()
    assert [c.finish_reason for c in go.future.result()] == [None, None, None]


def test_seeded_rows_repeat_whoever_shares_the_batch(loaded):
    model, tok = loaded
    weights = DecodeWeights.build(model)
    params = GenerationParams(max_new_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    solo = run_alone(model, tok, weights, Job([tok.encode("the")], 2, params, threading.Event()))
    batch = Batch(model, tok, weights)
    noise = Job([tok.encode("dog")], 1, GenerationParams(max_new_tokens=10, temperature=1.0, seed=1), threading.Event())
    job = Job([tok.encode("the")], 2, params, threading.Event())
    batch.join(noise); batch.step(); batch.join(job)
    while not batch.empty:
        batch.step()
    assert [c.text for c in job.future.result()] == [c.text for c in solo]
    assert solo[0].text != solo[1].text  # the two choices draw from one generator, not the same one twice


@pytest.fixture(scope="module")
def engine_url(run_dir, loaded):
    model, _ = loaded
    app = make_app(run_dir, loaded, max_tokens_cap=256, max_concurrency=8, max_prompt_tokens=model.config.block_size + 1)
    with serving(app) as url:
        yield url


def test_logprobs_and_echo_with_max_tokens_0_score_the_prompt(engine_url, loaded):
    model, tok = loaded
    client = openai.OpenAI(base_url=engine_url + "/v1", api_key="x", max_retries=0, timeout=60)
    ids = tok.encode("the cat sat on the mat")
    r = client.completions.create(model="tiny-run", prompt=ids, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == tok.decode(ids) and lp.tokens == [tok.decode([i]) for i in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    with torch.no_grad():
        expect = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), -1)
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(float(expect[t - 1, ids[t]]), abs=1e-5)
        assert len(lp.top_logprobs[t]) == 3 and max(lp.top_logprobs[t].values()) == pytest.approx(float(expect[t - 1].max()), abs=1e-5)
    assert lp.text_offset == [len(tok.decode(ids[:i])) for i in range(len(ids))]
    g = client.completions.create(model="tiny-run", prompt="the", max_tokens=5, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    glp = g.choices[0].logprobs
    assert len(glp.tokens) == len(glp.token_logprobs) == 5 and "".join(glp.tokens) == g.choices[0].text
    assert all(t <= 0 and len(top) == 2 for t, top in zip(glp.token_logprobs, glp.top_logprobs))
    chunks = list(client.completions.create(model="tiny-run", prompt="the", max_tokens=4, temperature=0, logprobs=1,
                                            extra_body={"ignore_eos": True}, stream=True))
    streamed = [t for c in chunks for t in c.choices[0].logprobs.token_logprobs]  # a chunk may carry several tokens
    assert streamed == pytest.approx(glp.token_logprobs[:4], abs=1e-6)
    echoed = list(client.completions.create(model="tiny-run", prompt=ids, max_tokens=2, echo=True, logprobs=3, stream=True,
                                         extra_body={"ignore_eos": True}))
    assert echoed[0].choices[0].text == tok.decode(ids) and echoed[0].choices[0].logprobs.token_logprobs == lp.token_logprobs
    assert len(echoed) == 3 and all(len(c.choices[0].logprobs.tokens) == 1 for c in echoed[1:])


def test_tokenizer_endpoints_answer_like_vllm(engine_url, loaded):
    import requests

    _, tok = loaded
    info = requests.get(engine_url + "/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == tok.decode([tok.eot_id])
    got = requests.post(engine_url + "/tokenize", json={"prompt": "the cat", "add_special_tokens": False}, timeout=10).json()
    assert got["tokens"] == tok.encode("the cat")
    assert requests.post(engine_url + "/tokenize", json={"prompt": info["eos_token"]}, timeout=10).json()["tokens"] == [tok.eot_id]
    back = requests.post(engine_url + "/detokenize", json={"tokens": got["tokens"]}, timeout=10).json()
    assert back["prompt"] == "the cat"
    assert requests.post(engine_url + "/detokenize", json={"tokens": [10**6]}, timeout=10).status_code == 400


def write_small_tasks(folder) -> None:
    """Two local tasks that fit a 32-token model: mc_local (multiple choice), roll_local (perplexity)."""
    import json
    import random

    rng = random.Random(3)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "over", "hill", "and", "one", "two", "three"]
    docs = [{"ctx": " ".join(rng.choices(words, k=6)), "choices": [" " + " ".join(rng.choices(words, k=3)) for _ in range(3)],
             "label": rng.randrange(3)} for _ in range(6)]
    texts = [{"text": " ".join(rng.choices(words, k=50))} for _ in range(2)]
    folder.mkdir(parents=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "roll.jsonl").write_text("".join(json.dumps(d) + "\n" for d in texts))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: mc_local\n" + common.format(folder / "mc.jsonl") + "output_type: multiple_choice\n"
        "doc_to_text: '{{ctx}}'\ndoc_to_target: '{{label}}'\ndoc_to_choice: '{{choices}}'\nmetric_list:\n  - metric: acc\n"
    )
    (folder / "roll.yaml").write_text(
        "task: roll_local\n" + common.format(folder / "roll.jsonl") + "output_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
    )


def test_lm_eval_local_completions_scores_like_the_psyduck_model(engine_url, loaded, tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")  # the harness's API models need lm-eval[api]
    from lm_eval.tasks import TaskManager
    from test_tasks import harness, sample_lls

    from psyduck.tasks.harness import PsyDuckLM

    model, tok = loaded
    write_small_tasks(tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    tasks = ["mc_local", "roll_local"]
    ours = harness(PsyDuckLM(model=model, tokenizer=tok, batch_size=4), None, tasks, manager)
    # the harness keeps max_length - 1 tokens: the window plus the token after it, as --model psyduck scores
    args = {"model": "tiny-run", "base_url": engine_url + "/v1/completions", "tokenizer_backend": "remote",
            "max_length": model.config.block_size + 2, "num_concurrent": 4, "max_retries": 1, "tokenized_requests": True}
    theirs = harness("local-completions", args, tasks, manager, batch_size=1)
    for task in tasks:
        mine, served = sample_lls(ours, task), sample_lls(theirs, task)
        assert len(mine) == len(served) > 0 and all(len(x) == len(y) for x, y in zip(mine, served, strict=True))
        assert max(abs(x - y) for xs, ys in zip(mine, served, strict=True) for x, y in zip(xs, ys, strict=True)) < 1e-4, (task, mine, served)
    assert ours["results"]["mc_local"]["acc,none"] == theirs["results"]["mc_local"]["acc,none"]


@pytest.mark.parametrize("variant", [
    {"pos": "rope"}, {"pos": "learned"}, {"pos": "sinusoidal", "attention": "teaching"}, {"pos": "rope", "n_kv_head": 2},
])
@pytest.mark.parametrize("together", [False, True], ids=["staggered", "prefilled-together"])
def test_batched_rows_equal_the_generation_loop_for_every_model_variant(loaded, variant, together):
    """Per-row positions and masks (psyduck/model.py) against the plain loop, row by row; the
    prompts joining one by one, or all at once (one padded prefill)."""
    from psyduck.config import ModelConfig
    from psyduck.generate import generate
    from psyduck.model import GPT

    _, tok = loaded
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=24, d_model=32, n_layer=2, n_head=4, **variant)
    model = GPT(cfg).eval()
    weights = DecodeWeights.build(model, exact=True)
    prompts = [tok.encode(t) for t in ("the cat sat", "a", "one two three four five six seven")]
    batch = Batch(model, tok, weights)
    jobs = [Job([p], 1, greedy(30), threading.Event(), logprobs=0) for p in prompts]  # logprobs: the ids
    if together:
        batch.join(*jobs)
    else:
        for job in jobs:
            batch.join(job)
            batch.step()
    while not batch.empty:
        batch.step()
    for job, prompt in zip(jobs, prompts, strict=True):
        expect = generate(model, torch.tensor([prompt]), greedy(30), weights=weights)[0, len(prompt):].tolist()
        assert [t.token for t in job.future.result()[0].logprobs] == expect


def test_closing_the_engine_ends_every_job_with_what_it_has(loaded):
    import time

    from psyduck.serve.engine import Engine

    model, tok = loaded
    engine = Engine(model, tok, DecodeWeights.build(model))
    jobs = [Job([tok.encode("hi")], 1, greedy(10_000), threading.Event()) for _ in range(2)]
    for job in jobs:
        engine.submit(job)
    time.sleep(0.3)
    engine.close()
    results = [job.future.result(timeout=10) for job in jobs]
    assert all(r[0].finish_reason is None for r in results)
    with pytest.raises(RuntimeError):
        engine.submit(Job([tok.encode("hi")], 1, greedy(), threading.Event()))


def test_concurrent_greedy_requests_get_what_they_get_alone(engine_url):
    from concurrent.futures import ThreadPoolExecutor

    client = openai.OpenAI(base_url=engine_url + "/v1", api_key="x", max_retries=0, timeout=60)
    prompts = ["the cat", "a dog ran", "one", "two three four", "hill and", "the the the"]

    def ask(i: int) -> str:
        return client.completions.create(model="tiny-run", prompt=prompts[i], max_tokens=10 + 3 * i, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

    alone = [ask(i) for i in range(len(prompts))]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, range(len(prompts))))
    assert together == alone


@pytest.mark.parametrize("batching", [True, False])
def test_a_batching_server_decodes_with_float32_copies_and_one_at_a_time_with_float16(loaded, batching):
    """Batched steps multiply many rows, where float32 wins (float16's CPU kernels pay only for one
    row of a large matrix): the batching server builds exact weights (with oneDNN's packed copies),
    --batching off float16 ones. With the engine in a child process, the child builds them, not this side."""
    from psyduck import GPT, ModelConfig
    from psyduck.generate.decode_weights import HalfLinear, PackedLinear
    from psyduck.serve import engine_process
    from psyduck.serve.state import ServeState

    _, tok = loaded
    torch.manual_seed(0)
    wide = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, d_model=256, n_layer=1, n_head=4, dropout=0.0)).eval()
    state = ServeState(model=wide, tok=tok, name="m", batching=batching, engine_kind="thread")
    halves = [m for m in state.weights.net.modules() if isinstance(m, HalfLinear)]
    assert state.weights.exact is batching and bool(halves) is not batching and state.weights.half is not batching
    packed = [m for m in state.weights.net.modules() if isinstance(m, PackedLinear)]
    assert bool(packed) is (batching and torch.backends.mkldnn.is_available())
    auto = ServeState(model=wide, tok=tok, name="m", batching=batching)
    assert auto.engine_in_process is (batching and engine_process.available())
    assert (auto.weights is None) is auto.engine_in_process


def test_a_job_cancelled_before_it_joins_ends_unfinished_and_one_asking_for_nothing_with_length(loaded):
    model, tok = loaded
    batch = Batch(model, tok, DecodeWeights.build(model))
    cancelled, empty = Job([tok.encode("the")], 2, greedy(), threading.Event()), Job([tok.encode("the")], 1, greedy(0), threading.Event())
    cancelled.cancel.set()
    batch.join(cancelled, empty)
    assert [(c.tokens, c.finish_reason) for c in cancelled.future.result()] == [(0, None), (0, None)]
    assert [(c.tokens, c.finish_reason) for c in empty.future.result()] == [(0, "length")] and batch.empty
