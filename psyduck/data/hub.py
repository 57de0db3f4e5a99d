"""A Hugging Face dataset by name, through the `datasets` package.

    psyduck prepare hf roneneldan/TinyStories --text-field text --tokenizer bpe-8192
    psyduck prepare hf HuggingFaceFW/fineweb-edu --config sample-10BT --streaming --max-tokens 200M

The name is what ``datasets.load_dataset`` takes: a hub name (downloaded once into the user's HF
cache, ``$HF_HOME``, and read from there afterwards, offline too) or a local folder in the hub's
layout (``data/train-00000-of-00001.parquet``, ``validation-*.jsonl``, ...). `datasets` is an
optional dependency (``pip install 'psyduck[hf]'``), imported only here.

Design choices:
- Splits: the dataset's own held-out split when it has one (``validation``, else ``test``, becomes
  PsyDuck's val; with both, ``test`` stays test), so numbers compare with what others report on
  it. Without one, prepare makes a deterministic document-level split of ``train`` (see
  prepare.py). ``--split-map train=train,validation=val`` says it by hand.
- ``--streaming`` reads the dataset as it downloads, never storing the whole of it: the way to
  take the first ``--max-tokens`` of a corpus far larger than the disk (FineWeb-Edu is terabytes).
- Records are read in batches of BATCH_ROWS; only the text field is kept.
- Every failure (not installed, offline with an empty cache, no such dataset, a missing config,
  a missing or non-text field, an empty split) is one line naming the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

from psyduck.data.document import Document
from psyduck.errors import PsyDuckError

BATCH_ROWS = 1000
HELD_OUT = ("validation", "valid", "dev", "test")  # the hub's names for held-out splits, in preference order
PSYDUCK_SPLITS = ("train", "val", "test")


def parse_split_map(spec: str | None) -> dict[str, str] | None:
    """ "train=train,validation=val" -> {"train": "train", "validation": "val"} (hub split -> PsyDuck's)."""
    if not spec:
        return None
    mapping: dict[str, str] = {}
    for item in spec.split(","):
        hub, sep, ours = (part.strip() for part in item.partition("="))
        if not sep or not hub or ours not in PSYDUCK_SPLITS:
            raise PsyDuckError(
                f"bad --split-map item '{item}'; write HUB_SPLIT=train|val|test, comma-separated "
                "(e.g. train=train,validation=val)"
            )
        mapping[hub] = ours
    if "train" not in mapping.values():
        raise PsyDuckError(f"--split-map {spec} names no train split; add e.g. train=train")
    return mapping


def default_split_map(names: list[str]) -> dict[str, str]:
    """Which of the dataset's splits become train / val / test (see the module docstring)."""
    if "train" not in names:
        raise PsyDuckError(f"the dataset has no 'train' split (it has: {', '.join(names)}); pass --split-map SPLIT=train,...")
    held = [n for n in HELD_OUT if n in names]
    mapping = {"train": "train"}
    if held:
        mapping[held[0]] = "val"
        if held[0] != "test" and "test" in names:
            mapping["test"] = "test"
    return mapping


def _import_datasets() -> ModuleType:
    try:
        import datasets
    except ImportError:
        raise PsyDuckError("the hf source needs the Hugging Face `datasets` package; pip install 'psyduck[hf]'") from None
    return datasets


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load(name: str, config: str | None, streaming: bool) -> Any:
    """`datasets.load_dataset(name, config)`, every failure turned into one line naming the fix."""
    datasets = _import_datasets()
    try:
        return datasets.load_dataset(name, config, streaming=streaming)
    except datasets.exceptions.DatasetNotFoundError:
        raise PsyDuckError(
            f"dataset '{name}' was not found on the Hugging Face hub (a private one needs `hf auth login`); "
            "check the name, e.g. roneneldan/TinyStories"
        ) from None
    except ConnectionError as e:
        raise PsyDuckError(
            f"cannot load '{name}': the hub is unreachable (offline?) and the HF cache has no copy ({_first_line(e)}); "
            "connect once to download it, or set HF_HOME to a cache that holds it"
        ) from None
    except ValueError as e:
        if "config" in str(e).lower():
            raise PsyDuckError(f"dataset '{name}' needs a valid --config ({_first_line(e)})") from None
        raise PsyDuckError(f"cannot load '{name}' ({_first_line(e)})") from None
    except (FileNotFoundError, datasets.exceptions.DatasetsError) as e:
        raise PsyDuckError(f"cannot load '{name}' ({_first_line(e)}); check the name or the folder") from None


def check_field(split: Any, field: str, where: str) -> None:
    """A clear error when the split's columns (where known before reading) lack a text field."""
    features = getattr(split, "features", None)
    if not features:
        return  # a streamed dataset may learn its columns from the first record: checked there
    texts = [k for k, v in features.items() if getattr(v, "dtype", None) in ("string", "large_string")]
    listed = ", ".join(texts) or "none"
    if field not in features:
        raise PsyDuckError(f"{where} has no column '{field}'; its text columns: {listed}; pass --text-field NAME")
    if field not in texts:
        raise PsyDuckError(
            f"column '{field}' of {where} holds {features[field]}, not text; its text columns: {listed}; "
            "pass --text-field NAME"
        )


class HubDataset:
    """One dataset: iterating yields its documents, split by split (train first).

    Loading happens here, so a wrong name or a missing package fails before any work. With its
    own held-out split every document carries its split; otherwise (``own_splits`` False) the
    documents are plain train text and prepare splits them. ``streaming`` tells prepare it cannot
    read the dataset twice (so it cannot count first); `size_hint` is about how many bytes.
    """

    def __init__(
        self, name: str | None, config: str | None = None, split_map: str | None = None,
        text_field: str = "text", streaming: bool = False,
    ) -> None:
        if not name:
            raise PsyDuckError("the hf source needs a dataset name: psyduck prepare hf NAME (e.g. roneneldan/TinyStories)")
        self.name, self.text_field, self.streaming = name, text_field, streaming
        mapping = parse_split_map(split_map)  # check the flag before any download
        self.data = load(name, config, streaming)
        names = list(self.data)
        self.split_map = mapping or default_split_map(names)
        unknown = [s for s in self.split_map if s not in names]
        if unknown:
            raise PsyDuckError(f"dataset '{name}' has no split {unknown[0]} (it has: {', '.join(names)}); fix --split-map")
        self.own_splits = "val" in self.split_map.values()
        for hub in self.split_map:
            check_field(self.data[hub], text_field, f"split '{hub}' of {name}")
        self.size_hint = self._size()

    def _size(self) -> int | None:
        """The text bytes the dataset's card announces for the splits read (None when unknown)."""
        try:
            splits = next(iter(self.data.values())).info.splits or {}
            sizes = [splits[hub].num_bytes for hub in self.split_map if hub in splits]
            return int(sum(sizes)) if sizes and all(sizes) else None
        except (AttributeError, KeyError, TypeError, StopIteration):
            return None

    def __iter__(self) -> Iterator[str | Document]:
        order = sorted(self.split_map, key=lambda hub: PSYDUCK_SPLITS.index(self.split_map[hub]))
        for hub in order:
            split = self.split_map[hub] if self.own_splits else None
            empty = True
            for text in self._texts(hub):
                empty = False
                yield Document(text, split) if split else text
            if empty:
                raise PsyDuckError(f"split '{hub}' of {self.name} is empty; pick another with --split-map")

    def _texts(self, hub: str) -> Iterator[str]:
        where = f"split '{hub}' of {self.name}"
        batches = self.data[hub].iter(batch_size=BATCH_ROWS)
        while True:
            try:
                batch = next(batches, None)
            except Exception as e:  # a damaged file, a lost connection mid-stream: many types, one line
                raise PsyDuckError(f"cannot read {where} ({type(e).__name__}: {_first_line(e)}); check the files or retry") from None
            if batch is None:
                return
            if self.text_field not in batch:
                listed = ", ".join(k for k, v in batch.items() if v and isinstance(v[0], str)) or "none"
                raise PsyDuckError(f"{where} has no field '{self.text_field}'; its text fields: {listed}; pass --text-field NAME")
            for value in batch[self.text_field]:
                if isinstance(value, str):
                    yield value
                elif value is not None:
                    raise PsyDuckError(
                        f"field '{self.text_field}' of {where} holds {type(value).__name__}, not text; pass --text-field NAME"
                    )
