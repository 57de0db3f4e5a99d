"""Serving throughput: `psyduck serve` with continuous batching against the same server without.

    python benchmarks/serve_throughput.py            # cpu-small shape, random weights, 1/4/16 clients
    python benchmarks/serve_throughput.py --quick    # the tiny preset, a smoke run (seconds)

The server runs in a subprocess of its own (this file, `--serve`), holding a randomly initialised
model of the preset's shape (the same seed on every side, so the same weights), with the torch
thread count `psyduck serve` sets (`decode_threads`: one for a model this size), three times:
`--batching on` as `psyduck serve` runs it (the batch in a child process: serve/engine_process.py),
`batching_on_thread` (`--engine thread`: the batch in a thread of the server's process, sharing
its interpreter lock with the event loop) and `--batching off`, each with room for 16 requests at
once. For each count of clients (1, 4, 16), that many threads of the real `openai` package stream
completions from 127.0.0.1 at the same moment (each `--tokens` tokens, ignore_eos, temperature 0.8, its own seed),
bounded by a timeout. Reported per side and count: total generated tokens/s (all clients' tokens
over the wall time from the first request to the last token) and the p50/p95 time to first token;
`ratio_vs_off` is batching on's tokens/s over off's (`ratio_vs_thread`: over the thread engine's),
`scaling_vs_1` each count's over 1 client's.
Both servers stream with `--stream-interval` (default: `psyduck serve`'s; 0 sends one event per
token). Each round's clients are made, connected and warmed up before its clock starts, then
released together; the counts take turns, `--rounds` times (default 9), and each reports its
median round. `scaling_vs_1_paired` is the median over rounds of each round's tokens/s over the
1-client rounds on either side of it (their geometric mean; one more 1-client round closes the
series): a round lasts about a second and this host's speed drifts between rounds (one-client
rounds moved 306-527 tokens/s within one run), which bracketing takes out whichever way it goes.
`scaling_vs_1_before` pairs with the round before only (this benchmark's figure until 2026-12-04).

The clients share the two cores with the server, and the `openai` package spends CPU on every
chunk it parses. `client_ceiling` measures that alone: the same clients against a stand-in server
(`--canned`: plain asyncio, no model) that answers every request with `--tokens` ready-made chunks
of `psyduck serve`'s exact shape at once, so its tokens/s is the most any server could show to these
clients on this machine; `ceiling_vs_1` sets it against batching on's one client. `engine_only`
is the other half: the server's `Batch` stepped in this process with 1, 4 and 16 jobs, no HTTP and
no clients, at `psyduck serve`'s thread count: what the model side alone can generate.
Prints one JSON object, its last line.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine

CLIENTS = (1, 4, 16)


def build(preset: str, quick: bool):
    """(model, tokenizer): the preset's shape, random weights (seed 0)."""
    import torch

    from psyduck.config import get_preset
    from psyduck.model import GPT
    from psyduck.tokenizer import train_bpe

    cfg = get_preset(preset)
    if quick:
        words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "over", "hill", "and", "one", "two", "three", "four", "five"]
        tok = train_bpe([" ".join(words[(i * 7) % len(words):] + words) for i in range(200)], 300)
    else:
        from common import bench_data

        tok = bench_data(cfg.data.tokenizer).tokenizer()
    cfg.model.vocab_size = tok.vocab_size
    cfg.model.dropout = 0.0
    torch.manual_seed(0)
    return GPT(cfg.model).eval(), tok


