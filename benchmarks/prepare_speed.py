"""How fast does `prepare` tokenize a WikiText-103-sized corpus, and how much memory does it take?

    python benchmarks/prepare_speed.py            # ~540 MB, WikiText-103's train size (minutes)
    python benchmarks/prepare_speed.py --quick    # ~8 MB, a smoke test
    python benchmarks/prepare_speed.py --mb 100 --tokenizer cl100k_base --threads 2
    python benchmarks/prepare_speed.py --format jsonl.zst --mb 1000   # the `files` source, ~1 GB of JSON lines
    python benchmarks/prepare_speed.py --format parquet --mb 1000     # ... of Parquet
    python benchmarks/prepare_speed.py --format jsonl.zst --mb 200 --kill-halfway   # resume cost

1. Writes a synthetic corpus in WikiText's raw layout into a temporary folder
   (wikitext-103-raw/wiki.{train,valid,test}.raw): articles under " = Title = " headings with
   " = = Section = = " subheadings, one paragraph per line, every line starting with a space, blank
   lines between, punctuation spaced out as WikiText does (" , ", " @-@ "). The sentences are real
   English: those of the embedded wiki-vital corpus, recombined at random (seeded), so the tokenizer
   meets text like WikiText's and its speed is realistic. Valid and test are 1/500 of train each.
   With ``--format jsonl.zst | jsonl.gz | parquet`` the same articles are written as records
   ({"text": article}) of one file of that format instead, read by the `files` source.
2. Runs `psyduck.data.prepare.prepare(...)` on it in a child process, so that its peak resident
   memory can be read alone (its VmHWM, read by the child itself: getrusage's ru_maxrss would
   also count the parent's pages, which hold the generated corpus, shared at fork). With
   ``--kill-halfway`` it then prepares again, SIGKILLs that child at half the first run's time,
   and runs it once more: the resumed run should take <= 1.1x the rest of an uninterrupted one.
3. Prints JSON as its last line: input MB, seconds, MB/s, CPU seconds (the machine may be shared:
   MB per CPU-second shows the work itself), peak RSS, tokens, and whether the targets
   (>= 5 MB/s, peak RSS < 2 GB) were met.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB_S = 5.0
TARGET_RSS_MB = 2048


def wiki_sentences() -> tuple[list[str], list[str]]:
    """Sentences and titles of the embedded corpus, spaced out like WikiText's raw text."""
    from psyduck.data.sources import wiki_vital_file

    articles = json.loads(wiki_vital_file().read_text(encoding="utf-8"))
    sentences, titles = [], []
    for title, article in articles.items():
        titles.append(title)
        for sentence in re.split(r"(?<=[.!?])\s+", article["extract"].replace("\n", " ")):
            if len(sentence) > 20:
                sentences.append(wikitext_spacing(sentence))
    return sentences, titles


def wikitext_spacing(text: str) -> str:
    """WikiText's tokenization: spaces around punctuation, hyphens as " @-@ ", commas in numbers as " @,@ "."""
    text = re.sub(r"(?<=\d),(?=\d)", " @,@ ", text)
    text = re.sub(r"(?<=\w)-(?=\w)", " @-@ ", text)
    text = re.sub(r'([,;:()"]|\.(?=\s|$))', r" \1 ", text)
    return re.sub(r" {2,}", " ", text).strip()


def write_split(path: Path, size: int, sentences: list[str], titles: list[str], rng: random.Random) -> int:
    """Write about `size` bytes of articles to `path`; returns the bytes written."""
    written = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(" \n")
        while written < size:
            parts = [f" = {rng.choice(titles)} = \n", " \n"]
            for section in range(rng.randint(2, 6)):
                if section:
                    parts += [f" = = {rng.choice(titles)} = = \n", " \n"]
                for _ in range(rng.randint(1, 4)):
                    parts += [" " + " ".join(rng.choices(sentences, k=rng.randint(3, 9))) + " \n", " \n"]
            chunk = "".join(parts)
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
    return written


