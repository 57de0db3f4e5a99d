"""Muon for the blocks' matrices, AdamW for everything else: two optimizers that act as one.

Muon (Keller Jordan 2024, https://kellerjordan.github.io/posts/muon/; the optimizer of the
modded-nanogpt speedruns and of nanochat) updates a weight matrix by its momentum *orthogonalized*:
the nearest matrix whose singular values are all about 1, found by five steps of a quintic
Newton–Schulz iteration, X <- aX + b(XXᵀ)X + c(XXᵀ)²X with (a, b, c) = (3.4445, -4.7750, 2.0315).
A raw gradient is dominated by a few directions; the orthogonalized one moves every direction of
the matrix by the same amount. It is meant for the 2-D weights inside the blocks (attention's qkv
and proj, the FFN's matrices); the embeddings, the output layer, the norms' gains and the biases
keep AdamW, as in modded-nanogpt and nanochat.

PyTorch ships the update (`torch.optim.Muon`: Nesterov momentum, those coefficients, the rate
scaled by max(1, rows/cols)^0.5 so tall and wide matrices move alike). `MuonAdamW` holds a Muon
and an AdamW and looks like one optimizer to the rest of PsyDuck: `step`, `zero_grad`,
`param_groups` (Muon's first), and a `state_dict` numbered as one optimizer's, so checkpoints and
exact resume work as they do for AdamW alone (psyduck/state_dicts.py).

NorMuon (Li et al. 2025, https://arxiv.org/abs/2510.05491; in the modded-nanogpt speedruns since
late 2025), `train.optimizer="normuon"`: an orthogonalized update still moves some neurons (the
rows or columns along a matrix's long side) much more than others; NorMuon divides each neuron's
share by the running root mean square of its own past shares (an Adam-like second moment, one
number per neuron, beta2 0.95), then rescales the whole update back to its orthogonalized norm, so
the rate means what it means for Muon.

The schedule: each group carries an `lr_scale`, its peak rate over train.lr (train.muon_lr /
train.lr for Muon's group, 1 for AdamW's), and `step.set_lr` gives it the schedule's rate times
that, so warmup and decay shape both optimizers alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from psyduck.config import TrainConfig

NEURON_BETA2 = 0.95  # NorMuon's second-moment decay, the paper's and modded-nanogpt's


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks (`blocks.<i>....weight`): Muon's parameters."""
    return [
        p for name, p in model.named_parameters()
        if p.requires_grad and p.dim() == 2 and "blocks" in name.split(".")
    ]


def make_muon(params: list[torch.nn.Parameter], t: TrainConfig) -> torch.optim.Muon:
    """Muon at train.muon_lr and train.muon_momentum: torch's on a GPU, `Float32Muon` on a CPU (and
    for NorMuon everywhere).
    train.weight_decay is decoupled as in AdamW (each step w <- w * (1 - rate * decay)), at Muon's
    own, larger rate."""
    group = {"params": params, "lr_scale": t.muon_lr / t.lr}
    normuon = t.optimizer == "normuon"  # torch has no NorMuon: ours, on every device
    if normuon:
        group["neuron_beta2"] = NEURON_BETA2
    kind = Float32Muon if normuon or (params and params[0].device.type == "cpu") else torch.optim.Muon
    return kind([group], lr=t.muon_lr, momentum=t.muon_momentum, weight_decay=t.weight_decay)