def serve(args: argparse.Namespace) -> None:
    """The server side (a subprocess): listen on --port until killed."""
    import uvicorn

    from psyduck.cli import set_decode_threads
    from psyduck.serve.app import create_app

    model, tok = build(args.preset, args.quick)
    app = create_app(model=model, tokenizer=tok, model_name="bench", max_concurrency=16, max_queue=16,
                     max_tokens_cap=4096, batching=args.batching != "off", stream_interval=args.stream_interval,
                     engine="thread" if args.batching == "thread" else "auto")
    set_decode_threads(model, "cpu", None)  # the thread count `psyduck serve` uses (one, for this size)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def canned(args: argparse.Namespace) -> None:
    """The stand-in server (a subprocess): every POST gets --tokens chunks of /v1/completions' stream
    shape (one token each), the usage chunk and [DONE], written at once; what the clients cost, with no model behind."""
    import asyncio
    import json

    tokens = args.tokens or 128
    chunk = {"id": "cmpl-0", "object": "text_completion", "created": 0, "model": "bench",
             "choices": [{"text": " the", "index": 0, "logprobs": None, "finish_reason": None}]}
    last = {**chunk, "choices": [{**chunk["choices"][0], "finish_reason": "length"}]}
    usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": tokens, "total_tokens": tokens + 2}}
    events = [f"data: {json.dumps(e)}\n\n" for e in [chunk] * (tokens - 1) + [last, usage]] + ["data: [DONE]\n\n"]
    body = "".join(f"{len(e.encode()):x}\r\n{e}\r\n" for e in events).encode() + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on this connection
                header = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in header.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):  # the client closed the connection
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", args.port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def engine_only(preset: str, quick: bool, tokens: int) -> list[dict]:
    """Tokens/s of the server's `Batch` alone: `clients` jobs joined at once, stepped to the end."""
    import threading

    import torch

    from psyduck.cli import set_decode_threads
    from psyduck.generate import DecodeWeights, GenerationParams
    from psyduck.serve.batch import Batch, Job

    model, tok = build(preset, quick)
    before = torch.get_num_threads()
    set_decode_threads(model, "cpu", None)
    weights = DecodeWeights.build(model, batched=True)  # what `psyduck serve` batches with (serve/state.py)
    prompt = tok.encode("the cat")
    rows = []
    try:
        for clients in (1, *CLIENTS):  # the first round warms up
            batch = Batch(model, tok, weights)
            jobs = [Job([prompt], 1, GenerationParams(max_new_tokens=tokens, temperature=0.8, seed=i, ignore_eos=True),
                        threading.Event()) for i in range(clients)]
            start = time.perf_counter()
            batch.join(*jobs)
            while not batch.empty:
                batch.step()
            seconds = time.perf_counter() - start
            total = sum(c.tokens for job in jobs for c in job.future.result())
            rows.append({"clients": clients, "tokens": total, "seconds": round(seconds, 3),
                         "tokens_per_s": round(total / seconds, 2)})
    finally:
        torch.set_num_threads(before)
    return rows[1:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def one_client(client, seed: int, tokens: int, start: threading.Barrier) -> tuple[float, int, float]:
    """(time to first token, tokens received, end time) of one streamed completion, begun when
    every client of the round is ready (`start`)."""
    start.wait()
    t0 = time.perf_counter()
    first, count = None, 0
    for chunk in client.completions.create(model="bench", prompt="the cat", max_tokens=tokens, temperature=0.8,
                                           seed=seed, stream=True, stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True}):
        if chunk.choices:
            first = first if first is not None else time.perf_counter() - t0
        if chunk.usage is not None:  # a busy server sends several tokens in one chunk: the last one counts them
            count = chunk.usage.completion_tokens
    return first or 0.0, count, time.perf_counter()


def measure(port: int, clients: int, tokens: int, timeout: float) -> dict:
    """`clients` streams at once. Each client (an `openai.OpenAI`, its connection open) is made and
    warmed up before the clock starts, as a deployed client would be: made inside the round, 16 of
    them took the two cores ~0.65 s, landing on the round's first steps and staggering its starts."""
    import openai

    pool = [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=timeout)
            for _ in range(clients)]
    for client in pool:  # warm up: the connection, the engine thread, the first allocations
        client.completions.create(model="bench", prompt="the cat", max_tokens=2)
    start = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(clients) as threads:
        running = [threads.submit(one_client, client, i, tokens, start) for i, client in enumerate(pool)]
        start.wait()
        begin = time.perf_counter()
        results = [r.result() for r in running]
    end = max(r[2] for r in results)
    ttft = sorted(r[0] for r in results)
    total = sum(r[1] for r in results)
    return {
        "clients": clients, "tokens": total, "seconds": round(end - begin, 3), "tokens_per_s": round(total / (end - begin), 2),
        "ttft_p50_s": round(statistics.median(ttft), 4), "ttft_p95_s": round(ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 4),
    }


