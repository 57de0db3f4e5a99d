"""What a run tells the person watching it: speed, metric rows, loss curves, the progress bar.

- speed: tokens per second over the steps since the last evaluation, and MFU (model FLOPs
  utilisation: tokens/s x training FLOPs per token / the device's peak FLOP/s);
- metrics.jsonl: one JSON line per evaluation, also sent to TensorBoard and/or W&B when
  `train.loggers` names them (imported only then);
- loss_curve.png: train and val loss against steps and against tokens seen (the axis that compares
  runs with different batch sizes fairly), and beside them any benchmark scores (`task/...` keys),
  redrawn in a worker thread so training does not wait;
- the tqdm bar with loss, tokens/s and MFU, over steps, or by the clock over seconds with the time left.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from psyduck import hardware
from psyduck.config import Config
from psyduck.errors import PsyDuckError
from psyduck.io import atomic_path, keep_jsonl_rows, read_jsonl
from psyduck.train.clock import format_seconds

# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------


class Speedometer:
    """MFU for a model on a device: tokens/s x FLOPs per token / peak FLOP/s of all processes."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, processes: int) -> None:
        self.device, self.dtype, self.processes = device, dtype, processes
        self.flops_per_token = hardware.flops_per_token(model)
        self.peak = hardware.peak_flops(device, dtype) * processes
        self.rechecked = False

    def mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s * self.flops_per_token / self.peak

    def recheck_peak(self, elapsed: float) -> None:
        """A CPU's peak is measured, and the cold start of a run reads it low: once the run has been
        going for 30 s, measure once more, warm, and keep the higher figure."""
        if self.device.type == "cpu" and elapsed > 30 and not self.rechecked:
            self.peak = max(self.peak, hardware.peak_flops(self.device, self.dtype) * self.processes)
            self.rechecked = True