def make_corpus(root: Path, mb: float, seed: int = 0) -> int:
    sentences, titles = wiki_sentences()
    rng = random.Random(seed)
    folder = root / "wikitext-103-raw"
    folder.mkdir(parents=True)
    train = int(mb * 1e6)
    total = write_split(folder / "wiki.train.raw", train, sentences, titles, rng)
    total += write_split(folder / "wiki.valid.raw", train // 500, sentences, titles, rng)
    total += write_split(folder / "wiki.test.raw", train // 500, sentences, titles, rng)
    return total


def make_records(root: Path, mb: float, fmt: str, seed: int = 0) -> int:
    """About `mb` MB of articles as records {"text": ...} in one file of format `fmt`; returns the text bytes."""
    import gzip

    sentences, titles = wiki_sentences()
    rng = random.Random(seed)
    root.mkdir(parents=True)
    plain = root / "articles.txt"
    write_split(plain, int(mb * 1e6), sentences, titles, rng)
    articles = plain.read_text(encoding="utf-8").split(" \n = ")  # one record per article
    plain.unlink()
    total = sum(len(a.encode("utf-8")) for a in articles)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with pq.ParquetWriter(root / "articles.parquet", pa.schema([("text", pa.string())])) as w:
            for i in range(0, len(articles), 10_000):
                w.write_table(pa.table({"text": articles[i : i + 10_000]}))
        return total
    lines = "".join(json.dumps({"text": a}, ensure_ascii=False) + "\n" for a in articles).encode("utf-8")
    if fmt == "jsonl.gz":
        (root / "articles.jsonl.gz").write_bytes(gzip.compress(lines, compresslevel=6))
    else:
        import zstandard

        (root / "articles.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    return total


CHILD = """
import json, sys
from psyduck.data.prepare import prepare
source = "wikitext-103" if sys.argv[6] == "wikitext" else "files"
out = prepare(source, sys.argv[2], sys.argv[3], path=sys.argv[1], threads=int(sys.argv[4]) or None,
              show_progress=sys.argv[5] == "1")
meta = json.loads((out / "meta.json").read_text())
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))  # kB, this process only
print(json.dumps({"tokens": {s: v["tokens"] for s, v in meta["splits"].items()}, "peak_rss_kb": hwm}))
"""


def run_child(args: argparse.Namespace, corpus: Path, data: Path, kill_after: float | None = None) -> tuple[float, str]:
    """Prepare in a child process; (seconds, its stdout). `kill_after` seconds: SIGKILL it then."""
    cmd = [sys.executable, "-c", CHILD, str(corpus), args.tokenizer, str(data), str(args.threads),
           "0" if args.no_progress else "1", args.format]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = child.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        child.kill()
        out, _ = child.communicate()
    if kill_after is None and child.returncode != 0:
        raise SystemExit(f"prepare failed with exit status {child.returncode}")
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=540.0, help="train split size in MB (default 540, WikiText-103's)")
    p.add_argument("--quick", action="store_true", help="8 MB instead")
    p.add_argument("--format", choices=["wikitext", "jsonl.zst", "jsonl.gz", "parquet"], default="wikitext")
    p.add_argument("--kill-halfway", action="store_true", help="also measure a killed and resumed prepare")
    p.add_argument("--tokenizer", default="cl100k_base")
    p.add_argument("--threads", type=int, default=0, help="encoding threads (default: every core)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    mb = 8.0 if args.quick else args.mb

    with tempfile.TemporaryDirectory(prefix="psyduck-prepare-speed-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        if args.format == "wikitext":
            size = make_corpus(root / "corpus", mb)
        else:
            size = make_records(root / "corpus", mb, args.format)
        print(f"wrote {size / 1e6:.1f} MB of synthetic {args.format} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds, stdout = run_child(args, root / "corpus", root / "data")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = json.loads(stdout.strip().splitlines()[-1])
        tokens = child["tokens"]
        resume = None
        if args.kill_halfway:
            run_child(args, root / "corpus", root / "again", kill_after=seconds / 2)
            resumed, _ = run_child(args, root / "corpus", root / "again")
            resume = {"resumed_seconds": round(resumed, 1), "ratio_to_half": round(resumed / (seconds / 2), 2),
                      "meets_target": resumed <= 1.1 * seconds / 2}

    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # the child's own high-water mark (VmHWM after its exec): getrusage's ru_maxrss of a child also
    # counts the pages it shared with this parent at fork, and the parent holds the generated corpus
    rss_mb = child["peak_rss_kb"] / 1024
    result = {
        "benchmark": "prepare_speed",
        "format": args.format,
        "tokenizer": args.tokenizer,
        "input_mb": round(size / 1e6, 1),
        "seconds": round(seconds, 1),
        "mb_per_s": round(size / 1e6 / seconds, 2),
        "cpu_seconds": round(cpu, 1),
        "mb_per_cpu_s": round(size / 1e6 / cpu, 2),
        "peak_rss_mb": round(rss_mb),
        "tokens": tokens,
        "threads": args.threads or "all",
        "target_mb_per_s": TARGET_MB_S,
        "target_peak_rss_mb": TARGET_RSS_MB,
        "meets_targets": size / 1e6 / seconds >= TARGET_MB_S and rss_mb < TARGET_RSS_MB,
        **({"resume": resume} if resume else {}),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
