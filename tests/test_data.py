"""The data pipeline: sources -> prepare (shards + meta.json) -> TokenData batches."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from psyduck.data.epochs import EpochOrder
from psyduck.data.loader import TokenData
from psyduck.data.prepare import prepare
from psyduck.data.sources import SOURCES, read_documents
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import EOT, load_tokenizer, make_tokenizer

WORDS = (
    "the a model learns to predict next token from text data train loss value small large "
    "attention layer head block weight gradient step batch window byte unicode café 東京"
).split()


def paragraph(rng: random.Random) -> str:
    return " ".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 10))).capitalize() + "." for _ in range(4))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 30 small documents: .txt and .md files, one nested, plus files to ignore."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    (root / "nested").mkdir()
    for i in range(30):
        folder = root / "nested" if i % 7 == 0 else root
        suffix = ".md" if i % 3 == 0 else ".txt"
        (folder / f"doc{i:02d}{suffix}").write_text(f"\n{paragraph(rng)}\n\n{paragraph(rng)}\n", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG not text")
    (root / "blank.txt").write_text("  \n\n ")
    return root


@pytest.fixture(scope="module")
def bpe_data(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("text", "bpe-300", tmp_path_factory.mktemp("bpe_data"), path=str(corpus), show_progress=False)


def counting_data(folder: Path, n: int, tokenizer: str = "bpe-65536") -> Path:
    """A hand-made data folder whose tokens are 0, 1, 2, ...: a token's value is its position."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = "uint16" if n <= 2**16 else "uint32"
    np.arange(n, dtype=f"<u{2 if dtype == 'uint16' else 4}").tofile(folder / "train_000.bin")
    np.arange(n // 2, dtype=f"<u{2 if dtype == 'uint16' else 4}").tofile(folder / "val_000.bin")
    split = lambda name, k: {"shards": [f"{name}_000.bin"], "tokens": k, "bytes": 4 * k, "documents": 1}
    meta = {"format": 1, "source": "test", "path": None, "tokenizer": tokenizer, "vocab_size": 65536,
            "eot_id": 0, "dtype": dtype, "splits": {"train": split("train", n), "val": split("val", n // 2)},
            "val_fraction": 0.05, "seed": 1337}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def texts(source: str, path: str | None = None) -> list[str]:
    """The text of every document of a source, as prepare reads them."""
    return [doc.text for doc in read_documents(source, path)]


# --- sources -------------------------------------------------------------------------------------

def test_folder_source_reads_txt_and_md_recursively_in_sorted_order(corpus: Path) -> None:
    docs = texts("text", str(corpus))
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".txt", ".md"))
    expected = [p.read_text(encoding="utf-8").strip() for p in files]
    assert docs == [d for d in expected if d]
    assert len(docs) == 30


def test_file_source_splits_on_endoftext(tmp_path: Path) -> None:
    (tmp_path / "stories.txt").write_text(f"first story\n{EOT}\nsecond story\n{EOT}\n\n{EOT}\nthird\n")
    assert texts("text", str(tmp_path / "stories.txt")) == ["first story", "second story", "third"]


def test_wiki_vital_source_yields_article_extracts() -> None:
    docs = (doc.text for doc in read_documents("wiki-vital"))
    first = next(docs)
    assert first.startswith("20th-century classical music is")
    assert sum(1 for _ in docs) + 1 == 10033


def test_sources_table_names() -> None:
    assert list(SOURCES) == [
        "wiki-vital", "text", "sales-textbook", "wikitext-103", "wikitext-103-v1", "wikitext-2", "wikitext-2-v1", "files", "hf",
        "tinystories", "fineweb-edu",
    ]


# --- prepare -------------------------------------------------------------------------------------

def split_documents(folder: Path, split: str) -> list[list[int]]:
    """The token ids of each document of a split (documents end with eot)."""
    data = TokenData(folder)
    tokens = data.tokens(split).tolist()
    assert tokens[-1] == data.eot_id
    docs, current = [], []
    for t in tokens:
        if t == data.eot_id:
            docs.append(current)
            current = []
        else:
            current.append(t)
    return docs


def test_prepare_bpe_writes_consistent_shards_and_meta(bpe_data: Path, corpus: Path) -> None:
    meta = json.loads((bpe_data / "meta.json").read_text())
    assert (meta["format"], meta["source"], meta["path"], meta["tokenizer"]) == (1, "text", str(corpus), "bpe-300")
    assert (meta["vocab_size"], meta["dtype"], meta["val_fraction"], meta["seed"]) == (300, "uint16", 0.05, 1337)
    tok = load_tokenizer(bpe_data)
    assert (tok.name, meta["eot_id"]) == ("bpe-300", tok.eot_id)

    all_docs = texts("text", str(corpus))
    decoded = {}
    for split in ("train", "val"):
        info = meta["splits"][split]
        assert info["shards"] == [f"{split}_000.bin"]
        assert (bpe_data / info["shards"][0]).stat().st_size == 2 * info["tokens"]  # uint16
        docs = [tok.decode(ids) for ids in split_documents(bpe_data, split)]  # eot separates documents
        assert len(docs) == info["documents"]
        assert info["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
        decoded[split] = docs
    assert meta["splits"]["val"]["documents"] == 2  # round(30 * 0.05) -> 2
    assert sorted(decoded["train"] + decoded["val"]) == sorted(all_docs)
    assert not set(decoded["train"]) & set(decoded["val"])


def test_bpe_is_trained_on_the_train_split_only(bpe_data: Path) -> None:
    saved = load_tokenizer(bpe_data)
    train_docs = [saved.decode(ids) for ids in split_documents(bpe_data, "train")]  # in source order
    assert make_tokenizer("bpe-300", train_docs)._hf.to_str() == saved._hf.to_str()


def test_prepare_is_deterministic(corpus: Path, bpe_data: Path, tmp_path: Path) -> None:
    again = prepare("text", "bpe-300", tmp_path / "again", path=str(corpus), show_progress=False)
    for name in ("meta.json", "tokenizer.json", "train_000.bin", "val_000.bin"):
        assert (again / name).read_bytes() == (bpe_data / name).read_bytes(), name
    other_seed = prepare("text", "bpe-300", tmp_path / "seed", path=str(corpus), seed=7, show_progress=False)
    assert (other_seed / "val_000.bin").read_bytes() != (bpe_data / "val_000.bin").read_bytes()


def test_prepare_cl100k_uses_uint32(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Hello world. " * 20 + f"\n{EOT}\n" + "Second document here. " * 10)
    out = prepare("text", "cl100k_base", tmp_path / "data", path=str(tmp_path / "a.txt"), show_progress=False)
    meta = json.loads((out / "meta.json").read_text())
    identity = (meta["tokenizer"], meta["vocab_size"], meta["eot_id"], meta["dtype"])
    assert identity == ("cl100k_base", 100277, 100257, "uint32")
    assert (out / "train_000.bin").stat().st_size == 4 * meta["splits"]["train"]["tokens"]
    assert [meta["splits"][s]["documents"] for s in ("train", "val")] == [1, 1]
    assert json.loads((out / "tokenizer.json").read_text()) == {"type": "tiktoken", "name": "cl100k_base"}


def test_prepare_accepts_a_tokenizer_object_and_splits_shards(corpus: Path, tmp_path: Path) -> None:
    tok = make_tokenizer("cl100k_base")
    out = prepare("text", tok, tmp_path / "d", path=str(corpus), shard_tokens=500, show_progress=False)
    meta = json.loads((out / "meta.json").read_text())
    train = meta["splits"]["train"]
    assert len(train["shards"]) == -(-train["tokens"] // 500) > 1
    sizes = [(out / s).stat().st_size // 4 for s in train["shards"]]
    assert sizes[:-1] == [500] * (len(sizes) - 1)
    data = TokenData(out)
    joined = np.concatenate([np.fromfile(out / s, dtype="<u4") for s in train["shards"]])
    assert np.array_equal(data.tokens("train"), joined)
    assert data.num_tokens("train") == len(joined)


def test_single_document_is_cut_in_two(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i} says something about tokens." for i in range(40)]
    (tmp_path / "one.txt").write_text("\n\n".join(paragraphs))
    out = prepare("text", "cl100k_base", tmp_path / "d", path=str(tmp_path / "one.txt"), show_progress=False)
    tok = load_tokenizer(out)
    train, val = (tok.decode(split_documents(out, s)[0]) for s in ("train", "val"))
    assert train + "\n\n" + val == "\n\n".join(paragraphs)  # cut at a paragraph break
    assert val.startswith("Paragraph 37")  # the paragraph break just before 95% of the text


def test_rerun_over_a_folder_removes_stale_shards(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    prepare("text", "cl100k_base", out, path=str(corpus), shard_tokens=500, show_progress=False)
    prepare("text", "cl100k_base", out, path=str(corpus), show_progress=False)
    assert sorted(p.name for p in out.glob("*.bin")) == ["train_000.bin", "val_000.bin"]


def test_interrupted_prepare_leaves_the_old_data_whole(corpus: Path, tmp_path: Path) -> None:
    """A re-prepare that dies keeps the previous data loadable; a first one that dies leaves no folder."""
    out = prepare("text", "cl100k_base", tmp_path / "d", path=str(corpus), show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tok = make_tokenizer("cl100k_base")

    class Killed(Exception):
        pass

    class Broken(type(tok)):  # a tokenizer that dies on its first batch
        def encode_to_arrays(self, texts: list[str]) -> list[np.ndarray]:
            raise Killed

    broken = Broken(tok.name, tok.vocab_size, tok.eot_id, encoding=tok._encoding)
    with pytest.raises(Killed):
        prepare("text", broken, out, path=str(corpus), show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    TokenData(out)
    with pytest.raises(Killed):
        prepare("text", broken, tmp_path / "new", path=str(corpus), show_progress=False)
    with pytest.raises(PsyDuckError) as e:
        TokenData(tmp_path / "new")
    assert str(e.value) == (
        f"data folder not found: {tmp_path / 'new'}; run `psyduck prepare wiki-vital --out {tmp_path / 'new'}` first"
    )


def test_prepare_wiki_vital_cl100k(tmp_path: Path) -> None:
    out = prepare("wiki-vital", "cl100k_base", tmp_path / "wiki", show_progress=False)
    data = TokenData(out)
    meta = data.meta
    assert (meta["source"], meta["path"], meta["dtype"]) == ("wiki-vital", None, "uint32")
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert (train["documents"], val["documents"]) == (10033 - 502, 502)
    assert train["bytes"] + val["bytes"] == sum(len(d.encode("utf-8")) for d in texts("wiki-vital"))
    assert 0.9e6 < train["tokens"] + val["tokens"] < 1.2e6
    assert int((data.tokens("val") == data.eot_id).sum()) == 502


# --- loader --------------------------------------------------------------------------------------

def test_get_batch_shapes_shift_and_windows(tmp_path: Path) -> None:
    data = TokenData(counting_data(tmp_path / "d", 1000))
    x, y = data.get_batch("train", 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # each row is a contiguous window
    assert int(y.max()) < 1000


def test_get_batch_on_real_shards(bpe_data: Path) -> None:
    data = TokenData(bpe_data)
    x, y = data.get_batch("train", 4, 32, torch.Generator().manual_seed(1))
    assert torch.equal(x[:, 1:], y[:, :-1])
    tokens = torch.from_numpy(data.tokens("train").astype(np.int64))
    windows = tokens.unfold(0, 33, 1)  # every window of the split
    for row in torch.cat([x, y[:, -1:]], dim=1):
        assert (windows == row).all(dim=1).any()


def test_get_batch_resumes_from_generator_state(bpe_data: Path) -> None:
    data = TokenData(bpe_data)
    g = torch.Generator().manual_seed(42)
    data.get_batch("train", 4, 32, g)
    state = g.get_state()
    first = [data.get_batch("train", 4, 32, g) for _ in range(3)]
    g2 = torch.Generator()
    g2.set_state(state)
    second = [data.get_batch("train", 4, 32, g2) for _ in range(3)]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@settings(max_examples=60, deadline=None)
@given(n_tokens=st.integers(2, 3000), block=st.integers(1, 64), seed=st.integers(0, 2**31), first=st.integers(0, 500))
def test_shuffled_epochs_visit_every_window_once_and_resume_from_the_count(n_tokens, block, seed, first):
    if n_tokens < block + 1:
        with pytest.raises(ValueError, match="hold no window"):
            EpochOrder(n_tokens, block, seed)
        return
    order = EpochOrder(n_tokens, block, seed)
    for e in range(3):
        starts = np.sort(order.epoch(e))
        assert len(starts) == order.per_epoch
        assert (np.diff(starts) == block).all()  # non-overlapping windows, every one of the epoch
        assert 0 <= starts[0] < block and starts[-1] + block + 1 <= n_tokens  # x and y fit
    assert order.per_epoch * block >= n_tokens - 2 * block + 1  # under two windows' worth left out an epoch
    run = np.concatenate([order.epoch(e) for e in range(first // order.per_epoch + 3)])
    again = EpochOrder(n_tokens, block, seed)  # a resumed run: a fresh order, asked from its count
    assert np.array_equal(again.starts(first, 2 * order.per_epoch + 1), run[first : first + 2 * order.per_epoch + 1])


def test_shuffled_batches_are_windows_of_the_split(tmp_path: Path) -> None:
    data = TokenData(counting_data(tmp_path / "d", 1000))
    order = EpochOrder(data.num_tokens("train"), 16, seed=3)
    x, y = data.windows("train", order.starts(0, 8), 16)
    assert x.shape == y.shape == (8, 16) and torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(16))
    assert not np.array_equal(order.epoch(0), order.epoch(1))  # each epoch in its own order


def test_eval_batches_cover_the_split_in_order(tmp_path: Path) -> None:
    data = TokenData(counting_data(tmp_path / "d", 1000))  # val: 500 tokens -> 31 windows of 16
    batches = list(data.iter_eval_batches("val", 8, 16))
    assert [len(x) for x, _ in batches] == [8, 8, 8, 7]
    ys = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(ys, torch.arange(1, 1 + 31 * 16))  # every target once, in order
    assert all(torch.equal(y, x + 1) for x, y in batches)
    assert len(list(data.iter_eval_batches("val", 8, 16, max_batches=2))) == 2
    assert [x.tolist() for x, _ in data.iter_eval_batches("val", 8, 16)] == [x.tolist() for x, _ in batches]


def test_many_shards_read_like_one(corpus: Path, tmp_path: Path) -> None:
    """Windows straddling shard boundaries come out whole, and the split is never joined in memory."""
    one = TokenData(prepare("text", "cl100k_base", tmp_path / "one", path=str(corpus), show_progress=False))
    many = TokenData(prepare("text", "cl100k_base", tmp_path / "many", path=str(corpus), shard_tokens=37,
                             show_progress=False))
    assert len(many._shards["train"]) > 10
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        (x1, y1), (x2, y2) = one.get_batch("train", 8, 64, g1), many.get_batch("train", 8, 64, g2)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for a, b in zip(one.iter_eval_batches("val", 4, 16), many.iter_eval_batches("val", 4, 16), strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    for a, b in zip(one.iter_scored_windows("val", 4, 16, 5), many.iter_scored_windows("val", 4, 16, 5), strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert many._joined == {}  # batches came straight from the shards


def test_num_bytes_and_attributes(bpe_data: Path) -> None:
    data = TokenData(bpe_data)
    assert (data.tokenizer_name, data.vocab_size) == ("bpe-300", 300)
    assert data.eot_id == load_tokenizer(bpe_data).eot_id == data.tokenizer().eot_id
    assert data.num_bytes("val") == data.meta["splits"]["val"]["bytes"] > 0
    assert data.num_tokens("val") == len(data.tokens("val"))
    assert isinstance(data.tokens("val"), np.memmap)


# --- error messages ------------------------------------------------------------------------------

def error(fn, *args, **kwargs) -> str:
    with pytest.raises(PsyDuckError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def test_error_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert error(TokenData, missing) == (
        f"data folder not found: {missing}; run `psyduck prepare wiki-vital --out {missing}` first"
    )


def test_error_corrupt_meta(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text("{truncated")
    message = error(TokenData, tmp_path)
    assert message.startswith(f"data folder {tmp_path} has a corrupt meta.json (")
    assert message.endswith(f"); run `psyduck prepare wiki-vital --out {tmp_path}`")


def test_error_truncated_shard(tmp_path: Path) -> None:
    folder = counting_data(tmp_path / "d", 1000)
    (folder / "train_000.bin").write_bytes(b"\0" * 10)
    assert error(TokenData, folder) == (
        f"the train shards in {folder} do not match meta.json; run `psyduck prepare wiki-vital --out {folder}`"
    )


def test_error_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text(" \n\n\t ")
    (tmp_path / "only_sep.md").write_text(f"{EOT}\n{EOT}")
    assert error(prepare, "text", "bpe-300", tmp_path / "out", path=str(tmp_path), show_progress=False) == (
        f"corpus is empty: {tmp_path} holds no text; point --path at a file or folder with text"
    )
    assert not (tmp_path / "out").exists()


def test_error_unknown_source(tmp_path: Path) -> None:
    expected = (
        "unknown source 'wikipedia'; valid sources: wiki-vital, text, sales-textbook, wikitext-103, "
        "wikitext-103-v1, wikitext-2, wikitext-2-v1, files, hf, tinystories, fineweb-edu "
        "(text and files need --path FILE_OR_FOLDER, hf a dataset name)"
    )
    assert error(prepare, "wikipedia", "cl100k_base", tmp_path, show_progress=False) == expected
    assert error(read_documents, "wikipedia") == expected


def test_error_unknown_tokenizer(tmp_path: Path) -> None:
    assert error(prepare, "wiki-vital", "gpt3", tmp_path / "x", show_progress=False) == (
        "unknown tokenizer 'gpt3'; use 'cl100k_base', 'gpt2', 'bpe-<N>' with N >= 257 (e.g. bpe-8192), "
        "or the path of a tokenizer.json"
    )
    assert error(prepare, "wiki-vital", str(tmp_path / "nope.json"), tmp_path / "x", show_progress=False) == (
        f"tokenizer file not found: {tmp_path / 'nope.json'}; run `psyduck prepare` again to write it"
    )


def test_error_text_source_paths(tmp_path: Path) -> None:
    assert error(read_documents, "text") == "the text source needs a file or folder; pass --path FILE_OR_FOLDER"
    missing = tmp_path / "missing.txt"
    assert error(read_documents, "text", str(missing)) == (
        f"text not found: {missing}; pass --path an existing file or folder"
    )
    assert error(read_documents, "wiki-vital", "x.txt") == (
        "the wiki-vital source takes no --path; use `text --path X` for your own files"
    )


def test_error_bad_val_fraction(tmp_path: Path) -> None:
    assert error(prepare, "wiki-vital", "cl100k_base", tmp_path, val_fraction=1.0, show_progress=False) == (
        "val_fraction must be between 0 and 1, got 1.0; try 0.05"
    )


def test_error_split_too_short(tmp_path: Path) -> None:
    data = TokenData(counting_data(tmp_path / "d", 100))
    g = torch.Generator().manual_seed(0)
    expected = (
        "the val split has 50 tokens, fewer than one context window (block_size+1 = 65); "
        "use more text or a smaller --block-size"
    )
    assert error(data.get_batch, "val", 2, 64, g) == expected
    assert error(lambda: list(data.iter_eval_batches("val", 2, 64))) == expected
    assert error(data.check_fits, "val", 64) == expected
    data.get_batch("val", 2, 49, g)  # exactly one window fits


def test_error_unknown_split(bpe_data: Path) -> None:
    assert error(TokenData(bpe_data).num_tokens, "test") == "unknown split 'test'; use one of: train, val"


def test_error_tokenizer_mismatch(bpe_data: Path) -> None:
    data = TokenData(bpe_data)
    data.check_tokenizer("bpe-300")
    assert error(data.check_tokenizer, "cl100k_base") == (
        f"data at {bpe_data} was prepared with bpe-300 but the run uses cl100k_base; "
        "prepare the data with --tokenizer cl100k_base or start a new run"
    )


def test_prepare_and_config_do_not_import_torch(corpus: Path, tmp_path: Path) -> None:
    """`psyduck prepare` and `psyduck config` start without PyTorch (seconds saved, and a
    data-only machine does not need it): only the loader imports torch."""
    script = (
        "import sys\n"
        "from psyduck.cli import main\n"
        "assert main(['config', '--list']) == 0\n"
        "assert 'torch' not in sys.modules, 'config imported torch'\n"
        f"assert main(['prepare', 'text', '--path', {str(corpus)!r}, '--tokenizer', 'bpe-300',"
        f" '--out', {str(tmp_path / 'd')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'prepare imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "meta.json").is_file()
