"""The recipe levers of issue 21: Muon for the blocks' matrices, ReLU², QK-norm, logit soft-capping.

What each computes (Muon against a Newton–Schulz iteration written here), that all are off unless
chosen (old run folders load unchanged), that a run with all of them trains and resumes bit for
bit, and that a config names the levers an exporter must refuse (`nonstandard_features`).
The fused loss with a cap is checked against the plain one in test_perf_paths.py; both attention
paths, the KV cache and the levers together in test_model.py's VARIANTS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from psyduck import GPT, ModelConfig, PsyDuckError
from psyduck.config import TrainConfig, load_config_json
from psyduck.generate import DecodeWeights, KVCache
from psyduck.generate.loop import next_logits
from psyduck.losses import soft_cap
from psyduck.model import FFN
from psyduck.runs import list_checkpoints
from psyduck.train import StepSetup, Trainer, lr_at, make_optimizer, train, train_step
from psyduck.train.muon import Float32Muon, MuonAdamW, make_muon
from psyduck.train.step import set_lr

from conftest import metrics
from test_train import interrupt_after

OLD = Path(__file__).parent / "fixtures" / "old_configs"
CPU = torch.device("cpu")


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=97, block_size=16, d_model=32, n_layer=2, n_head=4, dropout=0.0), **kw})


# --- configuration ---------------------------------------------------------------------------

def test_the_levers_are_off_unless_chosen_and_old_run_folders_load_with_them_off():
    assert ModelConfig().nonstandard_features() == [] and TrainConfig().optimizer == "adamw"
    olds = [p for p in OLD.glob("*.json") if p.name != "state_shapes.json"]
    assert len(olds) >= 4
    for path in olds:
        cfg = load_config_json(path)
        assert cfg.model.nonstandard_features() == [], path.name
        assert (cfg.model.qk_norm, cfg.model.logit_softcap, cfg.train.optimizer) == (False, 0.0, "adamw")
    names = set(GPT(small()).state_dict())
    assert not any("q_norm" in n or "k_norm" in n for n in names)  # no new weights in a model without them


def test_nonstandard_features_name_every_lever_an_exporter_must_refuse():
    cfg = small(pos="rope", norm="rmsnorm", activation="relu2", qk_norm=True, logit_softcap=15.0)
    assert cfg.nonstandard_features() == ["model.qk_norm=true", "model.logit_softcap=15"]
    assert small(activation="swiglu", pos="rope", norm="rmsnorm").nonstandard_features() == []
    assert small(activation="relu2", pos="rope", norm="rmsnorm").nonstandard_features() == []  # Arcee exports it


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(optimizer="sgd"), "train.optimizer='sgd' is not one of adamw, muon, normuon; pick one of them"),
        (dict(muon_lr=0.0), "train.muon_lr must be positive, got 0.0"),
        (dict(muon_momentum=1.0), "train.muon_momentum must be in [0, 1), got 1.0"),
    ],
)
def test_bad_optimizer_settings_are_refused(kw, message):
    with pytest.raises(PsyDuckError) as e:
        TrainConfig(**kw)
    assert str(e.value) == message


# --- the block variants ----------------------------------------------------------------------

def test_relu2_is_a_plain_ffn_with_relu_squared():
    cfg = small(activation="relu2")
    torch.manual_seed(0)
    ffn = FFN(cfg)
    x = torch.randn(2, 5, 32)
    assert cfg.ffn_hidden == 4 * 32 and not hasattr(ffn, "gate")
    torch.testing.assert_close(ffn(x), ffn.down(F.relu(ffn.up(x)) ** 2))


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_qk_norm_makes_attention_blind_to_the_size_of_queries_and_keys(pos):
    """RMS-normalized q and k: scaling the projections that make them changes nothing; without
    QK-norm it changes every score."""
    for qk_norm in (True, False):
        torch.manual_seed(0)
        model = GPT(small(pos=pos, bias=False, qk_norm=qk_norm, norm_eps=1e-12)).eval()  # eps: not scale-free
        idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
        before = model(idx)[0]
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight[: 2 * 32].mul_(7.0)  # the query rows, then the key rows (n_kv_head = n_head)
        after = model(idx)[0]
        if qk_norm:
            torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
            assert model.blocks[0].attn.q_norm.weight.shape == (8,)  # one gain per head dimension
        else:
            assert not torch.allclose(after, before, rtol=1e-4, atol=1e-5)


def test_soft_capped_logits_never_pass_the_cap():
    torch.manual_seed(0)
    model = GPT(small(logit_softcap=2.0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(300.0)  # raw logits in the tens
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        raw = model.lm_head(model.body(idx))
        logits = model(idx)[0]
    assert float(raw.abs().max()) > 10 and float(logits.abs().max()) <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    assert soft_cap(raw, 0.0) is raw  # 0: off


@pytest.mark.parametrize("exact", [True, False])
def test_generation_logits_with_a_soft_cap_are_the_forward_logits(exact):
    """The decode twin (float16 or transposed copies) runs the model's own output path: capped, and
    (float16) with the output layer not centred, since tanh does not ignore a common offset."""
    torch.manual_seed(0)
    model = GPT(small(vocab_size=2048, head_bias=True, logit_softcap=2.0)).eval()  # 2048 x 32: a float16 copy
    with torch.no_grad():
        model.lm_head.bias.add_(3.0)  # every logit ~3 up: capped ~1.8; centred first, it would be ~0
        model.lm_head.weight.mul_(20.0)
    idx = torch.randint(0, 2048, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(idx)[0][:, -1]
    weights = DecodeWeights.build(model, exact=exact)
    assert weights.half is not exact
    cache = KVCache.for_model(model, 2, CPU, torch.float32)
    got, _ = next_logits(model, weights, idx, cache)
    tol = dict(rtol=1e-5, atol=1e-5) if exact else dict(rtol=0, atol=5e-3)
    torch.testing.assert_close(got, want, **tol)
    assert float(want.std()) > 0.05  # the logits differ from token to token: the test can see a wrong one


# --- Muon + AdamW ----------------------------------------------------------------------------

def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's orthogonalization as torch.optim.Muon's docs and Keller Jordan's post give it, in float32:
    X <- aX + b(XXᵀ)X + c(XXᵀ)²X from X = G/||G||, on the wide orientation (XXᵀ the small side)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_muon_steps_are_the_orthogonalized_momentum_and_adamw_steps_the_rest():
    torch.manual_seed(0)
    model = GPT(small(head_bias=True))
    t = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, muon_momentum=0.95, weight_decay=0.0)
    opt = make_optimizer(model, t, CPU)
    assert isinstance(opt, MuonAdamW)
    name = {id(p): n for n, p in model.named_parameters()}
    muon = {name[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {name[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert adamw == set(name.values()) - muon and {"tok_emb.weight", "lm_head.weight", "lm_head.bias"} <= adamw
    g = torch.Generator().manual_seed(1)
    momentum: dict[str, torch.Tensor] = {}
    for step in range(2):  # the second step also checks the momentum
        grads = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        set_lr(opt, t.lr)
        opt.step()
        opt.zero_grad()
        params = dict(model.named_parameters())
        for n in ("blocks.0.attn.qkv.weight", "blocks.0.ffn.up.weight", "blocks.1.ffn.down.weight", "blocks.1.attn.proj.weight"):
            momentum[n] = 0.95 * momentum.get(n, 0.0) + grads[n]  # B <- mu B + g;  Nesterov: g + mu B
            rows, cols = grads[n].shape
            want = -0.02 * max(1.0, rows / cols) ** 0.5 * newton_schulz(grads[n] + 0.95 * momentum[n])
            got = params[n].detach() - before[n]
            # on a CPU, Float32Muon: the float32 iteration (torch's, in bfloat16, is ~2% away; the raw momentum 30%+)
            assert float((got - want).norm() / want.norm()) < 1e-4, n
            sv = torch.linalg.svdvals(got / got.norm(dim=None) * min(rows, cols) ** 0.5)
            assert 0.5 < float(sv.min()) and float(sv.max()) < 1.5, n  # every direction moved about alike
        if step == 0:  # AdamW's first step: -lr * g / |g| for the embedding
            delta = params["tok_emb.weight"].detach() - before["tok_emb.weight"]
            torch.testing.assert_close(delta, -1e-3 * grads["tok_emb.weight"].sign(), rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
def test_float32_muon_is_torchs_muon_up_to_bfloat16_rounding(adjust):
    g = torch.Generator().manual_seed(2)
    w, grads = torch.randn(48, 16, generator=g), [torch.randn(48, 16, generator=g) for _ in range(3)]
    ours, theirs = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    opts = [Float32Muon([ours], lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust),
            torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust)]
    for grad in grads:
        for p, opt in zip((ours, theirs), opts, strict=True):
            p.grad = grad.clone()
            opt.step()
    assert opts[0].state_dict()["state"].keys() == opts[1].state_dict()["state"].keys() == {0}
    torch.testing.assert_close(opts[0].state[ours]["momentum_buffer"], opts[1].state[theirs]["momentum_buffer"])
    moved, theirs_moved = ours.detach() - w, theirs.detach() - w
    assert float((moved - theirs_moved).norm() / theirs_moved.norm()) < 0.04


def normuon_reference(w: torch.Tensor, grads: list[torch.Tensor], lr: float, decay: float) -> torch.Tensor:
    """NorMuon as the paper writes it, one matrix at a time: Nesterov momentum, orthogonalized, each
    neuron (a row of a tall or square matrix, a column of a wide one) over the root of its running
    mean square (beta2 0.95), rescaled to the orthogonalized norm; then Muon's decay and rate."""
    buf, second = torch.zeros_like(w), 0.0
    for g in grads:
        buf = 0.95 * buf + 0.05 * g
        o = newton_schulz(0.05 * g + 0.95 * buf)
        rows, cols = o.shape
        second = 0.95 * second + 0.05 * o.square().mean(dim=1 if rows >= cols else 0, keepdim=True)
        y = o / second.sqrt()
        y = y * o.norm() / y.norm()
        w = w * (1 - lr * decay) - lr * max(1.0, rows / cols) ** 0.5 * y
    return w


