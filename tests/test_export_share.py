"""Ready to publish: the Hugging Face folder's model card, and --push-to-hub against a stand-in Hub on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from export_helpers import PRESET_ARCHS, make_run
from standin_hub import HubHandler, free_port, hub_env, serve

from psyduck.interop import export
from psyduck.io import write_json_atomic
from psyduck.tokenizer import Tokenizer, load_tokenizer

pytest.importorskip("huggingface_hub")

ROWS = [
    {"step": 20, "tokens": 10240, "train_loss": 4.5, "val_loss": 4.61, "val_bpb": 1.9, "elapsed_s": 60.0},
    {"step": 40, "tokens": 20480, "train_loss": 3.1, "val_loss": 3.21, "val_bpb": 1.2345, "elapsed_s": 123.0},
]
TASKS = {"tasks": {"hellaswag": {"acc": 0.29, "acc_stderr": 0.01, "acc_norm": 0.31, "acc_norm_stderr": 0.012,
                                 "samples": 100, "limit": 100, "checkpoint": None}}}
PNG = b"\x89PNG\r\n\x1a\n" + b"not really a picture, but copied byte for byte"


@pytest.fixture(scope="module")
def bpe(tiny_data: Path) -> Tokenizer:
    return load_tokenizer(tiny_data)


def trained_looking_run(root: Path, tok: Tokenizer, preset: str) -> Path:
    """A run folder with the files training and `psyduck tasks` leave: metrics, scores, loss curve."""
    make_run(root, tok, **PRESET_ARCHS[preset])
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    write_json_atomic(root / "tasks.json", TASKS)
    (root / "loss_curve.png").write_bytes(PNG)
    return root


def test_model_card_holds_the_runs_figures(bpe, tmp_path):
    from psyduck.runs import load_run

    run = trained_looking_run(tmp_path / "seed", bpe, "seed-60m")
    out = export(run, "hf", tmp_path / "seed-hf")
    card = (out / "README.md").read_text()
    model, _ = load_run(run)
    for figure in (
        f"- {model.num_params() / 1e6:.2f}M parameters", "`transformers` class `PsyDuckForCausalLM`",
        "2 blocks, width 32, 4 heads (4 key/value), FFN 128, context 32 tokens",
        "positions sinusoidal, norm layernorm (pre-norm), activation relu, untied embeddings, biases on, output-layer bias",
        f"- tokenizer: {bpe.name}, {bpe.vocab_size} tokens",
        "- trained 40 steps, 20,480 tokens, in 2.0 min",
        "- final validation loss 3.2100 (step 40)", "- bits per byte 1.2345",
        "| hellaswag | acc | 0.2900 | 0.0100 | 100 |", "| hellaswag | acc_norm | 0.3100 | 0.0120 | 100 |",
        "![loss curve](loss_curve.png)", 'AutoModelForCausalLM.from_pretrained("seed-hf", trust_remote_code=True)',
        'AutoTokenizer.from_pretrained("seed-hf", trust_remote_code=True)',
    ):
        assert figure in card, figure
    assert card.count("| hellaswag |") == 2  # the metrics, not the settings beside them
    assert (out / "loss_curve.png").read_bytes() == PNG
    plain = export(make_run(tmp_path / "tiny", bpe, **PRESET_ARCHS["tiny"]) and tmp_path / "tiny", "hf", tmp_path / "tiny-hf")
    card = (plain / "README.md").read_text()
    assert 'from_pretrained("tiny-hf")' in card and "## Results" not in card and "loss_curve" not in card


# ---------------------------------------------------------------------------------------------
# --push-to-hub
# ---------------------------------------------------------------------------------------------

class StandInHub(HubHandler):
    """Answers the calls an upload makes (create repo, check the card's YAML, preupload, commit), recording them."""

    def do_POST(self) -> None:  # noqa: N802
        data = self.record()
        base = f"{self.server.endpoint}/user/demo"
        if self.path == "/api/repos/create":
            return self.reply({"url": base})
        if self.path == "/api/validate-yaml":  # the model card's metadata block
            return self.reply({"errors": [], "warnings": []})
        if self.path == "/api/models/user/demo/preupload/main":
            files = json.loads(data)["files"]
            return self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if self.path == "/api/models/user/demo/commit/main":
            return self.reply({"commitUrl": f"{base}/commit/{'1' * 40}", "commitOid": "1" * 40})
        return self.reply({"error": "not here"}, 404)

    def do_GET(self) -> None:  # noqa: N802
        self.reply({"error": "not here"}, 404)


@pytest.fixture()
def hub() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with serve(StandInHub) as (endpoint, requests):
        yield endpoint, requests


def test_push_to_hub_uploads_every_file_of_the_folder(bpe, hub, tmp_path):
    endpoint, requests = hub
    run = trained_looking_run(tmp_path / "demo", bpe, "cpu-small")
    out = tmp_path / "demo-hf"
    r = run_cli("export", str(run), "--out", str(out), "--push-to-hub", "user/demo", env=hub_env(tmp_path, endpoint))
    assert r.returncode == 0, r.stderr
    assert f"pushed {out} -> {endpoint}/user/demo" in r.stdout
    paths = [q["path"] for q in requests]
    assert paths[0] == "/api/repos/create" and paths[-1] == "/api/models/user/demo/commit/main"
    assert "/api/models/user/demo/preupload/main" in paths
    assert all(q["auth"] == "Bearer hf_test_token" for q in requests)
    assert json.loads(requests[0]["body"])["name"] == "demo"
    lines = [json.loads(line) for line in requests[-1]["body"].decode().splitlines()]
    uploaded = {v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
    on_disk = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "loss_curve.png"} <= set(on_disk)
    assert uploaded == on_disk
    assert 'AutoModelForCausalLM.from_pretrained("user/demo")' in on_disk["README.md"].decode()  # loads from the Hub


def test_push_to_hub_offline_or_without_a_token_is_one_line(bpe, tmp_path):
    run = make_run(tmp_path / "demo", bpe, **PRESET_ARCHS["tiny"]) and tmp_path / "demo"
    out = tmp_path / "demo-hf"
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = run_cli("export", str(run), "--out", str(out), "--push-to-hub", "user/demo", env=hub_env(tmp_path, endpoint))
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert r.stderr.startswith(f"psyduck: error: cannot reach the Hugging Face Hub at {endpoint} (") and r.stderr.endswith(
        f"); the export is in {out}: push it later with `hf upload user/demo {out}`\n"
    ) and r.stderr.count("\n") == 1
    assert (out / "model.safetensors").exists()  # the export itself is kept
    r = run_cli("export", str(run), "--out", str(tmp_path / "b"), "--push-to-hub", "user/demo",
                env=hub_env(tmp_path, endpoint, token=None))
    assert r.returncode == 2 and r.stderr == (
        "psyduck: error: --push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`\n"
    )
    assert not (tmp_path / "b").exists()  # refused before exporting
    r = run_cli("export", str(run), "--out", str(tmp_path / "b"), "--push-to-hub", "user/demo",
                env={**hub_env(tmp_path, endpoint), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stderr == (
        "psyduck: error: --push-to-hub cannot upload while HF_HUB_OFFLINE is set; unset it to push\n"
    )
    r = run_cli("export", str(run), "--format", "gguf", "--push-to-hub", "user/demo", env=hub_env(tmp_path, endpoint))
    assert r.returncode == 2 and r.stderr == (
        "psyduck: error: --push-to-hub uploads a Hugging Face folder; use it with --format hf, not gguf\n"
    )


@pytest.mark.parametrize("variant", [{"qk_norm": True}, {"logit_softcap": 15.0}])
@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_recipe_variants_no_format_computes_are_refused(bpe, tmp_path, fmt, variant):
    run = tmp_path / "run"
    make_run(run, bpe, **{**PRESET_ARCHS["cpu-small"], **variant})
    r = run_cli("export", str(run), "--format", fmt, "--out", str(tmp_path / "out"))
    setting = {"qk_norm": "model.qk_norm=true", "logit_softcap": "model.logit_softcap=15"}[next(iter(variant))]
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    assert r.stderr.strip().splitlines()[-1] == (
        f"psyduck: error: cannot export {run}: it was trained with {setting}, which no export format computes yet; "
        "export a run trained without them"
    )