def median_round(rounds: list[dict]) -> dict:
    """The round of median tokens/s, with every round's tokens/s beside it (this host moves)."""
    ordered = sorted(rounds, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny preset, 16 tokens per client: a smoke run")
    p.add_argument("--preset", default=None, help="model shape (default cpu-small; tiny with --quick)")
    p.add_argument("--tokens", type=int, default=0, help="tokens per client (default 128; 16 with --quick)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one client may take")
    p.add_argument("--stream-interval", type=float, default=None, metavar="SECONDS",
                   help="the servers' --stream-interval (default: psyduck serve's)")
    p.add_argument("--rounds", type=int, default=9, help="rounds per count of clients; the median one is reported (default 9)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--batching", default="on", help=argparse.SUPPRESS)
    p.add_argument("--canned", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.preset = args.preset or ("tiny" if args.quick else "cpu-small")
    if args.stream_interval is None:
        from psyduck.serve.pacing import STREAM_INTERVAL

        args.stream_interval = STREAM_INTERVAL
    if args.serve:
        canned(args) if args.canned else serve(args)
        return
    tokens = args.tokens or (16 if args.quick else 128)
    sides = {}
    for batching in ("on", "thread", "off", "canned"):
        port = free_port()
        cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--batching", batching, "--preset", args.preset,
               "--tokens", str(tokens), "--stream-interval", str(args.stream_interval)]
        proc = subprocess.Popen(cmd + (["--quick"] if args.quick else []) + (["--canned"] if batching == "canned" else []))
        try:
            wait_up(port, proc)
            rounds: dict[int, list[dict]] = {n: [] for n in CLIENTS}
            for _ in range(args.rounds):  # the counts take turns, so a slow spell of the host falls on all
                for n in CLIENTS:
                    rounds[n].append(measure(port, n, tokens, args.timeout))
            ones = [r["tokens_per_s"] for r in rounds[1]] + [measure(port, 1, tokens, args.timeout)["tokens_per_s"]]
            sides[batching] = [median_round(rounds[n]) for n in CLIENTS]
            for row, n in zip(sides[batching], CLIENTS, strict=True):
                speeds = [r["tokens_per_s"] for r in rounds[n]]
                bracketed = [x / (a * b) ** 0.5 for x, a, b in zip(speeds, ones, ones[1:])]
                row["scaling_vs_1_by_round"] = [round(x, 2) for x in bracketed]
                row["scaling_vs_1_paired"] = round(statistics.median(bracketed), 2)
                row["scaling_vs_1_before"] = round(statistics.median(x / a for x, a in zip(speeds, ones)), 2)
            sides[batching][0]["closing_round_tokens_per_s"] = ones[-1]
        finally:
            proc.terminate()
            proc.wait(30)
    on, thread, off, ceiling = sides["on"], sides["thread"], sides["off"], sides["canned"]
    for row, other, same_process in zip(on, off, thread, strict=True):
        row["ratio_vs_off"] = round(row["tokens_per_s"] / other["tokens_per_s"], 2)
        row["ratio_vs_thread"] = round(row["tokens_per_s"] / same_process["tokens_per_s"], 2)
    for side in (on, thread, off):
        for row in side:
            row["scaling_vs_1"] = round(row["tokens_per_s"] / side[0]["tokens_per_s"], 2)
    for row in ceiling:
        row["ceiling_vs_1"] = round(row["tokens_per_s"] / on[0]["tokens_per_s"], 2)
    alone = engine_only(args.preset, args.quick, tokens)
    for row in alone:
        row["scaling_vs_1"] = round(row["tokens_per_s"] / alone[0]["tokens_per_s"], 2)
    import torch

    emit({"benchmark": "serve_throughput", "preset": args.preset, "tokens_per_client": tokens,
          "stream_interval_s": args.stream_interval,
          "batching_on": on, "batching_on_thread": thread, "batching_off": off,
          "client_ceiling": ceiling, "engine_only": alone, "machine": machine(torch.device("cpu"))})


if __name__ == "__main__":
    main()