class Window:
    """The training steps since the last evaluation: their mean loss and tokens per second."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.tokens = 0
        self.start = time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    def tokens_per_s(self, now: float) -> float:
        return self.tokens / max(now - self.start, 1e-9)


class ProgressBar:
    """tqdm's bar over optimizer steps, or with a `budget` over its seconds (nothing at all when
    disabled, e.g. on ranks other than 0).

    By the clock the bar fills with time, and the postfix names the step and the time left: the
    number of steps is not known in advance, so a bar of steps could not say how far along it is.
    """

    def __init__(self, enabled: bool, total: int, initial: int, budget: float = 0.0, used: float = 0.0) -> None:
        self.bar = None
        self.budget = budget
        if enabled:
            from tqdm.auto import tqdm

            if budget:
                fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}"
                self.bar = tqdm(total=budget, initial=min(used, budget), desc="train", bar_format=fmt, dynamic_ncols=True, mininterval=1.0)
            else:
                self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)

    def step(self, loss: float, tokens_per_s: float, mfu: float, step: int = 0, seconds: float = 0.0) -> None:
        """After optimizer step `step`, `seconds` into the run (both read only by the clock)."""
        if self.bar is None:
            return
        postfix = {"loss": f"{loss:.3f}", "tok_s": f"{tokens_per_s:,.0f}", "mfu": f"{100 * mfu:.0f}%"}
        if self.budget:
            self.bar.update(min(seconds, self.budget) - self.bar.n)
            postfix = {"step": str(step), "left": format_seconds(max(0.0, self.budget - seconds)), **postfix}
        else:
            self.bar.update(1)
        self.bar.set_postfix(postfix)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# metrics.jsonl and the loggers it feeds
# ---------------------------------------------------------------------------------------------


class RunLog:
    """A run's record of its evaluations: metrics.jsonl, the loss curve, and any external loggers."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.metrics = out / "metrics.jsonl"
        self.png = out / "loss_curve.png"
        self.loggers = ExternalLoggers([])
        self.plotter = BackgroundPlotter()

    def open_loggers(self, cfg: Config) -> None:
        self.loggers = ExternalLoggers.create(cfg, self.out)

    def write(self, row: dict[str, Any]) -> None:
        """Append one evaluation row, forward it to the loggers, and redraw the loss curve."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.loggers.log(row, row["step"])
        self.plotter.update(self.metrics, self.png, title=self.out.name)

    def forget_after(self, step: int) -> None:
        """On resume: rows written after the checkpoint belong to a future that did not happen."""
        keep_jsonl_rows(self.metrics, lambda row: int(row.get("step", 0)) <= step)

    def close(self, draw: bool = True) -> None:
        """Finish the last drawing (with `draw`, once more if an update was skipped) and close the loggers."""
        if draw and self.metrics.exists():
            self.plotter.close(self.metrics, self.png, title=self.out.name)
        self.loggers.close()


class ExternalLoggers:
    """Forward metric rows to TensorBoard and/or W&B when `train.loggers` names them."""

    def __init__(self, sinks: list[tuple[str, Any]]) -> None:
        self.sinks = sinks

    @classmethod
    def create(cls, cfg: Config, out: Path) -> "ExternalLoggers":
        """Open the loggers `cfg.train.loggers` names (TensorBoard writes into `out`/tensorboard)."""
        names = [n.strip() for n in cfg.train.loggers.split(",") if n.strip()]
        sinks: list[tuple[str, Any]] = []
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise PsyDuckError("tensorboard logging asked for but not installed; pip install tensorboard") from None
                sinks.append(("tensorboard", SummaryWriter(log_dir=str(out / "tensorboard"))))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError:
                    raise PsyDuckError("wandb logging asked for but not installed; pip install wandb") from None
                sinks.append(("wandb", wandb.init(project="psyduck", name=out.name, config=cfg.to_dict())))
            else:
                raise PsyDuckError(f"unknown logger {name!r} in train.loggers; use tensorboard and/or wandb")
        return cls(sinks)

    def log(self, row: dict[str, Any], step: int) -> None:
        for kind, sink in self.sinks:
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            if kind == "tensorboard":
                for k, v in scalars.items():
                    sink.add_scalar(k, v, step)
            else:
                sink.log(scalars, step=step)

    def close(self) -> None:
        for kind, sink in self.sinks:
            sink.close() if kind == "tensorboard" else sink.finish()


# ---------------------------------------------------------------------------------------------
# Loss curves: the picture of a training run (the seed's `lcurve.png`)
# ---------------------------------------------------------------------------------------------


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Draw train/val loss from metrics.jsonl into a PNG, written atomically; with benchmark
    scores in the rows (`task/<name>/<metric>`), a third panel draws them against steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in a worker thread

    all_rows = read_jsonl(metrics_path)
    rows = [r for r in all_rows if "val_loss" in r]
    task_keys = sorted({k for r in all_rows for k in r if k.startswith(TASK_PREFIX)})
    fig = Figure(figsize=(16 if task_keys else 11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if task_keys else 2)
    for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "tokens", "tokens seen")):
        for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "val", "-s")):
            pts = [(r[xkey], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    if task_keys:
        _plot_task_scores(axes[2], all_rows, task_keys)
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")  # the temporary name has no .png to infer it from
    return out


TASK_PREFIX = "task/"  # metrics keys of benchmark scores: task/<name>/acc, task/<name>/acc_norm


def _plot_task_scores(ax: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Each benchmark score against steps, on an accuracy axis from 0 to 1."""
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), "-o", markersize=3, label=key[len(TASK_PREFIX):])
    ax.set_xlabel("step")
    ax.set_ylabel("benchmark accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()


class BackgroundPlotter:
    """Redraws a loss curve in a worker thread, so training does not wait for matplotlib."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plot")
        self.pending: Future[Path] | None = None
        self.stale = False  # an update was skipped while a drawing was in progress

    def update(self, metrics_path: str | Path, out_png: str | Path, title: str = "") -> None:
        """Start a redraw, unless one is still running (then it is drawn later: `stale`)."""
        if self.pending is not None and not self.pending.done():
            self.stale = True  # drawn at the next update, or at close
            return
        self.stale = False
        self.pending = self.pool.submit(plot_loss_curve, metrics_path, out_png, title)

    def close(self, metrics_path: str | Path | None = None, out_png: str | Path | None = None, title: str = "") -> None:
        """Wait for drawing to finish, then draw once more if the last update was skipped."""
        if self.pending is not None:
            self.pending.result()
        if self.stale and metrics_path is not None and out_png is not None:
            plot_loss_curve(metrics_path, out_png, title)
        self.pool.shutdown(wait=True)
