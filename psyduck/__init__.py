"""PsyDuck: build, train and sample a small GPT from scratch.

    from psyduck import GPT, load_run, presets, train
    model = GPT(presets["seed-60m"].model)
    logits, loss = model(idx, targets)
    model, tokenizer = load_run("runs/demo")
"""

from psyduck.checkpoint import load_run
from psyduck.config import Config, DataConfig, ModelConfig, TrainConfig, get_preset, presets
from psyduck.errors import PsyDuckError
from psyduck.model import GPT

__all__ = [
    "GPT", "Config", "DataConfig", "ModelConfig", "TrainConfig", "PsyDuckError",
    "get_preset", "load_run", "presets", "train", "prepare", "evaluate",
]
__version__ = "0.1.0"


def train(*args, **kwargs):
    """See `psyduck.train.train`."""
    from psyduck.train import train as _train

    return _train(*args, **kwargs)


def prepare(*args, **kwargs):
    """See `psyduck.data.prepare.prepare`."""
    from psyduck.data.prepare import prepare as _prepare

    return _prepare(*args, **kwargs)


def evaluate(*args, **kwargs):
    """See `psyduck.evaluate.evaluate`."""
    from psyduck.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
