"""Export to Hugging Face transformers and GGUF, import back: same math, same tokens, clear refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from psyduck import PsyDuckError, load_run
from psyduck.generate import generate
from psyduck.interop import export
from psyduck.interop.hf_export import export_hf
from psyduck.model import GPT
from psyduck.runs import RunFolder, list_checkpoints, read_run_config, save_checkpoint
from psyduck.tokenizer import EOT, Tokenizer, cl100k_base, load_tokenizer

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from export_helpers import ARCHS, BLOCK, PRESET_ARCHS, cli, make_run

TEXT = "The history of the world, in 2024 words: café, 東京 and   spaces.\nNew line!"


@pytest.fixture(scope="module")
def bpe(tiny_data: Path) -> Tokenizer:
    """The 512-token BPE of the shared tiny data set (a trained byte-level BPE)."""
    return load_tokenizer(tiny_data)


KINDS = ARCHS  # every one exports to Hugging Face
HF_CLASS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "arcee": "ArceeForCausalLM", "psyduck": "PsyDuckForCausalLM"}
# the class each preset's architecture exports to
PRESET_CLASS = {"seed-60m": "PsyDuckForCausalLM", "cpu-small": "ArceeForCausalLM", "tiny": "GPT2LMHeadModel",
                "gpt2-124m": "GPT2LMHeadModel", "tinystories-gpu": "LlamaForCausalLM", "fineweb-edu-gpu": "GPT2LMHeadModel"}


def load_hf(folder: Path):
    """AutoModelForCausalLM, trusting the folder's code (used only by PsyDuckForCausalLM folders)."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


def greedy(model: GPT, hf_model, prompt: list[int], eot: int) -> tuple[list[int], list[int]]:
    x = torch.tensor([prompt])
    ours = generate(model, x, max_new_tokens=BLOCK - len(prompt), temperature=0, eot_id=eot)[0].tolist()
    theirs = hf_model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=BLOCK - len(prompt), do_sample=False,
        eos_token_id=eot, pad_token_id=eot,
    )[0].tolist()
    return ours, theirs


