"""WikiText and the sales textbook: layouts, downloads, offline errors, word perplexity, --init-from.

No network: WikiText copies are written here in each layout (original zip, extracted folder, the
hub's parquet files, a stand-in for Hugging Face `datasets`), and downloads go to a local HTTP server.
"""

from __future__ import annotations

import http.server
import importlib
import json
import math
import re
import socket
import sys
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from psyduck.cli import main as cli_main
from psyduck.data.loader import TokenData
from psyduck.data.prepare import prepare
from psyduck.data.sources import SALES_URL, SALES_URL_ENV, read_documents, sales_path
from psyduck.data.wikitext import is_title
from psyduck.errors import PsyDuckError
from psyduck.evaluate import evaluate
from psyduck.tokenizer import Tokenizer, load_tokenizer, make_tokenizer

encode_module = importlib.import_module("psyduck.data.encode")

# --- a small WikiText, in the files' own format: every line starts with a space ------------------

TRAIN = """\
 
 = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a tactical role @-@ playing game . 
 The game began development in 2010 , carrying over a large portion of the work done on Valkyria Chronicles II . 
 
 = = Gameplay = = 
 
 As with previous Valkyira Chronicles games , the player takes control of a military unit . 
 
 = Tower Building of the Little Rock Arsenal = 
 
 The Tower Building of the Little Rock Arsenal , also known as U.S. Arsenal Building , is a building in Little Rock . 
 
 = = = Construction = = = 
 
 It was built in 1840 , and it is the only surviving structure of the original arsenal . 
 
 = Cicely Mary Barker = 
 
 Cicely Mary Barker ( 28 June 1895 – 16 February 1973 ) was an English illustrator best known for a series of books . 
 She was a devout Anglican , and her works were sold to raise money for charity . 
"""

VALID = """\
 
 = Homarus gammarus = 
 
 Homarus gammarus , known as the European lobster or common lobster , is a species of clawed lobster . 
 It is closely related to the American lobster , H. americanus . 
 
 = = Description = = 
 
 Homarus gammarus is a large crustacean , with a body length up to 60 centimetres ( 24 in ) . 
"""

# The test split, with each line's word count by hand: its whitespace-separated tokens, plus 1
# for the line's end (blank lines count 1).
TEST_LINES = [
    " \n",  # 0 + 1 = 1
    " = Robert Boulter = \n",  # "=", "Robert", "Boulter", "=": 4 + 1 = 5
    " \n",  # 1
    " Robert Boulter is an English film , television and theatre actor . \n",  # 12 + 1 = 13
    " \n",  # 1
    " = = Career = = \n",  # "=", "=", "Career", "=", "=": 5 + 1 = 6
    " \n",  # 1
    " In 2000 Boulter had a guest @-@ starring role on the television series The Bill . \n",  # 16 + 1 = 17
    " \n",  # 1
    " = Du Fu = \n",  # 4 + 1 = 5
    " \n",  # 1
    " Du Fu ( 712 – 770 ) was a prominent Chinese poet of the Tang dynasty . \n",  # 17 + 1 = 18
]
TEST_WORDS = 1 + 5 + 1 + 13 + 1 + 6 + 1 + 17 + 1 + 5 + 1 + 18  # = 70
TEST = "".join(TEST_LINES)
FILES = {"train": TRAIN, "valid": VALID, "test": TEST}
HUB_NAMES = {"train": "train", "valid": "validation", "test": "test"}


def count_words(line: str) -> int:
    """WikiText's word count of one line, by hand: whitespace-separated tokens plus one end-of-line."""
    return len(line.split()) + 1


def hub_rows(text: str) -> list[str]:
    """Rows as the hub's conversion made them: one per line, newline kept, blank lines as ""."""
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def write_folder(root: Path, name: str = "wikitext-2-raw", ext: str = ".raw") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for split, text in FILES.items():
        (folder / f"wiki.{split}{ext}").write_text(text, encoding="utf-8")
    return folder


def write_zip(path: Path, name: str = "wikitext-2-raw", ext: str = ".raw") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}/", "")
        for split, text in FILES.items():
            z.writestr(f"{name}/wiki.{split}{ext}", text.encode("utf-8"))
    return path


