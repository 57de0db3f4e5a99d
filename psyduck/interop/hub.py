"""Publishing an exported folder on the Hugging Face Hub (`--push-to-hub user/repo`).

`huggingface_hub` does the work: it creates the repository (or finds it) and uploads the folder
in one commit. The token is the usual one: the HF_TOKEN environment variable, or the one
`hf auth login` saved. HF_ENDPOINT points it at another server (the tests use one on 127.0.0.1).
Each failure is one line: no token, offline mode, no connection, or what the Hub answered.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from psyduck.errors import PsyDuckError


@dataclass(frozen=True)
class HubTarget:
    """Where an upload goes, checked before anything is exported: repository, server, token."""

    repo_id: str
    endpoint: str
    token: str = field(repr=False)  # never printed


def hub_target(repo_id: str) -> HubTarget:
    """Check what an upload needs before the export runs: huggingface_hub, a user/repo name, a token."""
    try:
        import huggingface_hub
    except ModuleNotFoundError:
        raise PsyDuckError("--push-to-hub needs huggingface_hub; install it with `pip install huggingface_hub`") from None
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PsyDuckError(f"--push-to-hub {repo_id!r} is not a repository name; give it as user/repo")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise PsyDuckError("--push-to-hub cannot upload while HF_HUB_OFFLINE is set; unset it to push")
    token = huggingface_hub.get_token()
    if not token:
        raise PsyDuckError("--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return HubTarget(repo_id, os.environ.get("HF_ENDPOINT") or "https://huggingface.co", token)


def push(folder: Path, target: HubTarget, private: bool = False) -> str:
    """Upload `folder` to model repository `target.repo_id` in one commit; returns the repository's URL."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = target.repo_id
    api = huggingface_hub.HfApi(endpoint=target.endpoint, token=target.token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                          commit_message=f"Upload {folder.name} exported by PsyDuck")
    except HfHubHTTPError as e:
        reason = " ".join(str(e).split())[:200]
        raise PsyDuckError(f"the Hub refused the upload of {folder} to {repo_id}: {reason}") from None
    except (OSError, *_transport_errors()) as e:  # connection refused, DNS, timeouts
        raise _offline(folder, repo_id, target.endpoint, e) from None
    return str(url)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The "could not talk to the server" errors of the HTTP clients huggingface_hub versions use."""
    errors: list[type[Exception]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _offline(folder: Path, repo_id: str, endpoint: str, error: Exception) -> PsyDuckError:
    return PsyDuckError(
        f"cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}); the export is in {folder}: "
        f"push it later with `hf upload {repo_id} {folder}`"
    )
