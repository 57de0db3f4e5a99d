"""The batching engine in a child process (psyduck/serve/engine_process.py) answers as the thread does.

- the same tokens, logprobs and prompt scores as a job run alone in this process: seeded and
  greedy, n > 1, several prompts, echo scoring with no tokens;
- a cancelled job ends early with what it has; a bad prompt fails alone with the thread's one line;
- a killed child fails the jobs in flight with one line and the next job starts a new child;
  `close` ends the child; a server on it answers the real `openai` client;
- a script that starts the engine outside `if __name__ == "__main__":` gets one line, not a hang;
  `stop` (run at exit) ends the child and the threads that read from it and write to it.
"""

# ruff: noqa: F811  (the fixtures imported from test_serve are parameters of the tests here)
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from test_serve import loaded, make_app, run_dir, serving  # noqa: F401  (fixtures below)

from psyduck.errors import PsyDuckError
from psyduck.generate import DecodeWeights, GenerationParams
from psyduck.serve import engine_process
from psyduck.serve.batch import Job
from psyduck.serve.engine import run_alone
from psyduck.serve.engine_process import EngineProcess

pytestmark = pytest.mark.skipif(not engine_process.available(), reason="this platform has no fork server")


@pytest.fixture(scope="module")
def engine(loaded):
    model, tok = loaded
    e = EngineProcess(model, tok)
    e.start()
    yield e
    e.close()


def job(prompts: list[list[int]], n: int = 1, **kw) -> Job:  # noqa: ANN003
    params = {"max_new_tokens": 12, "temperature": 0.8, "seed": 3, "ignore_eos": True, **kw.pop("params", {})}
    return Job(prompts, n, GenerationParams(**params), threading.Event(), **kw)


def test_the_child_gives_the_tokens_logprobs_and_scores_of_a_job_run_alone(engine, loaded):
    model, tok = loaded
    weights = DecodeWeights.build(model, batched=True)
    prompts = [tok.encode("the cat sat"), tok.encode("a dog")]
    kinds = [
        {"logprobs": 2},
        {"params": {"temperature": 0.0}},
        {"params": {"top_k": 5, "top_p": 0.9, "seed": 7}},
        {"logprobs": 1, "score_prompts": True, "params": {"max_new_tokens": 0}},  # echo scoring, no tokens
    ]
    deltas: list[list] = [[] for _ in kinds]  # each job's deltas, as its on_step received them
    jobs = [job(prompts, n=2, on_step=deltas[i].extend, **k) for i, k in enumerate(kinds)]
    for j in jobs:  # all at once: they share the child's steps
        engine.submit(j)
    for k, j in zip(kinds, jobs, strict=True):
        solo = job(prompts, n=2, **k)
        expect = run_alone(model, tok, weights, solo)
        got = j.future.result(timeout=60)
        assert [(c.index, c.text, c.tokens, c.finish_reason) for c in got] == [
            (c.index, c.text, c.tokens, c.finish_reason) for c in expect]
        assert [[(t.token, round(t.logprob, 4)) for t in c.logprobs] for c in got] == [
            [(t.token, round(t.logprob, 4)) for t in c.logprobs] for c in expect]
        assert [[None if t is None else t.token for t in s] for s in j.prompt_scores] == [
            [None if t is None else t.token for t in s] for s in solo.prompt_scores]
    for mine, j in zip(deltas, jobs, strict=True):  # the streamed pieces add up to each choice's text
        assert ["".join(d.text for d in mine if d.index == c.index) for c in j.future.result()] == [
            c.text for c in j.future.result()]
    assert sum(map(len, deltas[:3])) == 3 * 4 * 12  # one delta per token of the 4 choices of each generating job


def test_a_cancelled_job_ends_early_and_a_bad_prompt_fails_alone(engine, loaded):
    _, tok = loaded
    long = job([tok.encode("the")], params={"max_new_tokens": 100_000})
    bad = job([[10**6]])
    fine = job([tok.encode("the")])
    for j in (long, bad, fine):
        engine.submit(j)
    time.sleep(0.3)
    long.cancel.set()
    got = long.future.result(timeout=30)
    assert 0 < got[0].tokens < 100_000 and got[0].finish_reason is None
    with pytest.raises(PsyDuckError, match=r"^token id 1000000 is outside the model's vocabulary \(0\.\.\d+\)$"):
        bad.future.result(timeout=30)
    assert fine.future.result(timeout=30)[0].tokens == 12


def test_a_killed_child_fails_its_jobs_in_one_line_and_the_next_job_starts_a_new_one(loaded):
    model, tok = loaded
    e = EngineProcess(model, tok)
    e.start()
    first = e.process
    running = job([tok.encode("the")], params={"max_new_tokens": 100_000})
    e.submit(running)
    time.sleep(0.2)
    first.kill()
    with pytest.raises(RuntimeError, match=r"^the engine process stopped \(exit status -9\); retry the request$"):
        running.future.result(timeout=30)
    again = job([tok.encode("the")])  # the reader has seen the child go (the failure above): a new child
    e.submit(again)
    assert again.future.result(timeout=60)[0].tokens == 12 and e.process is not first
    e.close()
    e.process.join(timeout=10)
    assert not e.process.is_alive()
    with pytest.raises(RuntimeError, match="shutting down"):
        e.submit(job([tok.encode("the")]))


def test_a_server_on_the_child_answers_the_openai_client(run_dir, loaded):
    import openai

    app = make_app(run_dir, loaded, engine="process")
    with serving(app) as url:
        assert app.state.psyduck.engine_in_process
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        plain = client.completions.create(model=run_dir.name, prompt="the cat", max_tokens=8, seed=1, temperature=0.9)
        streamed = "".join(
            c.choices[0].text for c in client.completions.create(
                model=run_dir.name, prompt="the cat", max_tokens=8, seed=1, temperature=0.9, stream=True) if c.choices)
        assert plain.choices[0].text == streamed and plain.usage.completion_tokens == 8
        assert isinstance(app.state.psyduck.engine, EngineProcess)
    with pytest.raises(PsyDuckError, match=r"^engine must be one of auto, process, thread, got 'gpu'$"):
        make_app(run_dir, loaded, engine="gpu")


def test_a_script_without_the_main_guard_gets_one_line(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import sys
        from psyduck import GPT, ModelConfig
        from psyduck.errors import PsyDuckError
        from psyduck.serve.engine_process import EngineProcess
        from psyduck.tokenizer import train_bpe

        tok = train_bpe(["the cat sat on the mat"] * 20, 262)
        model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, d_model=16, n_layer=1, n_head=2)).eval()
        try:
            EngineProcess(model, tok).start()  # at module level: the child runs this file again
        except PsyDuckError as e:
            print(e)
            sys.exit(3)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "a script that serves must build the app under `if __name__ == '__main__':`" in done.stdout.splitlines()[-1]



def test_stop_ends_the_child_and_this_sides_threads(loaded):
    """What runs at exit (atexit): threads still reading from the child while the interpreter
    finalized aborted the process (exit status 134) in 2 of 8 exits of a probe before `stop`."""
    model, tok = loaded
    e = EngineProcess(model, tok)
    started = threading.Event()
    running = job([tok.encode("the")], params={"max_new_tokens": 100_000}, on_step=lambda deltas: started.set())
    e.submit(running)
    assert started.wait(60)
    child = e.child
    assert e.stop_at_exit and len(child.threads) == 2 and all(t.is_alive() for t in child.threads)
    e.stop()
    assert not child.process.is_alive() and not any(t.is_alive() for t in child.threads)
    assert running.future.result(timeout=1)[0].tokens > 0  # it ended with what it had