def write_parquet(folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    for split, text in FILES.items():
        rows = hub_rows(text)
        pieces = [rows[: len(rows) // 2], rows[len(rows) // 2 :]] if split == "train" else [rows]  # 2 train files
        for i, part in enumerate(pieces):
            name = f"{HUB_NAMES[split]}-{i:05d}-of-{len(pieces):05d}.parquet"
            pq.write_table(pa.table({"text": pa.array(part, pa.string())}), folder / name)
    return folder


@pytest.fixture(scope="module")
def cl100k() -> Tokenizer:
    return make_tokenizer("cl100k_base")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wikitext")
    return {
        "zip": write_zip(root / "wikitext-2-raw-v1.zip"),
        "folder": write_folder(root / "extracted"),
        "parent of folder": root / "extracted",
        "parquet": write_parquet(root / "hub" / "wikitext-2-raw-v1"),
        "parent of parquet": root / "hub",
    }


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def article_texts(text: str) -> list[str]:
    """The expected documents: articles from each top-level heading, lines stripped, blank ends dropped."""
    docs: list[list[str]] = []
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith("= ") and not s.startswith("= =") or not docs:
            docs.append([])
        docs[-1].append(s)
    return ["\n".join(d).strip() for d in docs if "\n".join(d).strip()]


# --- documents and layouts -----------------------------------------------------------------------

def test_articles_start_at_top_level_headings_only(layouts: dict[str, Path]) -> None:
    docs = list(read_documents("wikitext-2", str(layouts["folder"])))
    assert [d.split for d in docs] == ["train"] * 3 + ["val"] + ["test"] * 2
    assert [d.text for d in docs] == article_texts(TRAIN) + article_texts(VALID) + article_texts(TEST)
    first = docs[0].text
    assert first.startswith("= Valkyria Chronicles III =\n\nSenjō no Valkyria 3 :")
    assert "\n\n= = Gameplay = =\n\nAs with" in first  # sections stay inside their article
    assert docs[1].text.startswith("= Tower Building") and "= = = Construction = = =" in docs[1].text
    assert is_title("= A =") and is_title("= E = mc2 =")
    assert not is_title("= = Section = =") and not is_title("= = = Sub = = =") and not is_title("=")


def test_every_layout_gives_the_same_shards(layouts: dict[str, Path], cl100k: Tokenizer, tmp_path: Path) -> None:
    outs = {name: prepare("wikitext-2", cl100k, tmp_path / name.replace(" ", "_"), path=str(p), show_progress=False)
            for name, p in layouts.items()}
    reference = shards(outs["zip"])
    assert set(reference) == {"train_000.bin", "val_000.bin", "test_000.bin"}
    for name, out in outs.items():
        assert shards(out) == reference, name
    meta = json.loads((outs["zip"] / "meta.json").read_text())
    assert list(meta["splits"]) == ["train", "val", "test"]
    assert [meta["splits"][s]["documents"] for s in ("train", "val", "test")] == [3, 1, 2]
    assert meta["splits"]["test"]["words"] == TEST_WORDS
    assert (meta["val_fraction"], meta["seed"]) == (None, None)  # the dataset's own split
    data = TokenData(outs["zip"])
    tok = data.tokenizer()
    docs = tok.decode(data.tokens("test").tolist()).split("<|endoftext|>")
    assert docs == [*article_texts(TEST), ""]  # each article followed by the end-of-text token


def test_hugging_face_datasets_path_gives_the_same_shards(
    layouts: dict[str, Path], cl100k: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Split:
        def __init__(self, rows: list[str]) -> None:
            self.rows = rows

        def iter(self, batch_size: int):
            for i in range(0, len(self.rows), batch_size):
                yield {"text": self.rows[i : i + batch_size]}

    calls = []

    def load_dataset(name: str, config: str):
        calls.append((name, config))
        return {HUB_NAMES[s]: Split(hub_rows(text)) for s, text in FILES.items()}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    hub = prepare("wikitext-2", cl100k, tmp_path / "hub", show_progress=False)
    files = prepare("wikitext-2", cl100k, tmp_path / "files", path=str(layouts["zip"]), show_progress=False)
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1")]
    assert shards(hub) == shards(files)


def test_tokenized_variant_and_wrong_variant(tmp_path: Path, cl100k: Tokenizer) -> None:
    tokens_zip = write_zip(tmp_path / "wikitext-2-v1.zip", name="wikitext-2", ext=".tokens")
    out = prepare("wikitext-2-v1", cl100k, tmp_path / "v1", path=str(tokens_zip), show_progress=False)
    assert json.loads((out / "meta.json").read_text())["splits"]["test"]["words"] == TEST_WORDS
    with pytest.raises(PsyDuckError) as e:
        prepare("wikitext-2", cl100k, tmp_path / "raw", path=str(tokens_zip), show_progress=False)
    assert str(e.value) == (
        f"{tokens_zip} holds the tokenized (<unk>) WikiText files (wiki.train.tokens) but wikitext-2 reads "
        f"wiki.train.raw; use `psyduck prepare wikitext-2-v1 --path {tokens_zip}`"
    )


def test_unrecognised_path(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PsyDuckError) as e:
        list(read_documents("wikitext-103", str(tmp_path)))
    assert str(e.value) == (
        f"no WikiText found at {tmp_path}; pass --path wikitext-103-raw-v1.zip "
        "(from https://wikitext.smerity.com/wikitext-103-raw-v1.zip), its extracted folder (wiki.train.raw, ...), "
        "or a folder of the hub's parquet files (train-*.parquet, ...)"
    )


def test_streaming_pipeline_is_deterministic(
    layouts: dict[str, Path], cl100k: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny batches, long documents cut into pieces, 3 threads: the same ids as one thread, whole texts."""
    bpe = make_tokenizer("bpe-300", [TRAIN])
    for tok in (cl100k, bpe):
        one = prepare("wikitext-2", tok, tmp_path / f"one-{tok.name}", path=str(layouts["zip"]), show_progress=False,
                      threads=1)
        with monkeypatch.context() as m:
            m.setattr(encode_module, "BATCH_BYTES", 200)
            m.setattr(encode_module, "PIECE_CHARS", 40)
            many = prepare("wikitext-2", tok, tmp_path / f"many-{tok.name}", path=str(layouts["zip"]),
                           show_progress=False, threads=3, shard_tokens=100)
        joined = {s: b"".join(v for k, v in sorted(shards(many).items()) if k.startswith(s)) for s in ("train", "val", "test")}
        assert joined == {s: shards(one)[f"{s}_000.bin"] for s in ("train", "val", "test")}, tok.name
        whole = [tok.eot_id if t is None else t for doc in article_texts(TRAIN) for t in [*tok.encode(doc), None]]
        assert TokenData(one).tokens("train").tolist() == whole


# --- word perplexity -----------------------------------------------------------------------------

def test_word_counts_match_a_count_by_hand(layouts: dict[str, Path], cl100k: Tokenizer, tmp_path: Path) -> None:
    assert sum(count_words(line) for line in TEST_LINES) == TEST_WORDS == 70
    out = prepare("wikitext-2", cl100k, tmp_path / "d", path=str(layouts["folder"]), show_progress=False)
    data = TokenData(out)
    assert data.num_words("test") == 70
    assert data.num_words("val") == sum(count_words(line) for line in VALID.splitlines())
    assert data.meta["word_count"].startswith("WikiText words")


def test_scored_windows_predict_every_token_exactly_once(layouts: dict[str, Path], cl100k: Tokenizer, tmp_path: Path) -> None:
    data = TokenData(prepare("wikitext-2", cl100k, tmp_path / "d", path=str(layouts["zip"]), show_progress=False))
    tokens = torch.from_numpy(data.tokens("train").astype(np.int64))
    sequence = torch.cat([torch.tensor([data.eot_id]), tokens])  # the first token is predicted from eot
    for block, stride in [(16, 16), (16, 5), (16, 1), (10_000, None)]:
        targets = []
        for x, y in data.iter_scored_windows("train", 3, block, stride):
            for row_x, row_y in zip(x, y, strict=True):
                start = int(torch.nonzero((sequence.unfold(0, len(row_x), 1) == row_x).all(1))[0])  # where x sits
                assert torch.equal(sequence[start + 1 : start + 1 + len(row_x)][row_y != -1], row_y[row_y != -1])
                if stride is not None and start > 0:
                    assert int((row_y != -1).sum()) <= stride  # later windows score only their last tokens
            targets.append(y[y != -1])
        assert torch.equal(torch.cat(targets), tokens), (block, stride)


def test_word_perplexity_and_eval_cli(
    layouts: dict[str, Path], tiny_cfg, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from psyduck.train import train

    wiki = prepare("wikitext-2", load_tokenizer(tiny_data), tmp_path / "wiki", path=str(layouts["zip"]), show_progress=False)
    run = tmp_path / "run"
    train(tiny_cfg.replace({"data.path": str(wiki), "max_iters": 2, "eval_iters": 1, "sample_tokens": 0}), run, progress=False)
    from psyduck import load_run

    model, _ = load_run(run)
    data = TokenData(wiki)
    res = evaluate(model, data, "test", batch_size=4, word_perplexity=True)
    assert res["tokens"] == data.num_tokens("test") and res["words"] == 70
    assert res["word_perplexity"] == pytest.approx(math.exp(res["loss"] * res["tokens"] / 70))
    strided = evaluate(model, data, "test", batch_size=4, stride=7, word_perplexity=True)
    assert strided["tokens"] == res["tokens"] and strided["loss"] != res["loss"]

    assert cli_main(["eval", str(run), "--split", "test", "--word-perplexity", "--stride", "8", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["words"] == 70 and printed["tokens"] == data.num_tokens("test")
    assert cli_main(["eval", str(run), "--split", "test", "--word-perplexity"]) == 0
    line = capsys.readouterr().out
    shown = re.search(r"; word perplexity ([0-9.]+) over 70 words\n$", line)
    assert shown and float(shown.group(1)) == pytest.approx(res["word_perplexity"], rel=1e-4)

    for args, message in [
        (["--split", "val", "--data", str(tiny_data)], f"data at {tiny_data} has no word counts (source 'text'); "
         "word-level perplexity needs WikiText data: `psyduck prepare wikitext-103`"),
        (["--split", "test", "--max-batches", "1"], "word perplexity needs the whole split; drop --max-batches"),
        (["--split", "test", "--stride", "0"], "--stride must be between 1 and the model's context length 32, got 0"),
    ]:
        assert cli_main(["eval", str(run), "--word-perplexity", *args]) == 2
        assert capsys.readouterr().err == f"psyduck: error: {message}\n"


# --- offline -------------------------------------------------------------------------------------

def test_wikitext_without_datasets_or_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    assert cli_main(["prepare", "wikitext-103", "--tokenizer", "cl100k_base", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == (
        "psyduck: error: wikitext-103 needs the Hugging Face `datasets` package (pip install 'psyduck[wikitext]') "
        "or an offline copy: download https://wikitext.smerity.com/wikitext-103-raw-v1.zip and pass "
        "--path wikitext-103-raw-v1.zip\n"
    )

    def offline(name: str, config: str):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(PsyDuckError) as e:
        prepare("wikitext-103", "cl100k_base", tmp_path / "d", show_progress=False)
    assert str(e.value) == (
        "cannot load Salesforce/wikitext (wikitext-103-raw-v1) from Hugging Face or its cache "
        "(ConnectionError: Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)); "
        "download https://wikitext.smerity.com/wikitext-103-raw-v1.zip and pass --path wikitext-103-raw-v1.zip"
    )
    assert not (tmp_path / "d").exists()


# --- the sales textbook and its download ---------------------------------------------------------

SALES = "\n\n".join(
    f"Chapter {c}: Building Rapport\n\n"
    + "\n\n".join(f"Paragraph {c}.{p}: a good salesperson listens first, asks open questions, and earns trust "
                  f"before proposing a solution that fits the customer's needs." for p in range(6))
    for c in range(1, 9)
) + "\n"


class Server:
    """A local HTTP server for sales_textbook.txt: mode "ok", "short" (closes early) or "404"."""

    def __init__(self) -> None:
        self.mode, self.requests = "ok", 0
        body = SALES.encode("utf-8")
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                if outer.mode == "404":
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if outer.mode == "ok" else body[: len(body) // 2])
                self.close_connection = True

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/sales_textbook.txt"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    s = Server()
    monkeypatch.setenv("PSYDUCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(SALES_URL_ENV, s.url)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_download_is_cached_and_reused(server: Server, cl100k: Tokenizer, tmp_path: Path) -> None:
    assert sales_path() == tmp_path / "cache" / "sales-textbook" / "sales_textbook.txt"
    first = prepare("sales-textbook", cl100k, tmp_path / "a", show_progress=False)
    assert server.requests == 1 and sales_path().read_text(encoding="utf-8") == SALES
    second = prepare("sales-textbook", cl100k, tmp_path / "b", show_progress=False)
    assert server.requests == 1  # the cached file, no request
    assert shards(first) == shards(second)
    meta = json.loads((first / "meta.json").read_text())
    assert [meta["splits"][s]["documents"] for s in ("train", "val")] == [1, 1]
    val = load_tokenizer(first).decode(TokenData(first).tokens("val").tolist())
    assert val.startswith("Paragraph 8.") or val.startswith("Chapter 8")  # cut at a paragraph break
    assert "words" not in meta["splits"]["train"] and "test" not in meta["splits"]
    local = prepare("sales-textbook", cl100k, tmp_path / "c", path=str(sales_path()), show_progress=False)
    assert shards(local) == shards(first)


def test_interrupted_download_leaves_nothing_behind(server: Server, cl100k: Tokenizer, tmp_path: Path) -> None:
    server.mode = "short"
    with pytest.raises(PsyDuckError) as e:
        prepare("sales-textbook", cl100k, tmp_path / "a", show_progress=False)
    size = len(SALES.encode("utf-8"))
    assert str(e.value) == (
        f"download of the sales textbook from {server.url} was interrupted ({size // 2:,} of {size:,} bytes); "
        f"run the command again, or download {server.url} by hand and save it as {sales_path()}, or pass --path FILE"
    )
    assert list((tmp_path / "cache" / "sales-textbook").iterdir()) == []  # no fragment, under any name
    server.mode = "ok"
    prepare("sales-textbook", cl100k, tmp_path / "a", show_progress=False)
    assert server.requests == 2 and sales_path().read_text(encoding="utf-8") == SALES


def test_download_errors(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    server.mode = "404"
    with pytest.raises(PsyDuckError) as e:
        list(read_documents("sales-textbook"))
    assert str(e.value) == (
        f"cannot download the sales textbook: {server.url} answered HTTP 404 Not Found; "
        f"download {server.url} by hand and save it as {sales_path()}, or pass --path FILE"
    )
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = f"http://127.0.0.1:{port}/sales_textbook.txt"
    monkeypatch.setenv(SALES_URL_ENV, closed)
    assert cli_main(["prepare", "sales-textbook", "--tokenizer", "cl100k_base", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == (
        f"psyduck: error: cannot download the sales textbook: 127.0.0.1:{port} is unreachable (offline?); "
        f"download {closed} by hand and save it as {sales_path()}, or pass --path FILE\n"
    )
    assert list((tmp_path / "cache" / "sales-textbook").iterdir()) == []
    assert SALES_URL.endswith("/goendalf666/sales-textbook_for_convincing_and_selling/resolve/main/sales_textbook.txt")
    missing = tmp_path / "nope.txt"
    with pytest.raises(PsyDuckError) as e:
        list(read_documents("sales-textbook", str(missing)))
    assert str(e.value) == f"sales textbook not found: {missing}; pass --path the downloaded sales_textbook.txt"


# --- from one corpus to the next: --init-from ----------------------------------------------------

def test_init_from_starts_from_the_exact_weights(tiny_cfg, tiny_data: Path, tmp_path: Path, capsys) -> None:
    from psyduck.train import Trainer

    wiki_run = tmp_path / "wiki"
    first = Trainer(tiny_cfg.replace({"max_iters": 3, "sample_tokens": 0}), wiki_run, progress=False)
    first.run()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}

    sales_file = tmp_path / "sales_textbook.txt"
    sales_file.write_text(SALES * 3, encoding="utf-8")
    sales = prepare("sales-textbook", load_tokenizer(tiny_data), tmp_path / "sales", path=str(sales_file), show_progress=False)
    cfg = tiny_cfg.replace({"data.path": str(sales), "max_iters": 2, "sample_tokens": 0, "seed": 7})
    second = Trainer(cfg, tmp_path / "sales-run", init_from=wiki_run, progress=False)
    weights = second.model.state_dict()
    assert weights.keys() == trained.keys()
    assert all(torch.equal(weights[k], trained[k]) for k in trained)  # before any step: the earlier run's weights
    assert second.step == 0 and not second.optimizer.state  # fresh optimizer and schedule
    fresh = Trainer(cfg, tmp_path / "fresh", progress=False).model.state_dict()
    assert not torch.equal(fresh["tok_emb.weight"], trained["tok_emb.weight"])  # so the check above means something

    capsys.readouterr()
    train = ["train", "--preset", "tiny", "--data", str(sales), "--init-from", str(wiki_run), "--no-progress",
             "--max-iters", "1", "sample_tokens=0"]
    assert cli_main([*train, "--out", str(tmp_path / "runs-sales")]) == 0  # the seed's path, as a user types it
    assert f"initialized weights from {wiki_run / 'checkpoints' / 'step_0000003'}" in capsys.readouterr().err

    other = prepare("sales-textbook", "cl100k_base", tmp_path / "sales-cl100k", path=str(sales_file), show_progress=False)
    args = ["train", "--preset", "tiny", "--data", str(other), "--init-from", str(wiki_run), "--out", str(tmp_path / "x"),
            "--no-progress"]
    capsys.readouterr()  # the runs' logs so far
    assert cli_main(args) == 2
    assert capsys.readouterr().err == (
        f"psyduck: error: data at {other} was prepared with cl100k_base but the run uses bpe-512; "
        "prepare the data with --tokenizer bpe-512 or start a new run\n"
    )
