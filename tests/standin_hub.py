"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests that download from it or upload to it.

    with serve(DatasetRepos, repos={"user/stories": folder}) as (endpoint, requests):
        run_cli("prepare", "hf", "user/stories", ..., env=hub_env(tmp_path, endpoint))

`huggingface_hub` and `datasets` read HF_ENDPOINT when they are imported, so a test points a child
process (the real CLI) at the server through `hub_env`. Every request is recorded (method, path,
Authorization header, body) so a test can say what the client asked for.

`DatasetRepos` answers what `datasets.load_dataset` (datasets 5.2, huggingface_hub 2.4) asks of the
Hub for a dataset repo, stored or streamed, served from a local folder per repo (the files as the
repo holds them): the repo's info at a revision (with its file list), tree listings, and the files
under /datasets/{repo}/resolve/{revision}/{path} with the headers the client checks (ETag,
X-Repo-Commit, Content-Length; byte ranges, which streaming reads ask for). Anything else (the
README.md, loading script or dataset_infos.json a repo may lack) is a 404 with the Hub's
X-Error-Code, as the real one answers for a repo or a file that does not exist.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "c0ffee" + "0" * 34  # the one commit every served repo is at


class StandInServer(ThreadingHTTPServer):
    """The server: what its handler serves (`repos`: repo id -> folder) and every request received."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], repos: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.repos, self.requests = repos, []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class HubHandler(BaseHTTPRequestHandler):
    """Records each request, replies in JSON; subclasses answer the calls their tests make."""

    server: StandInServer

    def record(self) -> bytes:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests.append(
                {"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"), "body": body}
            )
        return body

    def reply(self, obj: Any, code: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def not_found(self, error_code: str = "EntryNotFound") -> None:
        """The Hub's 404: X-Error-Code says whether the repo or the file is missing."""
        self.reply({"error": error_code}, 404, {"X-Error-Code": error_code, "X-Error-Message": error_code})

    def log_message(self, *args: object) -> None:
        pass


REPO_API = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/(?P<what>revision|tree)/(?P<rest>.*))?$")
RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")


class DatasetRepos(HubHandler):
    """Dataset repos read from local folders (see the module docstring), at one commit, COMMIT."""

    def do_GET(self) -> None:  # noqa: N802
        self.record()
        self.answer()

    def do_HEAD(self) -> None:  # noqa: N802
        self.record()
        self.answer()

    def folder(self, repo: str) -> Path | None:
        return self.server.repos.get(repo)

    def answer(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if match := RESOLVE.match(path):
            return self.send_file(match["repo"], match["revision"], match["path"])
        match = REPO_API.match(path)
        if not match or (folder := self.folder(match["repo"])) is None:
            return self.not_found("RepoNotFound")
        if match["what"] is None or match["what"] == "revision":
            if match["what"] and not self.known_revision(match["rest"]):
                return self.not_found("RevisionNotFound")
            return self.reply(self.info(match["repo"], folder))
        if match["what"] == "tree":
            revision, _, under = match["rest"].partition("/")
            if not self.known_revision(revision):
                return self.not_found("RevisionNotFound")
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
            return self.reply(self.tree(folder, under, recursive))
        self.not_found()

    @staticmethod
    def known_revision(revision: str) -> bool:
        return revision in ("main", COMMIT)

    def files(self, folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def info(self, repo: str, folder: Path) -> dict[str, Any]:
        return {
            "id": repo, "sha": COMMIT, "private": False, "gated": False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [], "lastModified": "2024-01-01T00:00:00.000Z", "cardData": {},
            "siblings": [{"rfilename": name} for name in self.files(folder)],
        }

    @staticmethod
    def oid(path: Path) -> str:
        return hashlib.sha1(path.read_bytes()).hexdigest()

    def entry(self, folder: Path, name: str) -> dict[str, Any]:
        path = folder / name
        if path.is_dir():
            return {"type": "directory", "oid": COMMIT, "path": name}
        return {"type": "file", "oid": self.oid(path), "size": path.stat().st_size, "path": name}

    def tree(self, folder: Path, under: str, recursive: bool) -> list[dict[str, Any]]:
        base = folder / under if under else folder
        children = sorted(base.rglob("*") if recursive else base.iterdir())
        return [self.entry(folder, p.relative_to(folder).as_posix()) for p in children]

    def send_file(self, repo: str, revision: str, name: str) -> None:
        folder = self.folder(repo)
        if folder is None:
            return self.not_found("RepoNotFound")
        if not self.known_revision(revision):
            return self.not_found("RevisionNotFound")
        path = folder / name
        if not path.is_file():
            return self.not_found()
        data = path.read_bytes()
        start, end, code = 0, len(data), 200
        if (spec := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))) and self.command == "GET":
            first, last = spec.groups()
            start = int(first) if first else max(0, len(data) - int(last))
            end = min(len(data), int(last) + 1) if first and last else len(data)
            code = 206
        self.send_response(code)
        self.send_header("ETag", f'"{self.oid(path)}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data[start:end])


@contextmanager
def serve(handler: type[HubHandler], repos: dict[str, Path] | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Run `handler` on a free port of 127.0.0.1: yields (endpoint URL, the list of requests received)."""
    server = StandInServer(handler, repos or {})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.endpoint, server.requests
    finally:
        server.shutdown()
        server.server_close()


def hub_env(tmp_path: Path, endpoint: str, token: str | None = "hf_test_token") -> dict[str, str]:
    """The environment of a child process that talks to `endpoint` as the Hub, its caches in `tmp_path`.

    The suite sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE in its own process (conftest.py): a child
    that talks to the stand-in turns them off.
    """
    return {
        "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": token or "", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
    }


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (a Hub that cannot be reached)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
