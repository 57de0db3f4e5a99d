"""Loss curves: the picture of a training run (the seed's `lcurve.png`).

Two panels: train and val loss against optimizer steps, and against tokens seen (the axis that
compares runs with different batch sizes fairly).
"""

from __future__ import annotations

from pathlib import Path

from psyduck.io import atomic_path, read_jsonl


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Draw train/val loss from metrics.jsonl into a PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in a worker thread

    rows = [r for r in read_jsonl(metrics_path) if "val_loss" in r]
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "tokens", "tokens seen")):
        for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "val", "-s")):
            pts = [(r[xkey], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")  # the temporary name has no .png to infer it from
    return out


class BackgroundPlotter:
    """Redraws a loss curve in a worker thread, so training does not wait for matplotlib."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plot")
        self.pending = None
        self.stale = False  # an update was skipped while a drawing was in progress

    def update(self, metrics_path: str | Path, out_png: str | Path, title: str = "") -> None:
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