def test_normuon_steps_match_the_papers_update_and_differ_from_muons():
    g = torch.Generator().manual_seed(3)
    shapes = [(48, 16), (48, 16), (16, 48), (16, 16)]  # two of a shape go through the iteration together
    weights = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for _ in range(3)] for s in shapes]
    moved = {}
    for kind in ("normuon", "muon"):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = make_muon(params, TrainConfig(optimizer=kind, lr=1e-3, muon_lr=0.02, weight_decay=0.1))
        for step in range(3):
            for p, gs in zip(params, grads, strict=True):
                p.grad = gs[step].clone()
            opt.step()
        moved[kind] = [p.detach() for p in params]
    for w, gs, got, muon in zip(weights, grads, moved["normuon"], moved["muon"], strict=True):
        want = normuon_reference(w, gs, 0.02, 0.1)
        assert float((got - want).norm() / (want - w).norm()) < 1e-4
        assert float((got - muon).norm() / (muon - w).norm()) > 0.01  # the per-neuron scaling changed the step (~4%)


def test_the_schedule_sets_both_optimizers_rates():
    torch.manual_seed(0)
    cfg = small()
    model = GPT(cfg)
    t = TrainConfig(optimizer="muon", schedule="cosine", lr=1e-3, min_lr=1e-4, warmup_iters=5, max_iters=50,
                    muon_lr=0.02, batch_size=2)
    opt = make_optimizer(model, t, CPU)
    setup = StepSetup(net=model, model=model, optimizer=opt, train=t)
    x, y = torch.randint(0, 97, (2, 2, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    for step in (0, 4, 20, 50):
        train_step(setup, x, y, lr_at(step, t))
        muon_lr, *adamw_lrs = [group["lr"] for group in opt.param_groups]
        assert adamw_lrs == [lr_at(step, t)] * 2
        assert muon_lr == pytest.approx(lr_at(step, t) * 20)
        seen.append(muon_lr)
    assert seen[0] < seen[1] and seen[1] > seen[2] > seen[3] == pytest.approx(2e-3)  # warmup, then the decay


@pytest.mark.parametrize("optimizer, sampling", [("muon", "random"), ("normuon", "shuffle")])
def test_a_run_with_every_lever_trains_and_resumes_bit_for_bit(tiny_cfg, tmp_path, optimizer, sampling):
    cfg = tiny_cfg.replace({
        "max_iters": 30, "model.dropout": 0.1, "optimizer": optimizer, "sampling": sampling, "model.activation": "relu2",
        "model.qk_norm": True, "model.logit_softcap": 15.0, "sample_tokens": 0,
    })
    train(cfg, tmp_path / "straight", progress=False)
    trainer = Trainer(cfg, tmp_path / "split", progress=False)
    interrupt_after(trainer, step=13, signal_name="SIGINT")
    trainer.run()
    ckpt = list_checkpoints(tmp_path / "split")[-1]
    groups = json.loads((ckpt / "state.json").read_text())["optimizer"]["param_groups"]
    assert ckpt.name == "step_0000013" and len(groups) == 3 and groups[0]["lr_scale"] == pytest.approx(0.02 / 3e-3)
    train(None, tmp_path / "split", resume=True, progress=False)
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert len(a) == len(b) == 4  # steps 0, 10, 20, 30
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in a] == [(r["step"], r["train_loss"], r["val_loss"]) for r in b]
    assert a[-1]["val_loss"] < a[0]["val_loss"] - 0.5  # and it learned


def test_resuming_with_the_other_optimizer_is_one_line(tiny_cfg, tmp_path, capsys):
    from psyduck.cli import main

    run = tmp_path / "run"
    train(tiny_cfg.replace({"max_iters": 2, "eval_interval": 2, "sample_tokens": 0}), run, progress=False)
    code = main(["train", "--out", str(run), "--resume", "--no-progress", "max_iters=4", "train.optimizer=muon"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == (
        "psyduck: error: the checkpoint's optimizer state does not fit this optimizer (the saved state is not a "
        "Muon + AdamW optimizer's); resume with the train.optimizer the run was trained with (its config.json)"
    )
    muon_run = tmp_path / "muon"
    train(tiny_cfg.replace({"max_iters": 2, "eval_interval": 2, "sample_tokens": 0, "optimizer": "muon"}), muon_run,
          progress=False)
    with pytest.raises(PsyDuckError, match=r"^the checkpoint's optimizer state does not fit this optimizer \(.*\); "
                                          r"resume with the train.optimizer the run was trained with \(its config.json\)$"):
        train(tiny_cfg.replace({"max_iters": 4, "eval_interval": 2}), muon_run, resume=True, progress=False)
    with pytest.raises(PsyDuckError, match=r"\(the saved state is not a NorMuon \+ AdamW optimizer's\)"):
        train(tiny_cfg.replace({"max_iters": 4, "eval_interval": 2, "optimizer": "normuon"}), muon_run, resume=True,
              progress=False)
