"""Export to Hugging Face transformers and GGUF, import back: same math, same tokens, clear refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from psyduck import PsyDuckError, load_run
from psyduck.io import write_json_atomic
from psyduck.runs import RunFolder, list_checkpoints, read_run_config, save_checkpoint
from psyduck.config import Config, DataConfig, ModelConfig
from psyduck.interop import export
from psyduck.interop.hf_export import export_hf
from psyduck.generate import generate
from psyduck.model import GPT, sinusoidal_positions
from psyduck.tokenizer import EOT, Tokenizer, cl100k_base, load_tokenizer

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TEXT = "The history of the world, in 2024 words: café, 東京 and   spaces.\nNew line!"
BLOCK = 32


@pytest.fixture(scope="module")
def bpe(tiny_data: Path) -> Tokenizer:
    """The 512-token BPE of the shared tiny data set (a trained byte-level BPE)."""
    return load_tokenizer(tiny_data)


def make_run(root: Path, tok: Tokenizer, seed: int = 0, **model: object) -> GPT:
    """A run folder holding a small random model whose outputs are far from uniform."""
    cfg = ModelConfig(**{"vocab_size": tok.vocab_size, "block_size": BLOCK, "d_model": 32, "n_layer": 2, "n_head": 4,
                         "dropout": 0.0, **model})
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():  # bigger, non-trivial weights: norms and biases away from 1 and 0
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name or name.endswith("bias") else 0.2))
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "config.json", Config(model=cfg, data=DataConfig(tokenizer=tok.name)).to_dict())
    tok.save(root)
    save_checkpoint(root, 0, m, None, {})
    return m.eval()


KINDS = {
    "gpt2-tied": dict(pos="learned", norm="layernorm", activation="gelu", tie_embeddings=True, bias=True),
    "gpt2-untied-gqa-nobias": dict(pos="learned", norm="layernorm", activation="gelu", tie_embeddings=False, bias=False, n_kv_head=2),
    "gpt2-seed-math": dict(pos="sinusoidal", norm="layernorm", activation="relu", tie_embeddings=True, bias=True),
    "llama-mha": dict(pos="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=False, bias=False, rope_theta=500.0, norm_eps=1e-6),
    "llama-gqa-bias": dict(pos="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=True, bias=True, n_kv_head=2),
    "arcee-cpu-small": dict(pos="rope", norm="rmsnorm", activation="gelu", tie_embeddings=True, bias=False),
}
HF_CLASS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "arcee": "ArceeForCausalLM"}


def greedy(model: GPT, hf_model, prompt: list[int], eot: int) -> tuple[list[int], list[int]]:
    x = torch.tensor([prompt])
    ours = generate(model, x, max_new_tokens=BLOCK - len(prompt), temperature=0, eot_id=eot)[0].tolist()
    theirs = hf_model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=BLOCK - len(prompt), do_sample=False,
        eos_token_id=eot, pad_token_id=eot,
    )[0].tolist()
    return ours, theirs


@pytest.mark.parametrize("kind", list(KINDS))
def test_hf_export_matches_logits_and_greedy_generation(kind, bpe, tmp_path):
    model = make_run(tmp_path / "run", bpe, **KINDS[kind])
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == HF_CLASS[kind.split("-")[0]]
    assert hf.config.tie_word_embeddings == KINDS[kind]["tie_embeddings"]
    idx = torch.randint(0, bpe.vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
    assert ours.std() > 1.0  # the comparison means something: logits are far from uniform
    assert (ours - theirs).abs().max().item() < 1e-4
    prompt = bpe.encode("The history")
    a, b = greedy(model, hf, prompt, bpe.eot_id)
    assert a == b and len(a) > len(prompt)


def test_exported_bpe_tokenizer_encodes_like_psyduck(bpe, tmp_path):
    make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    out = export(tmp_path / "run", "hf", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == bpe.encode(TEXT)
    assert hf_tok.decode(bpe.encode(TEXT)) == TEXT
    assert hf_tok.eos_token == EOT and hf_tok.eos_token_id == bpe.eot_id == hf_tok.bos_token_id


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
# GGUF
# ---------------------------------------------------------------------------------------------

def gguf_fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def interleave_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Expected llama.cpp row order, written out index by index: GGUF row 2j (2j+1) of a head is
    Hugging Face row j (j + hs/2)."""
    hs = w.shape[0] // n_head
    order = [h * hs + (j // 2) + (hs // 2) * (j % 2) for h in range(n_head) for j in range(hs)]
    return w[order]


def expected_gguf(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """What every tensor of the file must hold, straight from PsyDuck's state dict."""
    c = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    H, Hkv, hs = c.n_head, c.kv_heads, c.head_size
    exp = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm.weight"]}
    if arch == "gpt2":
        exp["position_embd.weight"] = sd["pos_emb.weight"] if c.pos == "learned" else sinusoidal_positions(BLOCK, c.d_model)
        exp["output_norm.bias"] = sd.get("norm.bias", torch.zeros(c.d_model))
    if not c.tie_embeddings:
        exp["output.weight"] = sd["lm_head.weight"]
    zeros = lambda n: torch.zeros(n)  # noqa: E731
    for i in range(c.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        qkv = sd[p + "attn.qkv.weight"]
        qkv_b = sd.get(p + "attn.qkv.bias")
        q, k, v = qkv.split([H * hs, Hkv * hs, Hkv * hs])
        exp[b + "attn_norm.weight"], exp[b + "ffn_norm.weight"] = sd[p + "norm1.weight"], sd[p + "norm2.weight"]
        exp[b + "attn_output.weight"] = sd[p + "attn.proj.weight"]
        exp[b + "ffn_up.weight"], exp[b + "ffn_down.weight"] = sd[p + "ffn.up.weight"], sd[p + "ffn.down.weight"]
        if arch == "gpt2":
            g = H // Hkv  # kv head j serves query heads j*g .. j*g+g-1
            k_full = torch.cat([k[(h // g) * hs : (h // g + 1) * hs] for h in range(H)])
            v_full = torch.cat([v[(h // g) * hs : (h // g + 1) * hs] for h in range(H)])
            exp[b + "attn_qkv.weight"] = torch.cat([q, k_full, v_full])
            exp[b + "attn_qkv.bias"] = zeros(3 * c.d_model) if qkv_b is None else qkv_b
            for name, key, n in (("attn_norm", "norm1", c.d_model), ("ffn_norm", "norm2", c.d_model),
                                 ("attn_output", "attn.proj", c.d_model), ("ffn_up", "ffn.up", c.ffn_hidden),
                                 ("ffn_down", "ffn.down", c.d_model)):
                exp[f"{b}{name}.bias"] = sd.get(p + key + ".bias", zeros(n))
        else:
            exp[b + "attn_q.weight"], exp[b + "attn_k.weight"] = interleave_rows(q, H), interleave_rows(k, Hkv)
            exp[b + "attn_v.weight"] = v
            exp[b + "ffn_gate.weight"] = sd[p + "ffn.gate.weight"]
            if qkv_b is not None:
                qb, kb, vb = qkv_b.split([H * hs, Hkv * hs, Hkv * hs])
                exp[b + "attn_q.bias"], exp[b + "attn_k.bias"] = interleave_rows(qb, H), interleave_rows(kb, Hkv)
                exp[b + "attn_v.bias"] = vb
                for name, key in (("attn_output", "attn.proj"), ("ffn_up", "ffn.up"), ("ffn_down", "ffn.down"), ("ffn_gate", "ffn.gate")):
                    exp[f"{b}{name}.bias"] = sd[p + key + ".bias"]
    return exp


@pytest.mark.parametrize("kind", ["gpt2-untied-gqa-nobias", "gpt2-tied", "llama-gqa-bias", "llama-mha"])
def test_gguf_holds_every_tensor_and_the_metadata(kind, bpe, tmp_path):
    model = make_run(tmp_path / "run", bpe, **KINDS[kind])
    arch = kind.split("-")[0]
    path = export(tmp_path / "run", "gguf", tmp_path / "model.gguf")
    reader = gguf.GGUFReader(str(path))
    exp = expected_gguf(model, arch)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(exp)
    for name, t in got.items():
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert np.array_equal(np.asarray(t.data), exp[name].numpy()), name

    f = gguf_fields(reader)
    c = model.config
    assert f["general.architecture"] == arch and f["general.file_type"] == 0
    assert f[f"{arch}.context_length"] == BLOCK and f[f"{arch}.embedding_length"] == c.d_model
    assert f[f"{arch}.block_count"] == c.n_layer and f[f"{arch}.feed_forward_length"] == c.ffn_hidden
    assert f[f"{arch}.attention.head_count"] == c.n_head
    if arch == "llama":
        assert f["llama.attention.head_count_kv"] == c.kv_heads
        assert f["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
        assert f["llama.rope.dimension_count"] == c.head_size
        assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    else:
        assert f["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c.norm_eps)
    tj = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    id_to_token = {i: t for t, i in tj["model"]["vocab"].items()}
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.ggml.tokens"] == [id_to_token[i] for i in range(bpe.vocab_size)]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    types = f["tokenizer.ggml.token_type"]
    assert types[bpe.eot_id] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.NORMAL) == bpe.vocab_size - 1
    assert f["tokenizer.ggml.bos_token_id"] == f["tokenizer.ggml.eos_token_id"] == bpe.eot_id


def test_one_gpt2_name_table_reads_both_ways():
    from psyduck.interop.gpt2_names import expected_gpt2_names, hf_name, psyduck_name

    names = expected_gpt2_names(n_layer=2, tied=False)
    assert len(names) == 2 + 2 * 12 + 2 + 1  # wte, wpe; 6 modules x (weight, bias) per layer; ln_f; lm_head
    assert hf_name("blk.1.attn_qkv.weight") == ("transformer.h.1.attn.c_attn.weight", True)
    assert hf_name("output_norm.bias") == ("transformer.ln_f.bias", False)
    assert psyduck_name("transformer.h.1.attn.c_attn.weight") == ("blocks.1.attn.qkv.weight", True)
    assert psyduck_name("h.0.mlp.c_fc.bias") == ("blocks.0.ffn.up.bias", False)  # no prefix: old checkpoints
    assert psyduck_name("lm_head.weight") == ("lm_head.weight", False)
    assert psyduck_name("h.0.attn.bias") is None  # a causal-mask buffer, not a weight
    model = GPT(ModelConfig(vocab_size=64, block_size=8, d_model=16, n_layer=2, n_head=2, tie_embeddings=False,
                            pos="learned", norm="layernorm", activation="gelu", bias=True))
    ours = {psyduck_name(n)[0] for n in names}
    assert ours == set(model.state_dict()) - {"lm_head.bias"}  # every weight GPT-2 has, named once


def test_llama_permutation_keeps_attention_scores_under_llama_cpp_rope():
    """llama.cpp rotates adjacent pairs (2j, 2j+1); Hugging Face and PsyDuck rotate (j, j + hs/2).
    With q/k rows permuted as in the GGUF file, both give the same q·k for every pair of positions."""
    from psyduck.interop.gguf_export import llama_permute
    from psyduck.model import apply_rope, rope_tables

    torch.manual_seed(0)
    H, hs, C, T = 2, 8, 16, 6
    wq, wk, x = torch.randn(H * hs, C), torch.randn(H * hs, C), torch.randn(T, C)
    cos, sin = rope_tables(T, hs, 10_000.0)

    def heads(w: torch.Tensor) -> torch.Tensor:
        return (x @ w.t()).view(T, H, hs).transpose(0, 1)  # (H, T, hs)

    def rope_adjacent(y: torch.Tensor) -> torch.Tensor:  # GPT-J / llama.cpp "normal" rope
        theta = 1.0 / 10_000.0 ** (torch.arange(0, hs, 2).float() / hs)
        ang = torch.arange(T).float()[:, None] * theta  # (T, hs/2)
        a, b = y[..., 0::2], y[..., 1::2]
        return torch.stack([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], dim=-1).flatten(-2)

    ours = apply_rope(heads(wq), cos, sin) @ apply_rope(heads(wk), cos, sin).transpose(-1, -2)
    cpp = rope_adjacent(heads(llama_permute(wq, H))) @ rope_adjacent(heads(llama_permute(wk, H))).transpose(-1, -2)
    assert torch.allclose(ours, cpp, atol=1e-4)


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

def test_export_refuses_architectures_without_an_exact_counterpart(bpe, tmp_path):
    make_run(tmp_path / "mix", bpe, pos="rope", norm="layernorm", activation="gelu")
    with pytest.raises(PsyDuckError) as e:
        export(tmp_path / "mix", "hf", tmp_path / "out")
    assert str(e.value) == (
        "cannot export a model with pos=rope, norm=layernorm, activation=gelu to Hugging Face transformers: "
        "no architecture there computes it exactly; exportable: learned or sinusoidal positions + layernorm + "
        "gelu/relu (GPT-2), rope + rmsnorm + swiglu (Llama), rope + rmsnorm + gelu/relu (Arcee), "
        "e.g. presets tiny, gpt2-124m, cpu-small"
    )
    make_run(tmp_path / "cpu-small", bpe, **KINDS["arcee-cpu-small"])
    with pytest.raises(PsyDuckError) as e:
        export(tmp_path / "cpu-small", "gguf", tmp_path / "x.gguf")
    assert str(e.value) == (
        "cannot export a model with pos=rope, norm=rmsnorm, activation=gelu to GGUF (llama.cpp): "
        "no architecture there computes it exactly; exportable: learned or sinusoidal positions + layernorm + "
        "gelu (gpt2), rope + rmsnorm + swiglu (llama), e.g. presets tiny, gpt2-124m"
    )
    # the seed's recipe: its math maps onto GPT-2, but a trained untied output layer has a bias
    make_run(tmp_path / "seed", bpe, pos="sinusoidal", norm="layernorm", activation="relu", tie_embeddings=False, bias=True,
             head_bias=True)
    with pytest.raises(PsyDuckError) as e:
        export(tmp_path / "seed", "hf", tmp_path / "out")
    assert str(e.value) == (
        "cannot export to Hugging Face transformers: the output layer has a non-zero bias (model.head_bias=true) "
        "and GPT-2 has none; export a model trained with model.head_bias=false"
    )
    assert not (tmp_path / "out").exists()


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

    suffix = "; import-hf reads folders written by GPT2LMHeadModel.save_pretrained"
    assert error(tmp_path / "missing") == f"folder not found: {tmp_path / 'missing'}; point import-hf at a transformers model folder"
    (tmp_path / "empty").mkdir()
    assert error(tmp_path / "empty") == f"{tmp_path / 'empty'} is not a GPT-2-style transformers checkpoint (no config.json){suffix}"
    llama = tmp_path / "llama"
    shutil.copytree(gpt2_folder, llama)
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert error(llama) == f"{llama} is not a GPT-2-style transformers checkpoint (config.json has model_type 'llama', expected 'gpt2'){suffix}"
    no_weights = tmp_path / "no_weights"
    shutil.copytree(gpt2_folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert error(no_weights) == f"{no_weights} is not a GPT-2-style transformers checkpoint (no model.safetensors or pytorch_model.bin){suffix}"
    assert not (tmp_path / "run").exists()