def assert_same_model(model: GPT, hf, tok: Tokenizer) -> None:
    """Logits within 1e-4 on random windows, and the same greedy continuation."""
    idx = torch.randint(0, tok.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
    assert ours.std() > 1.0  # the comparison means something: logits are far from uniform
    assert (ours - theirs).abs().max().item() < 1e-4
    prompt = tok.encode("The history")
    a, b = greedy(model, hf, prompt, tok.eot_id)
    assert a == b and len(a) > len(prompt)


@pytest.mark.parametrize("preset", list(PRESET_ARCHS))
def test_every_presets_architecture_exports_to_hf_with_the_same_logits(preset, bpe, tmp_path):
    model = make_run(tmp_path / "run", bpe, **PRESET_ARCHS[preset])
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    hf = load_hf(out)
    assert type(hf).__name__ == PRESET_CLASS[preset]
    assert_same_model(model, hf, bpe)


@pytest.mark.parametrize("kind", list(KINDS))
def test_hf_export_matches_logits_and_greedy_generation(kind, bpe, tmp_path):
    model = make_run(tmp_path / "run", bpe, **KINDS[kind])
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    remote = kind.startswith("psyduck")
    assert ((out / "modeling_psyduck.py").exists(), (out / "configuration_psyduck.py").exists()) == (remote, remote)
    hf = load_hf(out)
    assert type(hf).__name__ == HF_CLASS[kind.split("-")[0]]
    assert hf.config.tie_word_embeddings == KINDS[kind]["tie_embeddings"]
    assert_same_model(model, hf, bpe)


def test_exported_bpe_tokenizer_encodes_like_psyduck(bpe, tmp_path):
    make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    out = export(tmp_path / "run", "hf", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == bpe.encode(TEXT)
    assert hf_tok.decode(bpe.encode(TEXT)) == TEXT
    assert hf_tok.eos_token == EOT and hf_tok.eos_token_id == bpe.eot_id == hf_tok.bos_token_id


def test_psyduck_code_folder_works_in_pipeline_and_batched_padding(bpe, tmp_path):
    """The seed's architecture: pipeline("text-generation") continues like PsyDuck, and a padded batch
    (pad_token set) gives each row what it gives alone."""
    model = make_run(tmp_path / "run", bpe, **PRESET_ARCHS["seed-60m"])
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_psyduck.PsyDuckForCausalLM"
    for name in ("modeling_psyduck.py", "configuration_psyduck.py"):  # the code travels alone
        code = (out / name).read_text()
        assert "import psyduck" not in code and "from psyduck" not in code
    hf = load_hf(out)
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tok.pad_token == EOT
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=tok)
    text = pipe("The history", max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    prompt = bpe.encode("The history")
    ours = generate(model, torch.tensor([prompt]), max_new_tokens=8, temperature=0, eot_id=bpe.eot_id)[0].tolist()
    assert text == bpe.decode(ours[len(prompt):])
    batch = tok(["The history of the world", "A"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1].tolist()[0] == 0  # left padding
    with torch.no_grad():
        padded = hf(**batch).logits[1, -1]
        alone = hf(torch.tensor([bpe.encode("A")])).logits[0, -1]
    assert (padded - alone).abs().max().item() < 1e-4


def test_cl100k_converts_to_a_hf_tokenizer_with_tiktokens_ids(tmp_path):
    tok = cl100k_base()
    make_run(tmp_path / "run", tok, d_model=8, n_head=2, pos="learned", norm="layernorm", activation="gelu", tie_embeddings=True)
    out = export_hf(tmp_path / "run", tmp_path / "hf")  # tiktoken's ranks -> a byte-level BPE tokenizer.json
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = TEXT + " It's 1234567 o'clock;  \t\r\n\n  trailing   \n isn't THEY'LL 🦆 naïve—“ok” 3.14159 >>> {x: [1, 2]}"
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == tok.eot_id == 100257
    assert hf_tok.convert_ids_to_tokens(100276) == "<|endofprompt|>"


# ---------------------------------------------------------------------------------------------
# import-hf
# ---------------------------------------------------------------------------------------------

@pytest.fixture()
def gpt2_folder(bpe, tiny_data, tmp_path) -> Path:
    """A tiny random GPT2LMHeadModel and the shared BPE, saved the way transformers saves them."""
    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=bpe.vocab_size, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=bpe.eot_id, eos_token_id=bpe.eot_id,
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_data / "tokenizer.json"), bos_token=EOT, eos_token=EOT, unk_token=EOT
    )
    fast.save_pretrained(folder)
    return folder


def test_import_hf_generates_like_transformers_and_keeps_training(gpt2_folder, corpus_file, tmp_path, capsys):
    from psyduck.cli import main
    from psyduck.data.prepare import prepare
    from psyduck.train import train

    run = tmp_path / "imported"
    assert main(["import-hf", str(gpt2_folder), "--out", str(run)]) == 0
    assert "imported" in capsys.readouterr().out
    source = RunFolder(run).source()  # the run says where its weights came from
    assert source is not None and source["folder"] == str(gpt2_folder.resolve())
    assert source["importer"].endswith("import-hf") and source["architecture"] == "GPT2LMHeadModel"
    model, tok = load_run(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gpt2_folder)
    prompt = hf_tok("The history of")["input_ids"]
    assert prompt == tok.encode("The history of")
    idx = torch.tensor([prompt])
    with torch.no_grad():
        assert (model(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4
    a, b = greedy(model, hf, prompt, tok.eot_id)
    assert a == b and len(a) > len(prompt)

    # continue training: data prepared with the run's own tokenizer object
    data = prepare("text", load_tokenizer(run), tmp_path / "data", path=str(corpus_file), show_progress=False)
    cfg = read_run_config(run).replace(
        {"data.path": str(data), "max_iters": 3, "eval_interval": 3, "eval_iters": 1, "batch_size": 2, "sample_tokens": 0}
    )
    result = train(cfg, run, resume=True, progress=False)
    assert result["step"] == 3 and math.isfinite(result["val_loss"])
    assert list_checkpoints(run)[-1].name == "step_0000003"
    assert main(["eval", str(run), "--data", str(data), "--max-batches", "1", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"weights imported from {source['model']} ({source['folder']}) on ")


@pytest.mark.parametrize("kind", ["arcee-relu2-untied-gqa", "arcee-relu2-bias", "arcee-cpu-small", "llama-gqa-bias"])
def test_import_hf_reads_llama_and_arcee_folders_back_as_the_same_model(kind, bpe, tmp_path):
    from psyduck.interop.hf_import import import_hf

    model = make_run(tmp_path / "run", bpe, **KINDS[kind])
    folder = export_hf(tmp_path / "run", tmp_path / "hf")
    run = import_hf(folder, tmp_path / "back")
    back, tok = load_run(run)
    fields = ("pos", "norm", "activation", "tie_embeddings", "bias", "head_bias", "kv_heads", "rope_theta", "norm_eps",
              "d_model", "n_layer", "n_head", "ffn_hidden", "vocab_size", "block_size")
    assert {k: getattr(back.config, k) for k in fields} == {k: getattr(model.config, k) for k in fields}
    assert back.config.activation == KINDS[kind]["activation"]  # an Arcee with hidden_act relu2 is relu2 again
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    idx = torch.randint(0, bpe.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], back(idx)[0])
    assert RunFolder(run).source()["architecture"] == HF_CLASS[kind.split("-")[0]]


def test_import_hf_refuses_llama_and_arcee_math_psyduck_does_not_have(bpe, tmp_path):
    from psyduck.interop.hf_import import import_hf

    make_run(tmp_path / "run", bpe, **KINDS["arcee-relu2-tied"])
    folder = export_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())

    def error(**changes: object) -> str:
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(PsyDuckError) as e:
            import_hf(folder, tmp_path / "back")
        assert not (tmp_path / "back").exists()
        return str(e.value)

    assert error(hidden_act="silu") == (
        f"{folder} uses hidden_act 'silu'; PsyDuck computes relu2, relu, gelu_new, gelu_pytorch_tanh, gelu_fast "
        "exactly in arcee models, so this model cannot be imported without changing its outputs"
    )
    assert error(num_hidden_layers=None) == (
        f"{folder}/config.json has no positive integer num_hidden_layers; it is not a complete arcee config"
    )
    assert error(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}) == (
        f"{folder} uses 'yarn' RoPE scaling, which PsyDuck's RoPE does not have"
    )
    assert error(attention_bias=True) == (
        f"{folder} has attention_bias=True but mlp_bias=False; PsyDuck's model.bias puts biases on both or neither"
    )
    assert error(head_dim=4) == f"{folder} has 4 heads of 4 for a width of 32; PsyDuck's heads split the width exactly"
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layers.1.mlp.up_proj" not in k}, str(folder / "model.safetensors"))
    assert error() == f"{folder} is missing the weights of blk.1.ffn_up.weight (llama.cpp's name); the folder is incomplete"


def test_import_hf_reads_pytorch_model_bin_too(gpt2_folder, tmp_path):
    from safetensors.torch import load_file

    from psyduck.interop.hf_import import import_hf

    legacy = tmp_path / "legacy"
    shutil.copytree(gpt2_folder, legacy)
    state = load_file(str(legacy / "model.safetensors"))
    # the original GPT-2 checkpoints: no "transformer." prefix, causal-mask buffers, no lm_head
    torch.save({k.removeprefix("transformer."): v for k, v in state.items()} | {"h.0.attn.bias": torch.ones(1, 1, 4, 4)},
               legacy / "pytorch_model.bin")
    (legacy / "model.safetensors").unlink()
    a = load_run(import_hf(gpt2_folder, tmp_path / "a"))[0].state_dict()
    b = load_run(import_hf(legacy, tmp_path / "b"))[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Errors: one line each
# ---------------------------------------------------------------------------------------------

def test_export_refuses_nan_weights_in_one_line(bpe, tmp_path, capsys):
    model = make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    with torch.no_grad():
        model.blocks[1].ffn.up.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "run", 1, model, None, {})
    r = cli(capsys, "export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert r.stderr == (
        f"psyduck: error: the weights of run {tmp_path / 'run'} (step_0000001) are not finite (1 of "
        f"{sum(p.numel() for p in model.parameters()):,} values are NaN or infinite, the first in blocks.1.ffn.up.weight): "
        "training likely diverged; pick an earlier checkpoint with --checkpoint, or train again with a lower lr\n"
    )
    assert not (tmp_path / "hf").exists()
    from psyduck.cli import main

    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--checkpoint",
                 str(tmp_path / "run" / "checkpoints" / "step_0000000")]) == 0


