"""GGUF (llama.cpp) and ollama exports: every tensor read back, per tensor type; metadata; refusals; llama.cpp itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import ARCHS, BLOCK, PRESET_ARCHS, cli, make_run

from psyduck import PsyDuckError
from psyduck.config import ModelConfig
from psyduck.interop import export
from psyduck.interop.gguf_quant import Q8_0_TOLERANCE, tensor_type
from psyduck.model import GPT, sinusoidal_positions
from psyduck.tokenizer import EOT, Tokenizer, load_tokenizer

gguf = pytest.importorskip("gguf")

KINDS = {k: ARCHS[k] for k in ("gpt2-tied", "gpt2-untied-gqa-nobias", "gpt2-sinusoidal", "llama-mha", "llama-gqa-bias",
                                "arcee-relu2-tied", "arcee-relu2-untied-gqa")}
GGML = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}


@pytest.fixture(scope="module")
def bpe(tiny_data: Path) -> Tokenizer:
    return load_tokenizer(tiny_data)


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
    zeros = lambda n: torch.zeros(n)
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
            if arch == "llama":  # arcee's FFN has no gate: down(relu(up(x))²)
                exp[b + "ffn_gate.weight"] = sd[p + "ffn.gate.weight"]
            if qkv_b is not None:
                qb, kb, vb = qkv_b.split([H * hs, Hkv * hs, Hkv * hs])
                exp[b + "attn_q.bias"], exp[b + "attn_k.bias"] = interleave_rows(qb, H), interleave_rows(kb, Hkv)
                exp[b + "attn_v.bias"] = vb
                for name, key in (("attn_output", "attn.proj"), ("ffn_up", "ffn.up"), ("ffn_down", "ffn.down"), ("ffn_gate", "ffn.gate")):
                    exp[f"{b}{name}.bias"] = sd[p + key + ".bias"]
    return exp


def read_back(t, shape: tuple[int, ...]) -> np.ndarray:
    """A GGUF tensor's values as float32, dequantized by the gguf package itself."""
    return np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32).reshape(shape)


def assert_within_type(name: str, kind: str, got: np.ndarray, want: np.ndarray) -> None:
    """f32: exact; f16: float16 rounding (half a unit in the last place); q8_0: its stated tolerance per block."""
    if kind == "f32":
        assert np.array_equal(got, want), name
    elif kind == "f16":
        assert np.array_equal(got, want.astype(np.float16).astype(np.float32)), name
        assert np.all(np.abs(got - want) <= np.abs(want) * 2.0**-11 + 2.0**-25), name
    else:
        blocks_want, blocks_got = want.reshape(-1, 32), got.reshape(-1, 32)
        step = np.abs(blocks_want).max(axis=1, keepdims=True) / 127
        err = np.abs(blocks_got - blocks_want)
        assert np.all(err <= Q8_0_TOLERANCE * step + 1e-12), name
        assert err.max() > 0, name  # really quantized


CASES = [(k, "f32") for k in KINDS] + [("gpt2-tied", "f16"), ("llama-gqa-bias", "f16"), ("gpt2-untied-gqa-nobias", "q8_0"),
                                      ("llama-mha", "q8_0"), ("gpt2-sinusoidal", "q8_0"), ("arcee-relu2-tied", "f16"),
                                      ("arcee-relu2-untied-gqa", "q8_0")]


