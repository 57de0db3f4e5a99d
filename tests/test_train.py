"""Training: the loss falls, runs save and load exactly, and resume continues where a run stopped."""

from __future__ import annotations

import json
import math

import pytest
import torch

from psyduck import GPT, PsyDuckError, load_run
from psyduck.runs import list_checkpoints, save_checkpoint
from psyduck.state_dicts import load_weights
from psyduck.config import TrainConfig
from psyduck.data.loader import TokenData
from psyduck.train import Trainer, lr_at, train

from conftest import metrics


def test_loss_falls_and_run_folder_is_complete(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg.replace({"max_iters": 60, "eval_interval": 20})
    result = train(cfg, run, progress=False)
    rows = metrics(run)
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert result["step"] == 60 and result["val_loss"] == rows[-1]["val_loss"]
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "loss_curve.png", "samples.txt"):
        assert (run / name).is_file(), name
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = list_checkpoints(run)[-1]
    assert ckpt.name == "step_0000060"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert "--- step 60" in (run / "samples.txt").read_text()
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 512


def test_save_then_load_gives_identical_logits(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_cfg.replace({"max_iters": 3}), run, progress=False)
    trainer.run()
    model, tok = load_run(run)
    trainer.model.eval()
    idx = torch.tensor([tok.encode("The history of the world")])
    assert torch.equal(model(idx)[0], trainer.model(idx)[0])


def test_resume_continues_step_count_and_metrics(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg.replace({"max_iters": 20}), run, progress=False)
    train(tiny_cfg.replace({"max_iters": 40}), run, resume=True, progress=False)
    assert [r["step"] for r in metrics(run)] == [0, 10, 20, 30, 40]
    assert list_checkpoints(run)[-1].name == "step_0000040"


def test_interrupted_then_resumed_run_matches_uninterrupted_run_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace({"max_iters": 30, "model.dropout": 0.1})  # dropout: the torch RNG must resume too
    train(cfg, tmp_path / "straight", progress=False)
    trainer = Trainer(cfg, tmp_path / "split", progress=False)
    interrupt_after(trainer, step=13, signal_name="SIGINT")  # between two evaluations
    trainer.run()
    assert list_checkpoints(tmp_path / "split")[-1].name == "step_0000013"
    train(None, tmp_path / "split", resume=True, progress=False)
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in a] == [(r["step"], r["train_loss"], r["val_loss"]) for r in b]


def interrupt_after(trainer: Trainer, step: int, signal_name: str) -> None:
    """Raise the stop flag once `step` optimizer steps are done, as the signal handler does."""
    original = trainer.train_step

    def step_then_maybe_stop():
        loss = original()
        if trainer.step == step:
            trainer.stop_signal = signal_name
        return loss

    trainer.train_step = step_then_maybe_stop


def test_starting_over_an_existing_run_is_refused(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg.replace({"max_iters": 2}), run, progress=False)
    with pytest.raises(PsyDuckError) as e:
        train(tiny_cfg, run, progress=False)
    assert str(e.value) == f"{run} already holds a run; pass --resume to continue it or choose another --out"


def test_training_leaves_the_callers_config_and_the_presets_as_they_were(tiny_cfg, tmp_path, monkeypatch):
    """The trainer fills in the vocabulary and tokenizer from the data on its own copy of the config."""
    import psyduck
    from psyduck.config import presets

    cfg = tiny_cfg.replace({"max_iters": 2, "model.vocab_size": 300, "data.tokenizer": "bpe-300", "sample_tokens": 0})
    monkeypatch.setitem(presets, "tiny", cfg)
    before = cfg.to_dict()
    result = psyduck.train(presets["tiny"], tmp_path / "run", progress=False)  # the package, called as `train`
    assert result["step"] == 2 and psyduck.train.train is train
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["model"]["vocab_size"], saved["data"]["tokenizer"]) == (512, "bpe-512")
    assert presets["tiny"] is cfg and cfg.to_dict() == before


def test_learning_rate_schedules():
    t = TrainConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_iters=10, max_iters=110)
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(60, t) == pytest.approx(0.55)
    assert lr_at(110, t) == pytest.approx(0.1)
    assert lr_at(5, TrainConfig(lr=3e-4)) == 3e-4  # the seed: constant