def test_export_refuses_existing_outputs_without_force(bpe, tmp_path, capsys):
    make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    mine = tmp_path / "mine.gguf"
    mine.write_text("my own file")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for fmt, out in (("gguf", mine), ("hf", folder), ("ollama", folder)):
        r = cli(capsys, "export", str(tmp_path / "run"), "--format", fmt, "--out", str(out))
        assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, fmt
        assert r.stderr == f"psyduck: error: --out {out} already exists; choose another name, or pass --force to replace it\n"
    assert mine.read_text() == "my own file" and (folder / "notes.txt").read_text() == "mine"
    r = cli(capsys, "export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "run"), "--force")
    assert r.returncode == 2 and r.stderr == (
        f"psyduck: error: --out {tmp_path / 'run'} holds a run; export to a folder of its own, e.g. exports/run-hf\n"
    )
    r = cli(capsys, "export", str(tmp_path / "run"), "--format", "gguf", "--out", str(folder))
    assert r.returncode == 2 and r.stderr == (
        f"psyduck: error: --out {folder} is a folder; give the file's name, e.g. {folder / 'model.gguf'}\n"
    )
    export(tmp_path / "run", "gguf", mine, force=True)
    export(tmp_path / "run", "hf", folder, force=True)
    assert mine.read_bytes()[:4] == b"GGUF" and not (folder / "notes.txt").exists()
    assert (folder / "config.json").exists()


def test_export_to_an_unwritable_place_or_with_wrong_flags_is_one_line(bpe, tmp_path, capsys):
    make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a file where a folder would have to be: no permission bits involved (tests may run as root)
    for fmt, name in (("hf", "hf"), ("gguf", "m.gguf"), ("ollama", "ol")):
        out = blocker / name
        r = cli(capsys, "export", str(tmp_path / "run"), "--format", fmt, "--out", str(out))
        assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, fmt
        assert r.stderr == (
            f"psyduck: error: cannot write --out {out}: {blocker} is a file, not a folder; choose a writable place for the export\n"
        )
    r = cli(capsys, "export", str(tmp_path / "run"), "--format", "hf", "--quant", "q8_0", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr == (
        "psyduck: error: --quant is for --format gguf or ollama; a Hugging Face export is float32\n"
    )


def test_export_of_a_missing_run_is_one_line(tmp_path, capsys):
    from psyduck.cli import main

    missing = tmp_path / "nope"
    assert main(["export", str(missing), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    assert capsys.readouterr().err == (
        f"psyduck: error: run folder not found: {missing}; train one with `psyduck train --out {missing}`\n"
    )


def test_import_hf_refuses_folders_that_are_not_gpt2(gpt2_folder, tmp_path):
    from psyduck.interop.hf_import import import_hf

    def error(folder: Path) -> str:
        with pytest.raises(PsyDuckError) as e:
            import_hf(folder, tmp_path / "run")
        return str(e.value)

    suffix = ("; import-hf reads folders written by save_pretrained of GPT2LMHeadModel, LlamaForCausalLM or "
              "ArceeForCausalLM")
    kind = "is not a GPT-2, Llama or Arcee transformers checkpoint"
    assert error(tmp_path / "missing") == f"folder not found: {tmp_path / 'missing'}; point import-hf at a transformers model folder"
    (tmp_path / "empty").mkdir()
    assert error(tmp_path / "empty") == f"{tmp_path / 'empty'} {kind} (no config.json){suffix}"
    bert = tmp_path / "bert"
    shutil.copytree(gpt2_folder, bert)
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert error(bert) == f"{bert} {kind} (config.json has model_type 'bert', expected one of gpt2, llama, arcee){suffix}"
    no_weights = tmp_path / "no_weights"
    shutil.copytree(gpt2_folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert error(no_weights) == f"{no_weights} {kind} (no model.safetensors or pytorch_model.bin){suffix}"
    assert not (tmp_path / "run").exists()