class Float32Muon(torch.optim.Muon):
    """torch's Muon, its Newton–Schulz iteration in float32 instead of bfloat16, and batched.

    A CPU without bfloat16 instructions (AVX2 only, the CI-class machine) multiplies bfloat16
    matrices ~40x slower than float32: torch's step took 419 ms of cpu-small's ~630 ms training
    step there, the float32 one 18.5 ms (docs/performance.md). The matrices of one shape (cpu-small:
    twelve 128 x 384 and four 128 x 128, after turning tall ones on their side) go through the
    iteration together, one batched product per term instead of one per matrix: the same update
    (each matrix normalised by its own norm), fewer and larger products. Same state and groups.

    A group with `neuron_beta2` > 0 takes NorMuon's step (module docstring): state
    "neuron_buffer" holds each neuron's running mean square, one per column of the wide orientation
    (per row for a square matrix: its output neurons, as modded-nanogpt's NorMuon has it).
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            raise ValueError("Float32Muon.step takes no closure")
        for group in self.param_groups:
            by_shape: dict[tuple[int, int], list[tuple[torch.nn.Parameter, torch.Tensor, bool]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                tall = update.size(0) > update.size(1)
                x = (update.T if tall else update).float()
                by_shape.setdefault(tuple(x.shape), []).append((p, x, tall))
            for members in by_shape.values():
                x = torch.stack([m[1] for m in members])  # (n, rows, cols), rows <= cols
                x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=group["eps"])
                a, b, c = group["ns_coefficients"]
                for _ in range(group["ns_steps"]):
                    gram = x @ x.mT
                    x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                if group.get("neuron_beta2", 0.0):
                    x = self.neuron_normalized(x, [self.state[m[0]] for m in members], group["neuron_beta2"])
                for (p, _, tall), orth in zip(members, x, strict=True):
                    self.apply(p, orth.T if tall else orth, group)

    @staticmethod
    def neuron_normalized(x: torch.Tensor, states: list[dict[str, Any]], beta2: float) -> torch.Tensor:
        """NorMuon: orthogonalized updates x (n, rows, cols), each neuron divided by the root of its
        running mean square (updated here, in `states`), then each matrix scaled back to its norm."""
        dim = -1 if x.shape[-2] == x.shape[-1] else -2  # square: a value per row; wide: per column
        square = x.square().mean(dim, keepdim=True)  # (n, 1, cols) or (n, rows, 1)
        for state, sq in zip(states, square, strict=True):
            state.setdefault("neuron_buffer", torch.zeros_like(sq)).lerp_(sq, 1 - beta2)
        scale = torch.stack([s["neuron_buffer"] for s in states]).clamp(min=1e-10).rsqrt()
        y = x * scale
        norm = torch.linalg.matrix_norm(x, keepdim=True)
        return y * (norm / torch.linalg.matrix_norm(y, keepdim=True).clamp(min=1e-10))

    @staticmethod
    def apply(p: torch.nn.Parameter, orth: torch.Tensor, group: dict[str, Any]) -> None:
        """Decay `p`, then step it along its orthogonalised update at torch's adjusted rate."""
        rows, cols = p.shape[:2]  # torch's two rate adjustments (`adjust_lr_fn`), as its Muon has them
        match_adamw = group["adjust_lr_fn"] == "match_rms_adamw"
        scale = 0.2 * max(rows, cols) ** 0.5 if match_adamw else max(1.0, rows / cols) ** 0.5
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(orth.to(p.dtype), alpha=-group["lr"] * scale)


class MuonAdamW:
    """A Muon and an AdamW stepped together, with one set of param groups and one state dict."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon = muon
        self.adamw = adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Muon's groups, then AdamW's (the dicts themselves: setting a group's lr sets it)."""
        return [*self.muon.param_groups, *self.adamw.param_groups]

    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both states as one optimizer's: parameters numbered through Muon's groups, then AdamW's."""
        m, a = self.muon.state_dict(), self.adamw.state_dict()
        offset = sum(len(g["params"]) for g in m["param_groups"])
        state = {**m["state"], **{pid + offset: s for pid, s in a["state"].items()}}
        adamw_groups = [{**g, "params": [pid + offset for pid in g["params"]]} for g in a["param_groups"]]
        return {"state": state, "param_groups": [*m["param_groups"], *adamw_groups]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dict` wrote; ValueError when it is another optimizer's state."""
        groups, k = sd["param_groups"], len(self.muon.param_groups)
        beta2 = [g.get("neuron_beta2", 0.0) for g in self.muon.param_groups]
        if (len(groups) != k + len(self.adamw.param_groups) or any("ns_coefficients" not in g for g in groups[:k])
                or [g.get("neuron_beta2", 0.0) for g in groups[:k]] != beta2):
            raise ValueError(f"the saved state is not a {'NorMuon' if any(beta2) else 'Muon'} + AdamW optimizer's")
        for opt, part in ((self.muon, groups[:k]), (self.adamw, groups[k:])):
            ids = {pid for g in part for pid in g["params"]}
            opt.load_state_dict({"state": {pid: s for pid, s in sd["state"].items() if pid in ids}, "param_groups": part})
