"""Training a GPT: `train(cfg, "runs/x")` in one call, or a `Trainer` to drive step by step.

    from psyduck import train                  # this package, callable: train(cfg, out) == train.train(cfg, out)
    from psyduck.train import Trainer, train_step, lr_at

The rooms, each one concept:
    trainer.py       the loop: when to step, evaluate, save, sample and stop
    preflight.py     what is settled before the first step: where the run starts from (resume,
                     damaged checkpoints, start over), the data, and whether the model fits
    signals.py       Ctrl-C and SIGTERM: finish the step, save, exit 130 or 143
    step.py          one optimizer step (micro-batches, accumulation, clipping, NaN guard), the
                     learning-rate schedule (by steps or by the share of a time budget), the optimizer
    clock.py         training by the clock: seconds used across resumes, when to evaluate and stop
    task_scores.py   benchmark scores during training (eval.tasks): multiple-choice sets, scored
    state.py         what a checkpoint holds for exact resume: the random states, captured and restored
    distributed.py   several processes under torchrun (DDP over NCCL or gloo)
    telemetry.py     tokens/s and MFU, metrics.jsonl and external loggers, loss curves, progress bar
"""

from __future__ import annotations

import sys
import types
from typing import Any

from psyduck.train.distributed import Distributed
from psyduck.train.state import capture_rng, restore_rng
from psyduck.train.step import StepSetup, is_out_of_memory, lr_at, make_optimizer, out_of_memory_advice, train_step
from psyduck.train.telemetry import ExternalLoggers, plot_loss_curve
from psyduck.train.trainer import Trainer, train

__all__ = [
    "Distributed", "ExternalLoggers", "StepSetup", "Trainer", "capture_rng", "is_out_of_memory", "lr_at",
    "make_optimizer", "out_of_memory_advice", "plot_loss_curve", "restore_rng", "train", "train_step",
]


class _CallablePackage(types.ModuleType):
    """This package, callable as its `train` function.

    `psyduck.train` names both this package and the function in it. Python binds a package's
    submodule as an attribute of its parent when it is first imported, so without this the name
    `from psyduck import train` gives depends on what was imported earlier: the function, or the
    package (which then cannot be called). Calling the package calls the function, so both
    `from psyduck import train; train(cfg, out)` and `psyduck.train.train(cfg, out)` always work.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
