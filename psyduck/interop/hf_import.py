"""A GPT-2, Llama or Arcee Hugging Face `transformers` folder -> a PsyDuck run you can generate from and keep training.

    psyduck import-hf path/to/gpt2-folder --out runs/imported
    psyduck generate runs/imported --prompt "Once upon a time"
    psyduck train --resume --out runs/imported --data data/imported   # data prepared with its tokenizer

GPT-2 *is* one of PsyDuck's architectures: learned positions, pre-norm LayerNorm, GELU (tanh form),
biases, usually tied embeddings. So the import is a renaming plus one transpose: GPT-2 stores its
linear layers as `Conv1D`, whose weight is (in, out), where `nn.Linear` keeps (out, in). The fused
c_attn rows are [all q heads, all k heads, all v heads], the same order as PsyDuck's qkv.
Llama and Arcee (RoPE, RMSNorm; SwiGLU or a non-gated ReLU² FFN) are PsyDuck architectures too:
their config and weights are read by hf_import_llama.py, the rest of the import is the same.

Design choices:
- Weights are read from model.safetensors (or its shards); a pytorch_model.bin is read with
  `torch.load(weights_only=True)`, which refuses to run code hidden in the pickle.
- Models whose math PsyDuck does not share are refused rather than approximated: exact GELU
  (activation_function "gelu"), attention scaled by layer index, unscaled attention, cross-attention.
- The run folder gets a full config.json (the model from the folder's config, training defaults, and
  data.path pointing at data/<run name>, where you would prepare data with this tokenizer), the
  folder's tokenizer.json, and a step-0 checkpoint with fresh optimizer state, so `psyduck generate`
  and `psyduck train --resume` both work. The tokenizer must be a byte-level BPE with <|endoftext|>,
  as GPT-2's is (tokenizer.json, or vocab.json + merges.txt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError
from psyduck.interop.gpt2_names import expected_gpt2_names, psyduck_name

if TYPE_CHECKING:
    from psyduck.tokenizer import Tokenizer

# GELU written with tanh, which is what PsyDuck's activation="gelu" computes
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACTIVATIONS = {**{name: "gelu" for name in TANH_GELUS}, "relu": "relu"}
MODEL_TYPES = ("gpt2", "llama", "arcee")  # what import-hf reads (config.json's model_type)
DEFAULT_CLASS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "arcee": "ArceeForCausalLM"}


def _not_gpt2(folder: Path, why: str) -> PsyDuckError:
    return PsyDuckError(
        f"{folder} is not a GPT-2, Llama or Arcee transformers checkpoint ({why}); import-hf reads folders "
        "written by save_pretrained of GPT2LMHeadModel, LlamaForCausalLM or ArceeForCausalLM"
    )


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to be a GPT-2, Llama or Arcee (a GPT-2 here, the others in
    hf_import_llama) whose math PsyDuck computes exactly."""
    if not folder.is_dir():
        raise PsyDuckError(f"folder not found: {folder}; point import-hf at a transformers model folder")
    path = folder / "config.json"
    if not path.is_file():
        raise _not_gpt2(folder, "no config.json")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _not_gpt2(folder, f"config.json is not valid JSON: {e}") from None
    if not isinstance(hf, dict) or hf.get("model_type") not in MODEL_TYPES:
        model_type = hf.get("model_type") if isinstance(hf, dict) else None
        raise _not_gpt2(folder, f"config.json has model_type {model_type!r}, expected one of {', '.join(MODEL_TYPES)}")
    if hf["model_type"] != "gpt2":
        return hf
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise PsyDuckError(
            f"{folder} uses activation_function {act!r}; PsyDuck computes {', '.join(ACTIVATIONS)} exactly, "
            "so this model cannot be imported without changing its outputs"
        )
    for key, bad, what in (
        ("scale_attn_by_inverse_layer_idx", True, "attention scaled by 1/layer index"),
        ("scale_attn_weights", False, "unscaled attention scores"),
        ("add_cross_attention", True, "cross-attention layers"),
    ):
        if hf.get(key, not bad) == bad:
            raise PsyDuckError(f"{folder} uses {what} ({key}={bad}), which PsyDuck's GPT does not have")
    return hf


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A PsyDuck ModelConfig computing the same function as this GPT-2 config."""
    return ModelConfig(
        vocab_size=int(hf.get("vocab_size", 50257)),
        block_size=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
        d_model=int(hf.get("n_embd", 768)),
        n_layer=int(hf.get("n_layer", 12)),
        n_head=int(hf.get("n_head", 12)),
        d_ff=int(hf.get("n_inner") or 0),  # None in GPT-2 means 4 * n_embd, PsyDuck's 0 too
        dropout=float(hf.get("resid_pdrop", 0.1)),
        pos="learned",
        norm="layernorm",
        activation=ACTIVATIONS[hf.get("activation_function", "gelu_new")],
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bias=True,
        head_bias=False,  # GPT-2's output layer has none
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder: model.safetensors (or shards), else pytorch_model.bin (or shards)."""
    from safetensors.torch import load_file

    for single, index, load in (
        ("model.safetensors", "model.safetensors.index.json", lambda p: load_file(str(p))),
        ("pytorch_model.bin", "pytorch_model.bin.index.json",
         lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    ):
        files = []
        if (folder / single).is_file():
            files = [folder / single]
        elif (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map", {})
            files = [folder / name for name in sorted(set(weight_map.values()))]
        if files:
            state: dict[str, torch.Tensor] = {}
            for f in files:
                try:
                    state.update(load(f))
                except Exception as e:  # safetensors, pickle and zip errors have no common base
                    raise PsyDuckError(f"cannot read weights {f} ({type(e).__name__}: {str(e)[:120]}); the file is damaged") from None
            return state
    raise _not_gpt2(folder, "no model.safetensors or pytorch_model.bin")


def psyduck_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, folder: Path) -> dict[str, torch.Tensor]:
    """GPT-2 tensor names and layouts -> PsyDuck's, through the one name table (gpt2_names)."""
    names = {name.removeprefix("transformer."): name for name in hf_state}
    for needed in expected_gpt2_names(cfg.n_layer, cfg.tie_embeddings):
        if needed.removeprefix("transformer.") not in names:
            raise _not_gpt2(folder, f"weight {needed.removeprefix('transformer.')} is missing")
    out: dict[str, torch.Tensor] = {}
    for name, t in hf_state.items():
        mapped = psyduck_name(name)
        if mapped is None:  # causal-mask buffers of old checkpoints, and anything PsyDuck has no use for
            continue
        ours, transpose = mapped
        if ours.startswith("lm_head.") and cfg.tie_embeddings:
            continue  # the same matrix as the token embedding
        t = t.to(torch.float32)
        out[ours] = (t.t() if transpose else t).contiguous()
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def read_hf_tokenizer(folder: Path) -> Tokenizer:
    """The folder's byte-level BPE as a PsyDuck Tokenizer (tokenizer.json, or vocab.json + merges.txt)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    from psyduck.tokenizer import EOT, Tokenizer

    if (folder / "tokenizer.json").is_file():
        try:
            hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the Rust side raises plain Exception
            raise PsyDuckError(f"{folder}/tokenizer.json is not a tokenizers file ({str(e)[:120]})") from None
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        hf = tokenizers.Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        if hf.token_to_id(EOT) is not None:
            hf.add_special_tokens([tokenizers.AddedToken(EOT, special=True, normalized=False)])
    else:
        raise PsyDuckError(f"{folder} has no tokenizer.json (nor vocab.json + merges.txt); save the tokenizer with the model")
    if hf.token_to_id(EOT) is None:
        raise PsyDuckError(f"the tokenizer in {folder} has no {EOT} token; import-hf needs a GPT-2-style byte-level BPE")
    return Tokenizer.from_hf(hf)


def import_hf(folder: str | Path, out: str | Path) -> Path:
    """Turn a GPT-2, Llama or Arcee `transformers` folder into the PsyDuck run folder `out`; returns `out`."""
    from safetensors.torch import save_file

    from psyduck.config import Config, DataConfig, TrainConfig
    from psyduck.io import write_json_atomic
    from psyduck.model import GPT
    from psyduck.runs import RunFolder
    from psyduck.state_dicts import load_weights

    folder, out = Path(folder), Path(out)
    hf = read_hf_config(folder)
    if hf["model_type"] == "gpt2":
        mcfg = model_config_from_hf(hf)
        state = psyduck_state(read_hf_weights(folder), mcfg, folder)
    else:
        from psyduck.interop.hf_import_llama import llama_model_config, llama_state

        mcfg = llama_model_config(hf, folder)
        state = llama_state(read_hf_weights(folder), mcfg, folder)
    tok = read_hf_tokenizer(folder)
    if tok.vocab_size > mcfg.vocab_size:
        raise PsyDuckError(
            f"the tokenizer in {folder} has {tok.vocab_size} tokens but the model only {mcfg.vocab_size} "
            "embedding rows; the folder's tokenizer does not belong to its model"
        )
    if out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file; choose a folder name for the run")
    run = RunFolder(out)
    if run.checkpoints() or (out / "config.json").exists():
        raise PsyDuckError(f"{out} already holds a run; choose another --out")

    cfg = Config(
        model=mcfg,
        data=DataConfig(path=f"data/{out.name}", source="wiki-vital", tokenizer=tok.name),
        train=TrainConfig(),
    )
    model = GPT(mcfg)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".import-weights.safetensors"
    try:  # load through the normal path: a mismatch gives the usual clear error
        save_file({k: v for k, v in state.items() if not (mcfg.tie_embeddings and k == "lm_head.weight")}, str(tmp))
        load_weights(model, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(out / "config.json", cfg.to_dict())
    tok.save(out)
    rng = {  # what `train --resume` restores: a fresh start of the random streams
        "rng.torch": torch.get_rng_state(),
        "rng.batch": torch.Generator().manual_seed(cfg.train.seed).get_state(),
    }
    run.save_checkpoint(
        0, model, None,
        {"tokens_seen": 0, "val_loss": None, "best_val": None, "reason": "import-hf", "source": str(folder)},
        extra_tensors=rng,
    )
    run.record_source(source_record(folder, hf))
    return out


def source_record(folder: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """Where an imported run came from: kept as the run's source.json, shown by `psyduck eval`."""
    from datetime import datetime, timezone

    from psyduck import __version__

    return {
        "importer": f"psyduck {__version__} import-hf",
        "folder": str(folder.resolve()),
        "model": hf.get("_name_or_path") or folder.resolve().name,  # the hub name, when transformers kept it
        "architecture": (hf.get("architectures") or [DEFAULT_CLASS[hf["model_type"]]])[0],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
