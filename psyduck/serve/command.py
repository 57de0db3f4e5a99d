"""`psyduck serve RUN`: the CLI wiring of the server (FastAPI, uvicorn and torch load only when it runs)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from psyduck.cli import THREADS_HELP
from psyduck.errors import PsyDuckError
from psyduck.serve.pacing import STREAM_INTERVAL


def register(subparsers) -> None:
    """Add the `serve` subcommand to the `psyduck` parser."""
    s = subparsers.add_parser(
        "serve", help="an OpenAI-compatible API and a browser playground for a run",
        description="Serve a trained run: POST /v1/completions and /v1/chat/completions (OpenAI's API), the playground at /, "
        "loss curves at /runs/NAME, the schema at /openapi.json.",
    )
    s.add_argument("run", help="a run folder written by `psyduck train`")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 and /api")
    s.add_argument("--max-tokens-cap", type=int, default=512, help="largest max_tokens a request may ask for (default 512)")
    s.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted (default: the model's context)")
    s.add_argument("--max-concurrency", type=int, default=None,
                   help="generations running at once (default 16, or 4 with --batching off); each running continuation "
                   "holds a KV cache of 2 x n_layer x block_size x d_kv floats (cpu-small 1 MB, gpt2-124m 75 MB)")
    s.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot before new ones get 429 (default 16)")
    s.add_argument("--max-body-mb", type=float, default=8.0,
                   help="largest request body in megabytes; larger ones get 413 before they are read (default 8)")
    s.add_argument("--batching", choices=("on", "off"), default="on",
                   help="on: one forward pass per step for all requests (continuous batching); off: a thread per request")
    s.add_argument("--engine", choices=("auto", "process", "thread"), default="auto",
                   help="with batching, where the batch runs: process (a child process, beside the event loop "
                        "instead of sharing its interpreter lock), thread, or auto (process for a CPU model; the default)")
    s.add_argument("--stream-interval", type=float, default=STREAM_INTERVAL, metavar="SECONDS",
                   help=f"send a stream's tokens of up to this many seconds as one event: fewer, longer events cost "
                        f"the server and its clients less under load (default {STREAM_INTERVAL}; 0: one event per token)")
    s.add_argument("--model-name", help="the model id clients use (default: the run folder's name)")
    s.add_argument("--checkpoint", help="a checkpoint folder, or 'best' (default: the newest)")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from psyduck.serve.app import create_app
    except ImportError as e:
        raise PsyDuckError(f"psyduck serve needs FastAPI and uvicorn ({e.name} is missing); pip install 'psyduck[serve]'") from None
    from psyduck.cli import set_decode_threads
    from psyduck.generate import check_threads
    from psyduck.hardware import pick_device

    if not 0 <= args.port <= 65535:
        raise PsyDuckError(f"--port must be between 0 and 65535, got {args.port}")
    check_threads(args.threads)
    device = pick_device(args.device)
    app = create_app(
        args.run, model_name=args.model_name, checkpoint=args.checkpoint, device=str(device),
        api_key=args.api_key, max_tokens_cap=args.max_tokens_cap, max_prompt_tokens=args.max_prompt_tokens,
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, max_body_mb=args.max_body_mb,
        batching=args.batching == "on", stream_interval=args.stream_interval, engine=args.engine,
    )
    set_decode_threads(app.state.psyduck.model, device, args.threads)  # per generation: its own thread team
    if app.state.psyduck.batching:
        app.state.psyduck.start()  # the engine (a child process on a CPU) before the first request, not during it
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(args.host) and args.api_key is None:
        print(f"psyduck: warning: listening on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    print(f"serving {app.state.psyduck.name} on http://{shown}:{port}  (playground: /  API: /v1  schema: /openapi.json)", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a busy port is one clear error instead of a server log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PsyDuckError(f"cannot resolve --host {host!r} ({e.strerror}); use an address like 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise PsyDuckError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