@pytest.mark.parametrize(("kind", "quant"), CASES)
def test_gguf_holds_every_tensor_and_the_metadata(kind, quant, bpe, tmp_path):
    model = make_run(tmp_path / "run", bpe, **KINDS[kind])
    arch = kind.split("-")[0]
    path = export(tmp_path / "run", "gguf", tmp_path / "model.gguf", quant=quant)
    reader = gguf.GGUFReader(str(path))
    exp = expected_gguf(model, arch)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(exp)
    kinds = set()
    for name, t in got.items():
        want = exp[name].numpy()
        kind_of = tensor_type(name, want.shape, quant)
        kinds.add(kind_of)
        assert t.tensor_type == getattr(gguf.GGMLQuantizationType, GGML[kind_of]), name
        assert_within_type(name, kind_of, read_back(t, want.shape), want)
    assert quant in kinds and ("f32" in kinds)  # 1-D tensors stay float32

    f = gguf_fields(reader)
    c = model.config
    assert f["general.architecture"] == arch and f["general.file_type"] == FILE_TYPE[quant]
    assert f[f"{arch}.context_length"] == BLOCK and f[f"{arch}.embedding_length"] == c.d_model
    assert f[f"{arch}.block_count"] == c.n_layer and f[f"{arch}.feed_forward_length"] == c.ffn_hidden
    assert f[f"{arch}.attention.head_count"] == c.n_head
    if arch in ("llama", "arcee"):
        assert f[f"{arch}.attention.head_count_kv"] == c.kv_heads
        assert f[f"{arch}.rope.freq_base"] == pytest.approx(c.rope_theta)
        assert f[f"{arch}.rope.dimension_count"] == c.head_size
        assert f[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
        assert f[f"{arch}.vocab_size"] == c.vocab_size
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



def test_q8_0_falls_back_to_f16_where_rows_do_not_split_into_blocks(bpe, tmp_path):
    model = make_run(tmp_path / "run", bpe, d_model=40, n_head=4, **KINDS["gpt2-tied"])  # rows of 40: not 32-blocks
    reader = gguf.GGUFReader(str(export(tmp_path / "run", "gguf", tmp_path / "m.gguf", quant="q8_0")))
    exp = expected_gguf(model, "gpt2")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q8_0"  # 160 = 5 blocks
    for t in reader.tensors:
        want = exp[t.name].numpy()
        assert_within_type(t.name, tensor_type(t.name, want.shape, "q8_0"), read_back(t, want.shape), want)


def test_gguf_carries_the_run_chat_template_as_jinja(bpe, tmp_path):
    """tokenizer.chat_template: the fine-tuned run's template (markers), or the plain one for a base model."""
    jinja2 = pytest.importorskip("jinja2")
    from psyduck.chat import marker_template, plain_template

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is Paris?"}]
    make_run(tmp_path / "chat", bpe, **KINDS["llama-mha"])
    marker_template().save(tmp_path / "chat")
    make_run(tmp_path / "base", bpe, **KINDS["gpt2-tied"])
    for run, template in (("chat", marker_template()), ("base", plain_template())):
        reader = gguf.GGUFReader(str(export(tmp_path / run, "gguf", tmp_path / f"{run}.gguf")))
        stored = reader.fields["tokenizer.chat_template"].contents()
        assert stored == template.jinja
        rendered = jinja2.Environment().from_string(stored).render(messages=conversation, add_generation_prompt=True)
        assert rendered == template.render(conversation)
    assert "<|assistant|>" in marker_template().render(conversation) and "Assistant:" in plain_template().render(conversation)
    (tmp_path / "chat" / "chat_template.json").write_text("{")
    with pytest.raises(PsyDuckError, match="chat_template.json is corrupt"):
        export(tmp_path / "chat", "gguf", tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


def test_quantized_export_prints_size_and_measured_agreement(bpe, tmp_path, capsys):
    make_run(tmp_path / "run", bpe, **KINDS["llama-mha"])
    out = tmp_path / "m.gguf"
    r = cli(capsys, "export", str(tmp_path / "run"), "--format", "gguf", "--quant", "q8_0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = re.search(rf"^{re.escape(str(out))}: ([0-9.]+) MB \(q8_0\); next-token agreement with float32: ([0-9.]+)% "
                  r"of (\d+) positions of a sample text$", r.stdout, re.MULTILINE)
    assert m, r.stdout
    assert float(m[1]) == pytest.approx(out.stat().st_size / 1e6, abs=0.051)
    assert 90.0 <= float(m[2]) <= 100.0 and int(m[3]) >= BLOCK
    r = cli(capsys, "export", str(tmp_path / "run"), "--format", "gguf", "--out", str(tmp_path / "f.gguf"))
    assert f"{tmp_path / 'f.gguf'}: " in r.stdout and "(f32); float32, the weights exactly" in r.stdout
    assert (tmp_path / "f.gguf").stat().st_size > 3 * out.stat().st_size


def test_ollama_folder_has_the_gguf_and_a_modelfile(bpe, tmp_path, capsys):
    make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    r = cli(capsys, "export", str(tmp_path / "run"), "--format", "ollama", "--out", str(tmp_path / "ol"))
    assert r.returncode == 0, r.stderr
    assert f"run it: ollama create run -f {tmp_path / 'ol' / 'Modelfile'}" in r.stdout
    assert f"{tmp_path / 'ol' / 'model.gguf'}: " in r.stdout and ".tmp-" not in r.stdout
    assert sorted(p.name for p in (tmp_path / "ol").iterdir()) == ["Modelfile", "model.gguf"]
    reader = gguf.GGUFReader(str(tmp_path / "ol" / "model.gguf"))
    assert reader.fields["general.file_type"].contents() == FILE_TYPE["q8_0"]  # ollama's default
    assert (tmp_path / "ol" / "Modelfile").read_text() == (
        'FROM ./model.gguf\nTEMPLATE """{{ .Prompt }}"""\n'
        f'PARAMETER stop "{EOT}"\nPARAMETER temperature 0.7\nPARAMETER top_k 50\nPARAMETER top_p 1.0\n'
        f"PARAMETER repeat_penalty 1.0\nPARAMETER num_predict 100\nPARAMETER num_ctx {BLOCK}\n"
    )


def test_gguf_refuses_architectures_without_an_exact_counterpart_naming_the_nearest(bpe, tmp_path):
    def error(name: str, **arch: object) -> str:
        make_run(tmp_path / name, bpe, **arch)
        with pytest.raises(PsyDuckError) as e:
            export(tmp_path / name, "gguf", tmp_path / f"{name}.gguf")
        assert not (tmp_path / f"{name}.gguf").exists()
        return str(e.value)

    # rope + rmsnorm + GELU (the cpu-small of before issue 21): the non-gated relu2 (arcee) or the gated swiglu (llama)
    assert error("gelu", **ARCHS["arcee-cpu-small"]) == (
        "cannot export a model with pos=rope, norm=rmsnorm, activation=gelu to GGUF (llama.cpp): no llama.cpp "
        "architecture computes it exactly; nearest exportable: train with model.activation=relu2 (arcee) or "
        "model.activation=swiglu (llama), or export this model with --format hf"
    )
    # relu2 with biases: llama.cpp's arcee has no bias tensors (it refuses such a file: "wrong number of tensors")
    assert error("relu2-bias", **ARCHS["arcee-relu2-bias"]) == (
        "cannot export a model with pos=rope, norm=rmsnorm, activation=relu2, bias=true to GGUF (llama.cpp): no "
        "llama.cpp architecture computes it exactly; nearest exportable: train with model.bias=false (arcee) or "
        "model.activation=swiglu (llama), or export this model with --format hf"
    )
    assert error("seed", **PRESET_ARCHS["seed-60m"]) == (
        "cannot export a model with pos=sinusoidal, norm=layernorm, activation=relu to GGUF (llama.cpp): no llama.cpp "
        "architecture computes it exactly; nearest exportable: train with model.activation=gelu (gpt2), "
        "or export this model with --format hf"
    )
    assert error("mix", pos="rope", norm="layernorm", activation="gelu") == (
        "cannot export a model with pos=rope, norm=layernorm, activation=gelu to GGUF (llama.cpp): no llama.cpp "
        "architecture computes it exactly; nearest exportable: train with model.norm=rmsnorm model.activation=swiglu "
        "(llama) or model.norm=rmsnorm model.activation=relu2 model.bias=false (arcee), or export this model with "
        "--format hf"
    )
    # gpt2's math with a trained output bias (the seed's head with GELU): llama.cpp's gpt2 has none
    assert error("bias", pos="sinusoidal", norm="layernorm", activation="gelu", tie_embeddings=False, head_bias=True) == (
        "cannot export to GGUF (llama.cpp): the output layer has a non-zero bias (model.head_bias=true) "
        "and GPT-2 has none; export a model trained with model.head_bias=false"
    )


# ---------------------------------------------------------------------------------------------
# llama.cpp itself (llama-cpp-python), where it is installed
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2-tied", "llama-gqa-bias", "arcee-relu2-tied", "arcee-relu2-untied-gqa"])
def test_llama_cpp_computes_what_psyduck_computes(kind, bpe, tmp_path):
    from psyduck.interop.llamacpp import RUNTIME_MISSING, compare, runtime_available

    if not runtime_available():
        pytest.skip(RUNTIME_MISSING)
    make_run(tmp_path / "run", bpe, **KINDS[kind])
    path = export(tmp_path / "run", "gguf", tmp_path / "m.gguf")
    report = compare(tmp_path / "run", path, n_tokens=BLOCK // 2)
    assert report.tolerance == (5e-3 if KINDS[kind]["activation"] == "gelu" else 1e-3)
    assert report.same_tokens and report.max_logit_diff <= report.tolerance and report.same_greedy, report


@pytest.mark.parametrize(("kind", "quant"), [("arcee-relu2-untied-gqa", "q8_0"), ("arcee-relu2-tied", "f16"),
                                           ("llama-mha", "q8_0"), ("gpt2-tied", "q8_0")])
def test_llama_cpp_runs_quantized_files_close_to_psyduck(kind, quant, bpe, tmp_path):
    """f16 / q8_0 files load and run (q8_0 crashed in the AMX kernels before llamacpp.LlamaCpp kept the
    weights in plain buffers) and pick PsyDuck's next token almost everywhere on the sample text. (llama.cpp's
    q8_0 products round the activations too; measured for q8_0 on these weights: logits within 4-7% of their largest,
    the same next token at 91-98% of the positions; an arcee file without the q/k permutation: 117% and 27%.)"""
    from psyduck.interop.gguf_quant import SAMPLE_TEXT
    from psyduck.interop.llamacpp import RUNTIME_MISSING, LlamaCpp, runtime_available

    if not runtime_available():
        pytest.skip(RUNTIME_MISSING)
    model = make_run(tmp_path / "run", bpe, **KINDS[kind])
    llm = LlamaCpp(export(tmp_path / "run", "gguf", tmp_path / "m.gguf", quant=quant), BLOCK)
    ids = bpe.encode(SAMPLE_TEXT)[: BLOCK * 4]
    try:
        theirs = np.concatenate([llm.logits(ids[i : i + BLOCK]) for i in range(0, len(ids), BLOCK)])
    finally:
        llm.close()
    with torch.no_grad():
        ours = model(torch.tensor(ids).view(-1, BLOCK))[0].reshape(len(ids), -1).numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 0.2 * np.abs(ours).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.8


def test_llama_cpp_gelu_is_psyduck_gelu_through_a_float16_table(bpe, tmp_path):
    """Why gpt2 files get the looser GELU_LOGIT_TOLERANCE: ggml's CPU GELU rounds its input to float16
    and reads the value from a float16 table. PsyDuck with GELU rounded that way is within the exact
    1e-3 of llama.cpp; plain PsyDuck is not (on these large random weights)."""
    from psyduck.interop.gguf_quant import SAMPLE_TEXT
    from psyduck.interop.llamacpp import LOGIT_TOLERANCE, RUNTIME_MISSING, LlamaCpp, runtime_available

    if not runtime_available():
        pytest.skip(RUNTIME_MISSING)

    class TableGelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()

    model = make_run(tmp_path / "run", bpe, **KINDS["gpt2-tied"])
    llm = LlamaCpp(export(tmp_path / "run", "gguf", tmp_path / "m.gguf"), BLOCK)
    ids = bpe.encode(SAMPLE_TEXT)[:BLOCK]
    try:
        theirs = llm.logits(ids)
    finally:
        llm.close()
    with torch.no_grad():
        plain = model(torch.tensor([ids]))[0][0].numpy()
        for block in model.blocks:
            block.ffn.act = TableGelu()
        tabled = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(tabled - theirs).max() <= LOGIT_TOLERANCE < np.abs(plain - theirs).max()


PRESET_GGUF = {"seed-60m": None, "cpu-small": "arcee", "tiny": "gpt2", "gpt2-124m": "gpt2",
               "tinystories-gpu": "llama", "fineweb-edu-gpu": "gpt2"}


@pytest.mark.parametrize("name", list(PRESET_GGUF))
def test_which_presets_reach_llama_cpp(name):
    """README's presets table, pinned: every preset but the seed (ReLU FFN, biased output layer)
    has a llama.cpp architecture that computes it exactly."""
    from psyduck.interop.gguf_export import gguf_arch
    from psyduck.presets import presets

    assert set(PRESET_GGUF) == set(presets)
    if PRESET_GGUF[name] is None:
        with pytest.raises(PsyDuckError, match="nearest exportable"):
            gguf_arch(presets[name].model)
    else:
        assert gguf_arch(presets[name].model) == PRESET_GGUF[name]