def test_weight_decay_only_on_matrices(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg, tmp_path / "run", progress=False)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_gradient_accumulation_matches_one_big_batch(tiny_cfg, tmp_path):
    """grad_accum=2 with batch 4 gives the gradient of batch 8 (the same 8 windows).

    The gradients are compared, not the weights after the step: AdamW's first step moves each weight
    by about lr * g / (|g| + eps), whatever the gradient's scale (a sum instead of a mean would pass),
    and for a gradient near eps by an amount the last bits of a float sum decide (measured: one
    weight in 16,384 moved 3% of a step differently)."""
    from psyduck.train.step import accumulate_gradients

    a = Trainer(tiny_cfg.replace({"batch_size": 8, "grad_accum": 1, "max_iters": 1}), tmp_path / "a", progress=False)
    b = Trainer(tiny_cfg.replace({"batch_size": 4, "grad_accum": 2, "max_iters": 1}), tmp_path / "b", progress=False)
    (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the same 8 windows
    la, lb = accumulate_gradients(a.step_setup, xa, ya), accumulate_gradients(b.step_setup, xb, yb)
    assert la == pytest.approx(lb, rel=1e-5)
    for (name_a, pa), (name_b, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert name_a == name_b
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-7, rtol=1e-4)
    assert any(bool(p.grad.abs().sum() > 0) for p in a.model.parameters())  # a real gradient


def test_train_step_takes_one_step_and_never_applies_a_non_finite_loss():
    """The step function the trainer and the throughput benchmark share, without a Trainer around it."""
    from psyduck.config import get_preset
    from psyduck.train import StepSetup, make_optimizer, train_step

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = make_optimizer(model, cfg.train, torch.device("cpu"))
    setup = StepSetup(net=model, model=model, optimizer=opt, train=cfg.train)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.block_size), generator=g) for _ in "xy")
    start = [p.detach().clone() for p in model.parameters()]
    loss = train_step(setup, x, y, lr=1e-3)
    assert loss == pytest.approx(math.log(cfg.model.vocab_size), abs=0.3)  # an untrained model: about uniform
    assert [group["lr"] for group in opt.param_groups] == [1e-3, 1e-3]
    assert all(not torch.equal(a, b) for a, b in zip(start, model.parameters(), strict=True))  # every weight moved
    assert all(p.grad is None for p in model.parameters())  # and the gradients were cleared

    class NaNLoss(torch.nn.Module):
        def forward(self, x, y, **kw):  # noqa: ANN001, ANN202
            logits, loss = model(x, y, **kw)
            return logits, loss * float("nan")

    setup.net = NaNLoss()
    after_one = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    assert math.isnan(train_step(setup, x, y, lr=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(after_one, model.parameters(), strict=True))
    assert all(torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_nan_loss_stops_with_step_and_last_checkpoint(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_cfg.replace({"max_iters": 30}), run, progress=False)
    poison_at(trainer, step=13)
    with pytest.raises(PsyDuckError) as e:
        trainer.run()
    last = list_checkpoints(run)[-1]
    assert str(e.value) == (
        f"loss became nan at step 14; last good checkpoint: {last}; lower --lr or resume with on_nan=skip"
    )
    assert last.name == "step_0000010"
    model = GPT(trainer.cfg.model)
    load_weights(model, last / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.12 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"),
])
def test_out_of_memory_says_which_setting_to_change(tiny_cfg, tmp_path, monkeypatch, error):
    run = tmp_path / "run"
    trainer = Trainer(tiny_cfg.replace({"max_iters": 30, "batch_size": 8, "grad_accum": 2}), run, progress=False)
    real_step = trainer.train_step

    def step():  # noqa: ANN202
        if trainer.step == 12:
            raise error
        return real_step()

    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(PsyDuckError) as e:
        trainer.run()
    tokens = 8 * 2 * trainer.cfg.model.block_size
    assert str(e.value) == (
        f"out of memory on cpu at train.batch_size=8; try train.batch_size=4 train.grad_accum=4 "
        f"(the same {tokens:,} tokens per step); last checkpoint: {list_checkpoints(run)[-1]}"
    )


def test_other_runtime_errors_pass_through(tiny_cfg, tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg.replace({"max_iters": 5}), tmp_path / "run", progress=False)
    monkeypatch.setattr(trainer, "train_step", lambda: (_ for _ in ()).throw(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="something else"):
        trainer.run()


def test_nan_loss_is_skipped_when_asked(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_cfg.replace({"max_iters": 20, "on_nan": "skip"}), run, progress=False)
    poison_at(trainer, step=13)
    trainer.run()
    rows = metrics(run)
    assert rows[-1]["step"] == 20 and math.isfinite(rows[-1]["val_loss"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def poison_at(trainer: Trainer, step: int) -> None:
    """Make the loss NaN at one optimizer step (as a blow-up would)."""
    net = trainer.step_setup.net

    class Poisoned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, x, y, **kw):
            logits, loss = self.inner(x, y, **kw)
            return logits, loss * float("nan") if trainer.step == step else loss

    trainer.step_setup.net = Poisoned()


def test_checkpoint_of_compiled_model_loads_uncompiled(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_cfg.model)
    compiled = torch.compile(model, backend="eager")  # same wrapper and key prefixes as inductor
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt = save_checkpoint(tmp_path, 1, compiled, None, {})
    plain = GPT(tiny_cfg.model)
    load_weights(plain, ckpt / "model.safetensors")
    idx = torch.randint(0, 512, (1, 8))
    assert torch.equal(plain.eval()(idx)[0], model.eval()(idx)[0])


def test_data_with_another_tokenizer_is_refused_on_resume(tiny_cfg, tmp_path, corpus_file):
    from psyduck.data.prepare import prepare

    run = tmp_path / "run"
    train(tiny_cfg.replace({"max_iters": 2}), run, progress=False)
    other = prepare("text", "bpe-400", tmp_path / "other", path=str(corpus_file), show_progress=False)
    with pytest.raises(PsyDuckError) as e:
        train(tiny_cfg.replace({"data.path": str(other)}), run, resume=True, progress=False)
    assert str(e.value) == (
        f"data at {other} was prepared with bpe-400 but the run uses bpe-512; "
        "prepare the data with --tokenizer bpe-512 or start a new run"
    )


def test_evaluate_reports_bits_per_byte(tiny_cfg, tmp_path):
    from psyduck.evaluate import evaluate

    run = tmp_path / "run"
    train(tiny_cfg.replace({"max_iters": 2}), run, progress=False)
    model, _ = load_run(run)
    data = TokenData(tiny_cfg.data.path)
    res = evaluate(model, data, "val", batch_size=4)
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    expected = res["loss"] / math.log(2) * data.num_tokens("val") / data.num_bytes("val")
    assert res["bits_per_byte"] == pytest.approx(expected)
    assert res["tokens"] > 0.9 * data.num_tokens("val")


def test_init_from_refuses_a_same_named_but_different_tokenizer(tiny_cfg, tmp_path, corpus_file):
    from psyduck.data.prepare import prepare

    run = tmp_path / "run"
    train(tiny_cfg.replace({"max_iters": 2}), run, progress=False)
    shifted = tmp_path / "shifted.txt"
    shifted.write_text(corpus_file.read_text()[50_000:], encoding="utf-8")  # other text, same vocab size
    other = prepare("text", "bpe-512", tmp_path / "other", path=str(shifted), show_progress=False)
    with pytest.raises(PsyDuckError) as e:
        train(tiny_cfg.replace({"data.path": str(other)}), tmp_path / "new", init_from=run, progress=False)
    assert str(e.value) == (
        f"data at {other} was prepared with a different bpe-512 tokenizer than the run's "
        "(same name, other vocabulary); prepare the data with the run's tokenizer or start a new run"
    )


def test_external_loggers_are_imported_only_when_asked(tiny_cfg, tmp_path):
    import sys

    train(tiny_cfg.replace({"max_iters": 2}), tmp_path / "plain", progress=False)
    assert "torch.utils.tensorboard" not in sys.modules and "wandb" not in sys.modules
    with pytest.raises(PsyDuckError) as e:
        train(tiny_cfg.replace({"max_iters": 2, "loggers": "mlflow"}), tmp_path / "bad", progress=False)
    assert str(e.value) == "unknown logger 'mlflow' in train.loggers; use tensorboard and/or wandb"


MC_ITEMS = [  # both accepted shapes of a HellaSwag-format task file
    {"ctx": "The capital of France is", "endings": ["Paris.", "a fish.", "blue.", "running."], "label": 0},
    {"context": "Water is made of hydrogen and", "choices": ["oxygen.", "wood.", "music.", "Tuesday."], "label": 0},
    {"ctx": "The sun rises in the", "endings": ["banana.", "east.", "piano.", "seven."], "label": 1},
    {"context": "A year has twelve", "choices": ["cats.", "doors.", "months.", "rivers."], "label": 2},
]


def write_task_file(path, items=MC_ITEMS):
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def test_task_scores_are_logged_at_their_steps_and_drawn_beside_the_loss(tiny_cfg, tmp_path):
    from psyduck.tasks import score_multiple_choice
    from psyduck.train.task_scores import read_items_jsonl

    tasks = write_task_file(tmp_path / "facts.jsonl")
    run = tmp_path / "run"
    cfg = tiny_cfg.replace({"max_iters": 20, "eval_interval": 10, "eval.tasks": str(tasks), "eval.task_every": 5})
    result = train(cfg, run, progress=False)
    rows = metrics(run)
    keys = {"task/facts/acc", "task/facts/acc_norm"}
    assert [r["step"] for r in rows if keys <= r.keys()] == [0, 5, 10, 15, 20]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 10, 20]  # steps 5 and 15: scores alone
    model, tok = load_run(run)
    final = score_multiple_choice(model, tok, read_items_jsonl(tasks, 200))
    assert (rows[-1]["task/facts/acc"], rows[-1]["task/facts/acc_norm"]) == (final["acc"], final["acc_norm"])
    assert result["task/facts/acc"] == final["acc"]
    png = (run / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 16 * 90  # the third panel, the scores, widens the figure


def test_eval_section_takes_overrides_and_old_configs_go_without_it(tiny_cfg):
    from psyduck.config import Config

    cfg = tiny_cfg.replace(["eval.tasks=hellaswag", "eval.task_every=500"])
    assert (cfg.eval.tasks, cfg.eval.task_every, cfg.eval.task_limit) == ("hellaswag", 500, 200)
    old = cfg.to_dict()
    del old["eval"]
    assert Config.from_dict(old).eval.tasks == ""


@pytest.mark.parametrize(
    "tasks, message",
    [
        ("nope", "unknown task 'nope' in eval.tasks; use hellaswag or wiki-vital-mc or the path of a .jsonl file of "
                 '{{"ctx", "endings", "label"}} items'),
        ("{tmp}/missing.jsonl", "task file not found: {tmp}/missing.jsonl; give eval.tasks an existing .jsonl file"),
        ("{tmp}/bad.jsonl", '{tmp}/bad.jsonl:2 is not a multiple-choice item; write {{"ctx": ..., "endings": [...], '
                            '"label": N}} (or "context"/"choices")'),
        ("{tmp}/long.jsonl", "task {tmp}/long.jsonl: item 1 has an ending longer than the model's context window; "
                             "shorten its endings or train with a larger model.block_size"),
    ],
)
def test_task_files_that_cannot_be_read_fail_before_training(tiny_cfg, tmp_path, tasks, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps(MC_ITEMS[0]) + '\n{"ctx": "no endings"}\n')
    write_task_file(tmp_path / "long.jsonl", [{"ctx": "A", "endings": ["long " * 40, "short"], "label": 1}])
    with pytest.raises(PsyDuckError) as e:
        Trainer(tiny_cfg.replace({"eval.tasks": tasks.format(tmp=tmp_path)}), tmp_path / "run", progress=False)
    assert str(e.value) == message.format(tmp=tmp_path)
    assert not (tmp_path / "run").exists()


def test_hellaswag_not_in_the_cache_is_one_line_naming_the_fix(tiny_cfg, tmp_path):
    from conftest import run_cli

    r = run_cli(
        "train", "--preset", "tiny", "--data", tiny_cfg.data.path, "--out", str(tmp_path / "run"), "eval.tasks=hellaswag",
        env={"HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"psyduck: error: eval.tasks=hellaswag: HellaSwag is not in the Hugging Face datasets cache "
        f"({tmp_path / 'hf' / 'Rowan___hellaswag'}); run `python -c \"import datasets; "
        "datasets.load_dataset('Rowan/hellaswag', split='validation')\"` once with network access, "
        "or give eval.tasks a local .jsonl file"
    )


def test_wiki_vital_mc_asks_which_description_is_the_articles():
    from psyduck.data.sources import wiki_vital
    from psyduck.train.task_scores import wiki_vital_mc_items

    items = wiki_vital_mc_items(30, fits=lambda item: item.label != 0)  # the others are skipped
    first_sentences = {doc.split(". ", 1)[0] for doc in wiki_vital()}
    assert len(items) == 30 and len({it.context for it in items}) == 30
    for it in items:
        assert len(it.choices) == 4 and len(set(it.choices)) == 4 and all(len(c) <= 48 for c in it.choices)
        right = f"{it.context} {it.choices[it.label]}"
        assert any(s.startswith(right) for s in first_sentences), right
    assert {it.label for it in items} == {1, 2, 3}  # the right answer moves around (and never first here)
