"""The `psyduck` command: every subcommand runs, every user mistake is one clear line."""

from __future__ import annotations

import json
import shutil

import pytest

from psyduck.cli import main
from psyduck.runs import list_checkpoints

from conftest import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data):
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run), "--no-progress",
                 "--max-iters", "20", "--eval-interval", "10", "eval_iters=2"])
    assert code == 0
    return run


def error_of(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error; return its one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("psyduck: error: ")
    return err[0][len("psyduck: error: "):]


def test_train_prints_the_last_evaluation(trained_run, capsys):
    assert [c.name for c in list_checkpoints(trained_run)] == ["step_0000010", "step_0000020"]
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["train"]["max_iters"] == 20 and cfg["train"]["eval_iters"] == 2


def test_generate_streams_a_continuation(trained_run, capsys):
    assert main(["generate", str(trained_run), "--prompt", "The world", "--max-new-tokens", "20", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The world") and len(first) > len("The world\n")
    main(["generate", str(trained_run), "--prompt", "The world", "--max-new-tokens", "20", "--seed", "1"])
    assert capsys.readouterr().out == first  # same seed, same text
    assert main(["generate", str(trained_run), "--max-new-token", "5", "--temperature", "0"]) == 0  # seed's spelling
    capsys.readouterr()
    assert main(["generate", str(trained_run), "--prompt", "The world", "--max-new-tokens", "20", "--seed", "1", "--exact"]) == 0
    assert capsys.readouterr().out.startswith("The world")


def test_stream_text_is_the_decoded_continuation_cut_at_stop_strings(trained_run):
    """What `psyduck generate` prints and the trainer keeps: the new ids as text, ended at a stop string."""
    import dataclasses

    import torch

    from psyduck.runs import load_run
    from psyduck.generate import GenerationParams, generate, stream_text

    model, tok = load_run(trained_run)
    ids = tok.encode("The world")
    params = GenerationParams(30, temperature=1.0, seed=3, ignore_eos=True)
    new = generate(model, torch.tensor([ids]), params)[0, len(ids):].tolist()
    text = "".join(stream_text(model, tok, ids, params))
    assert len(new) == 30 and text == tok.decode([t for t in new if t != tok.eot_id]) and len(text) > 8
    stop = text[5:8]
    cut = "".join(stream_text(model, tok, ids, dataclasses.replace(params, stop=(stop,))))
    assert cut == text[: text.index(stop)]


def test_eval_json_reports_bits_per_byte(trained_run, capsys):
    assert main(["eval", str(trained_run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"loss", "perplexity", "bits_per_byte", "tokens"}
    assert 0 < res["bits_per_byte"] < 8


def test_config_lists_and_shows_presets(capsys):
    assert main(["config", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "seed-60m" in listing and "cpu-small" in listing
    assert main(["config", "--preset", "seed-60m"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["d_model"] == 256 and cfg["train"]["eval_interval"] == 50
    assert cfg["model"]["head_bias"] is True and cfg["train"]["loss"] == "auto"


def test_module_entry_point_runs():
    res = run_cli("config", "--list")
    assert res.returncode == 0 and "tiny" in res.stdout


def test_missing_data_folder(capsys, tmp_path):
    msg = error_of(capsys, ["train", "--preset", "tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert msg == (  # the preset's corpus and tokenizer: the command that makes the data this preset trains on
        f"data folder not found: {tmp_path / 'nope'}; run `psyduck prepare wiki-vital --tokenizer bpe-512 --out {tmp_path / 'nope'}` first"
    )


def test_unknown_preset(capsys, tmp_path):
    msg = error_of(capsys, ["train", "--preset", "gpt5", "--out", str(tmp_path / "r")])
    assert msg == "unknown preset 'gpt5'; choose one of: seed-60m, cpu-small, tiny, gpt2-124m, tinystories-gpu, fineweb-edu-gpu"


def test_unknown_config_key(capsys, tiny_data, tmp_path):
    msg = error_of(capsys, ["train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "n_layers=3"])
    assert msg == "unknown config key 'n_layers'; see `psyduck config --preset NAME` for valid keys"


def test_bad_override_value(capsys, tiny_data, tmp_path):
    msg = error_of(capsys, ["train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "lr=fast"])
    assert msg == "bad value 'fast' for train.lr: expected float"


def test_empty_corpus(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    msg = error_of(capsys, ["prepare", "text", "--path", str(empty), "--out", str(tmp_path / "d")])
    assert msg == f"corpus is empty: {empty} holds no text; point --path at a file or folder with text"


def test_corpus_shorter_than_one_context_window(capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("A short note.\n\nIt has two paragraphs, and that is all.\n")
    assert main(["prepare", "text", "--path", str(short), "--tokenizer", "cl100k_base", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    msg = error_of(capsys, ["train", "--preset", "tiny", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
    assert msg.startswith("the train split has ") and msg.endswith(
        "tokens, fewer than one context window (block_size+1 = 33); use more text or a smaller --block-size"
    )


def test_checkpoint_from_a_different_tokenizer(capsys, trained_run, tmp_path, corpus_file):
    other = tmp_path / "other"
    assert main(["prepare", "text", "--path", str(corpus_file), "--tokenizer", "bpe-300", "--out", str(other)]) == 0
    capsys.readouterr()
    msg = error_of(capsys, ["eval", str(trained_run), "--data", str(other)])
    assert msg == (
        f"data at {other} was prepared with bpe-300 but the run uses bpe-512; "
        "prepare the data with --tokenizer bpe-512 or start a new run"
    )
    swapped = tmp_path / "swapped"
    shutil.copytree(trained_run, swapped)
    shutil.copy(other / "tokenizer.json", swapped / "tokenizer.json")
    msg = error_of(capsys, ["generate", str(swapped), "--prompt", "Hi"])
    assert msg == (
        f"{swapped}/tokenizer.json is bpe-300 (300 tokens) but the model was trained with bpe-512 "
        "(512 embedding rows); restore the run's own tokenizer.json"
    )


def test_truncated_checkpoint(capsys, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = list_checkpoints(run)[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    # named on purpose, a damaged checkpoint is an error (by default the previous one is used: test_runs.py)
    msg = error_of(capsys, ["generate", str(run), "--prompt", "Hi", "--checkpoint", str(weights.parent)])
    assert msg.startswith(f"checkpoint {weights} is damaged or truncated (")
    assert msg.endswith("); resume from an earlier checkpoint")


def test_missing_run_and_impossible_sampling(capsys, trained_run, tmp_path):
    assert error_of(capsys, ["generate", str(tmp_path / "nope")]) == (
        f"run folder not found: {tmp_path / 'nope'}; train one with `psyduck train --out {tmp_path / 'nope'}`"
    )
    assert error_of(capsys, ["generate", str(trained_run), "--top-p", "0"]) == "top_p must be in (0, 1], got 0.0"
    assert error_of(capsys, ["generate", str(trained_run), "--temperature", "-1"]) == (
        "temperature must be >= 0 (0 means greedy), got -1.0"
    )


def test_toml_config_and_flags_layer_in_order(tmp_path, tiny_data):
    from psyduck.cli import build_config, make_parser

    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nn_layer = 3\n[train]\nlr = 0.01\nmax_iters = 7\n')
    args = make_parser().parse_args(["train", "--preset", "tiny", "--config", str(toml), "--lr", "0.02", "max_iters=9"])
    cfg = build_config(args)
    assert (cfg.model.n_layer, cfg.train.lr, cfg.train.max_iters) == (3, 0.02, 9)
