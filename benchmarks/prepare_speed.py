"""How fast does `prepare` tokenize a WikiText-103-sized corpus, and how much memory does it take?

    python benchmarks/prepare_speed.py            # ~540 MB, WikiText-103's train size (minutes)
    python benchmarks/prepare_speed.py --quick    # ~8 MB, a smoke test
    python benchmarks/prepare_speed.py --mb 100 --tokenizer cl100k_base --threads 2

1. Writes a synthetic corpus in WikiText's raw layout into a temporary folder
   (wikitext-103-raw/wiki.{train,valid,test}.raw): articles under " = Title = " headings with
   " = = Section = = " subheadings, one paragraph per line, every line starting with a space, blank
   lines between, punctuation spaced out as WikiText does (" , ", " @-@ "). The sentences are real
   English: those of the embedded wiki-vital corpus, recombined at random (seeded), so the tokenizer
   meets text like WikiText's and its speed is realistic. Valid and test are 1/500 of train each.
2. Runs `psyduck.data.prepare.prepare("wikitext-103", ...)` on it in a child process, so that its
   peak resident memory can be read alone (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).
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


CHILD = """
import json, sys
from psyduck.data.prepare import prepare
out = prepare("wikitext-103", sys.argv[2], sys.argv[3], path=sys.argv[1], threads=int(sys.argv[4]) or None,
              show_progress=sys.argv[5] == "1")
meta = json.loads((out / "meta.json").read_text())
print(json.dumps({s: v["tokens"] for s, v in meta["splits"].items()}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=540.0, help="train split size in MB (default 540, WikiText-103's)")
    p.add_argument("--quick", action="store_true", help="8 MB instead")
    p.add_argument("--tokenizer", default="cl100k_base")
    p.add_argument("--threads", type=int, default=0, help="encoding threads (default: every core)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    mb = 8.0 if args.quick else args.mb

    with tempfile.TemporaryDirectory(prefix="psyduck-prepare-speed-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        size = make_corpus(root / "corpus", mb)
        print(f"wrote {size / 1e6:.1f} MB of synthetic WikiText in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(root / "corpus"), args.tokenizer, str(root / "data"),
             str(args.threads), "0" if args.no_progress else "1"],
            stdout=subprocess.PIPE, text=True, check=True,
        )
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        tokens = json.loads(child.stdout.strip().splitlines()[-1])

    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss_mb = after.ru_maxrss / 1024  # kilobytes on Linux
    result = {
        "benchmark": "prepare_speed",
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
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
