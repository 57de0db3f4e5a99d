"""The `psyduck` command: one thin subcommand per module of the Python API.

(Its ~430 lines are argument declarations, one `_add_<command>` function per subcommand, and
handlers of a few lines each; commands with more to say have their own modules.)

    psyduck prepare wiki-vital --tokenizer bpe-8192 --out data/wiki-vital
    psyduck train --preset cpu-small --data data/wiki-vital --out runs/demo [key=value ...]
    psyduck train --preset cpu-small --minutes 10        # by the clock: the schedule fits the budget
    psyduck generate runs/demo --prompt "The world" --max-new-tokens 100
    psyduck eval runs/demo --json
    psyduck config --preset seed-60m

Every user mistake ends as one line on stderr ("psyduck: error: ...") and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from psyduck.config import DataConfig
from psyduck.errors import PsyDuckError

if TYPE_CHECKING:  # torch loads only in the subcommands that need it
    import torch

THREADS_HELP = (  # the figure is generate.threads.ONE_THREAD_MAX_PARAMS (torch is not imported for --help)
    "CPU threads per decode step (default: 1 for models up to 150M parameters, whose one-row products "
    "are too short to split, else torch's; OMP_NUM_THREADS is respected)"
)

# flag -> config key: the common training knobs; anything else is `key=value`
TRAIN_FLAGS = {
    "max_iters": ("train.max_iters", int),
    "eval_interval": ("train.eval_interval", int),
    "eval_iters": ("train.eval_iters", int),
    "batch_size": ("train.batch_size", int),
    "grad_accum": ("train.grad_accum", int),
    "lr": ("train.lr", float),
    "block_size": ("model.block_size", int),
    "device": ("train.device", str),
    "dtype": ("train.dtype", str),
    "max_seconds": ("train.max_seconds", float),
    "seed": ("train.seed", int),
    "data": ("data.path", str),
}


def build_config(args: argparse.Namespace):
    """Preset (or, with --resume, the run's saved config), then --config TOML, then flags, then key=value.

    On --resume the saved config wins over any preset: a --preset that would give a different
    recipe is refused rather than silently replacing the run's (the trainer lists what the flags
    and key=value pairs change).
    """
    from psyduck.config import get_preset

    if not (args.resume or args.resume_from_scratch):
        return _layer(get_preset(args.preset or "cpu-small"), args)
    from psyduck.runs import RunFolder
    from psyduck.train.preflight import check_out, preset_conflicts, resume_config

    check_out(Path(args.out))
    cfg = _layer(resume_config(RunFolder(args.out)), args)
    if args.preset and (conflicts := preset_conflicts(cfg, _layer(get_preset(args.preset), args))):
        raise PsyDuckError(
            f"--preset {args.preset} disagrees with the saved config of {args.out} ({conflicts}); on --resume "
            "the saved config wins: drop --preset and give the changes you want as key=value"
        )
    return cfg


def _layer(cfg, args: argparse.Namespace):
    """`cfg` with the --config TOML, the flags and the key=value overrides on top, in that order."""
    from psyduck.config import apply_overrides, load_toml

    if args.config:
        cfg = load_toml(args.config, base=cfg)
    flags = {key: getattr(args, name) for name, (key, _) in TRAIN_FLAGS.items() if getattr(args, name) is not None}
    if args.minutes is not None:
        if args.max_seconds is not None:
            raise PsyDuckError("--minutes and --max-seconds both set the time budget; give only one of them")
        flags["train.max_seconds"] = args.minutes * 60.0
    if args.compile:
        flags["train.compile"] = True
    cfg = apply_overrides(cfg, flags)
    return apply_overrides(cfg, list(args.overrides))


def parse_count(text: str) -> int:
    """A count with an optional K/M/G/T suffix, as flags take it: "200M" -> 200_000_000."""
    scale = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}.get(text[-1:].upper(), 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 200M, 64M, 1500000)") from None


def default_out(source: str, name: str | None, tokenizer: str) -> str:
    """Where `psyduck prepare` writes without --out: data/<source or dataset>[-<tokenizer>], e.g.
    data/tinystories (a trained BPE), data/fineweb-edu-gpt2; the presets' data paths are these."""
    base = name.rstrip("/").rsplit("/", 1)[-1] if source == "hf" and name else source
    suffix = "" if tokenizer.startswith("bpe") or tokenizer.endswith(".json") or "/" in tokenizer else (
        f"-{tokenizer.split('_')[0]}"
    )
    return f"data/{base}{suffix}"


def cmd_prepare(args: argparse.Namespace) -> None:
    from psyduck.data.prepare import TOKENIZER_SAMPLE, prepare
    from psyduck.data.sources import SourceOptions

    if args.name and args.source != "hf":
        raise PsyDuckError(f"only the hf source takes a dataset name; drop '{args.name}' or use `psyduck prepare hf {args.name}`")
    out = args.out or default_out(args.source, args.name, args.tokenizer)
    options = SourceOptions(
        text_field=args.text_field, encoding=args.encoding, name=args.name, config=args.dataset_config,
        split_map=args.split_map, streaming=args.streaming,
    )
    folder = prepare(
        args.source, args.tokenizer, out, path=args.path, options=options, val_fraction=args.val_fraction, seed=args.seed,
        max_tokens=args.max_tokens, tokenizer_sample=args.tokenizer_sample or TOKENIZER_SAMPLE, force=args.force,
    )
    meta = json.loads((Path(folder) / "meta.json").read_text())
    counts = " / ".join(f"{s['tokens']:,} {name}" for name, s in meta["splits"].items())
    print(f"prepared {folder}: {counts} tokens ({meta['tokenizer']})")


def cmd_train(args: argparse.Namespace) -> int:
    """Train; the exit status is 130 or 143 when Ctrl-C or SIGTERM stopped the run (after saving)."""
    from psyduck.data.loader import TokenData
    from psyduck.hardware import keep_freed_memory
    from psyduck.train import train
    from psyduck.train.signals import exit_status

    cfg = build_config(args)
    TokenData(cfg.data.path, prepare=cfg.data.prepare_command())  # no data: one line naming the command that makes it
    keep_freed_memory()  # this process only trains: no page faults for memory the last step freed
    result = train(
        cfg, args.out, resume=args.resume, from_scratch=args.resume_from_scratch, init_from=args.init_from,
        progress=not args.no_progress,
    )
    print_json(result)
    return exit_status(result.get("stopped_by"))


def print_json(obj: object) -> None:
    """Print `obj` as one line of strict JSON: NaN and infinities (a diverged loss) become null."""
    from psyduck.io import json_safe

    print(json.dumps(json_safe(obj), allow_nan=False))


def set_decode_threads(model: torch.nn.Module, device: torch.device | str, requested: int | None) -> int:
    """Set torch's thread count for decoding `model` (`psyduck.generate.decode_threads` says why)."""
    import torch

    from psyduck.generate import decode_threads

    threads = decode_threads(sum(p.numel() for p in model.parameters()), device, requested)
    torch.set_num_threads(threads)
    return threads


def cmd_generate(args: argparse.Namespace) -> None:
    from psyduck.generate import GenerationParams, check_threads, stream_text
    from psyduck.runs import load_run
    from psyduck.hardware import pick_device

    params = GenerationParams(  # checked before the model loads
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, ignore_eos=args.no_stop, exact=args.exact,
    )
    check_threads(args.threads)
    device = pick_device(args.device)
    model, tok = load_run(args.run, device=device, checkpoint=args.checkpoint)
    set_decode_threads(model, device, args.threads)
    ids = tok.encode(args.prompt) if args.prompt else [tok.eot_id]  # no prompt: start a new document
    sys.stdout.write(args.prompt)
    for piece in stream_text(model, tok, ids, params):  # with --no-stop, document boundaries pass silently
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.tasks is not None:
        cmd_eval_tasks(args)
        return
    if args.include_path or args.limit is not None:
        raise PsyDuckError("--include-path and --limit go with --tasks; e.g. psyduck eval RUN --tasks hellaswag --limit 100")
    from psyduck.data.loader import TokenData
    from psyduck.evaluate import check_batches, evaluate
    from psyduck.hardware import pick_device
    from psyduck.runs import RunFolder, load_run

    check_batches(args.batch_size, args.max_batches)  # before anything loads
    device = pick_device(args.device)
    run = RunFolder(args.run)
    cfg = run.config()
    model, tok = load_run(args.run, device=device, checkpoint=args.checkpoint)
    data = TokenData(args.data or cfg.data.path)
    data.check_tokenizer(tok)
    res = evaluate(
        model, data, args.split, batch_size=args.batch_size, max_batches=args.max_batches, stride=args.stride,
        word_perplexity=args.word_perplexity,
    )
    source = run.source()  # an imported run: say whose weights these are
    if args.json:
        print_json({**res, "source": source} if source else res)
    else:
        if source:
            print(f"weights imported from {source.get('model')} ({source.get('folder')}) on {source.get('date')}")
        line = (
            f"{args.split}: loss {res['loss']:.4f} nats/token, perplexity {res['perplexity']:.2f}, "
            f"{res['bits_per_byte']:.4f} bits/byte over {res['tokens']:,} tokens"
        )
        if "word_perplexity" in res:
            line += f"; word perplexity {res['word_perplexity']:.2f} over {res['words']:,} words"
        print(line)
    if not math.isfinite(res["loss"]):  # finite weights whose outputs overflow: printed, and a failure
        raise PsyDuckError(
            f"the {args.split} loss of run {run.path} is not finite: its outputs overflow although its weights are "
            "finite; pick an earlier checkpoint with --checkpoint"
        )


def cmd_eval_tasks(args: argparse.Namespace) -> None:
    """`psyduck eval RUN --tasks a,b`: benchmark scores through lm-evaluation-harness (psyduck.tasks.run)."""
    from psyduck.tasks.run import evaluate_tasks, format_table

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    from psyduck.evaluate import check_batches

    check_batches(args.batch_size, None)
    scores = evaluate_tasks(
        args.run, tasks, include_path=args.include_path, limit=args.limit, batch_size=args.batch_size,
        device=args.device, checkpoint=args.checkpoint,
    )
    if args.json:
        print_json(scores)
    else:
        print(format_table(scores))


def cmd_config(args: argparse.Namespace) -> None:
    from psyduck.config import get_preset, presets

    if args.list:
        for name, cfg in presets.items():
            m = cfg.model
            print(f"{name:16s} d_model {m.d_model}, {m.n_layer} layers, {m.n_head} heads, context {m.block_size}, {cfg.data.tokenizer}")
        return
    print(json.dumps(get_preset(args.preset).to_dict(), indent=2))


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    """`psyduck prepare SOURCE`: text -> token shards."""
    s = sub.add_parser(
        "prepare", help="tokenize a corpus into token shards",
        description="Tokenize a corpus once into token shards (train/val, and test where the corpus has one).",
    )
    s.add_argument(
        "source",
        help="wiki-vital (embedded); text (your .txt/.md files, --path); files (also .jsonl .json .parquet .csv, "
        "plain or .gz/.zst, --path, --text-field); hf NAME (a Hugging Face dataset); tinystories, fineweb-edu "
        "(named recipes); sales-textbook (downloaded once into "
        "~/.cache/psyduck or $PSYDUCK_CACHE, or --path a copy); wikitext-103 (raw), wikitext-103-v1 (<unk> tokens), "
        "wikitext-2, wikitext-2-v1 (Hugging Face `datasets`, or --path an offline copy)",
    )
    s.add_argument("name", nargs="?", help="for hf: the dataset's name on the hub (e.g. roneneldan/TinyStories) or a local folder")
    s.add_argument(
        "--tokenizer", default=DataConfig.tokenizer,
        help="cl100k_base, gpt2 (GPT-2's r50k, downloaded once by tiktoken), bpe-<vocab size> (trained here; default "
        f"{DataConfig.tokenizer}, cpu-small's), or the path of a saved tokenizer.json (e.g. runs/x/tokenizer.json)",
    )
    s.add_argument("--out", help="output folder (default data/<source>)")
    s.add_argument(
        "--path",
        help="local files: for text and files a file or folder; for sales-textbook sales_textbook.txt; for wikitext "
        "the original zip (e.g. wikitext-103-raw-v1.zip), its extracted folder, or a folder of the hub's parquet files",
    )
    s.add_argument("--val-fraction", type=float, default=0.05, help="share of documents for val (sources without their own split)")
    s.add_argument("--seed", type=int, default=1337, help="seed of that split")
    s.add_argument("--text-field", default="text", help="the field (column) of each record holding its text (default text)")
    s.add_argument("--encoding", help="the encoding of text and CSV files (default UTF-8; e.g. latin-1)")
    s.add_argument("--config", dest="dataset_config", help="for hf: the dataset's configuration (e.g. sample-10BT)")
    s.add_argument("--split-map", help="for hf: which splits to read, e.g. train=train,validation=val (default: "
                   "train, and validation or test as val)")
    s.add_argument("--streaming", action="store_true", help="for hf: read while downloading (for datasets too big to store)")
    s.add_argument("--max-tokens", type=parse_count, help="stop the train split at about this many tokens (e.g. 200M)")
    s.add_argument("--tokenizer-sample", type=parse_count,
                   help="characters of train text a bpe tokenizer learns from (default 64M; smaller corpora: all)")
    s.add_argument("--force", action="store_true", help="replace an --out folder that holds a run or other files")
    s.set_defaults(func=cmd_prepare)


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`psyduck train`: a preset or config, flags and key=value overrides -> a run folder."""
    s = sub.add_parser("train", help="train a model into a run folder")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. model.n_layer=4 lr=1e-3")
    s.add_argument("--preset", help="seed-60m, cpu-small (default), tiny, gpt2-124m, tinystories-gpu, fineweb-edu-gpu")
    s.add_argument("--config", help="a TOML file with [model], [data], [train], [eval] tables")
    s.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    s.add_argument(
        "--resume-from-scratch", action="store_true",
        help="train the run in --out anew from step 0 with its saved config, moving its old checkpoints and "
        "metrics aside into a dated folder (e.g. when every checkpoint is damaged)",
    )
    s.add_argument("--init-from", help="start from another run's weights (fresh optimizer and schedule)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--minutes", type=float, default=None,
        help="train by the clock for this long (train.max_seconds): the schedule's warmup and decay follow the "
        "share of the budget spent, and max_iters only draws their shape",
    )
    for name, (_, typ) in TRAIN_FLAGS.items():
        s.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    s.set_defaults(func=cmd_train)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    """`psyduck generate RUN`: sample text."""
    s = sub.add_parser("generate", help="sample text from a trained run")
    s.add_argument("run")
    s.add_argument("--prompt", default="")
    s.add_argument("--max-new-tokens", "--max-new-token", dest="max_new_tokens", type=int, default=100)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--no-stop", action="store_true", help="keep going past the end-of-text token")
    s.add_argument("--exact", action="store_true",
                   help="multiply in float32 (on CPUs the default uses float16 weight copies: ~1.2x faster, "
                        "next-token probabilities within 0.005 total variation)")
    s.add_argument("--checkpoint", help="a checkpoint folder, or 'best' (default: the newest loadable)")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    s.set_defaults(func=cmd_generate)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    """`psyduck eval RUN`: held-out loss and bits per byte, or benchmark tasks."""
    s = sub.add_parser(
        "eval", help="loss, perplexity and bits per byte of a run on held-out data, or benchmark tasks",
        description="Loss, perplexity and bits per byte over every token of a split, each predicted once; "
        "with --tasks, standard benchmarks (HellaSwag, ARC, PIQA, LAMBADA...) through lm-evaluation-harness.",
    )
    s.add_argument("run")
    s.add_argument(
        "--tasks",
        help="comma-separated lm-evaluation-harness tasks, e.g. hellaswag,arc_easy (needs pip install "
        "'psyduck[eval]'); prints each metric with its standard error and saves them in RUN/tasks.json",
    )
    s.add_argument("--include-path", help="with --tasks: a folder of your own task YAML files")
    s.add_argument("--limit", type=int, default=None, help="with --tasks: score only each task's first N documents")
    s.add_argument("--split", default="val", help="val (default), test (WikiText) or train")
    s.add_argument("--data", help="data folder (default: the run's)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--max-batches", type=int, default=None, help="stop early (an estimate)")
    s.add_argument(
        "--stride", type=int, default=None,
        help="slide the context window by this many tokens (default: the context length, no overlap); "
        "each window scores only its last STRIDE tokens, so every token still counts once but sees at "
        "least context-STRIDE tokens before it; costs context/STRIDE times more",
    )
    s.add_argument(
        "--word-perplexity", action="store_true",
        help="also exp(total NLL / words) for WikiText data, comparable with published WikiText-103 test "
        "numbers (GPT-2 small zero-shot 37.5, Transformer-XL 24.0); words = whitespace-separated tokens "
        "of each original line + 1 end-of-line per line (WikiText-103 test: 245,569)",
    )
    s.add_argument("--checkpoint", help="a checkpoint folder, or 'best' (default: the newest loadable)")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)


def _add_config(sub: argparse._SubParsersAction) -> None:
    """`psyduck config`: the presets and their keys."""
    s = sub.add_parser("config", help="show a preset's full configuration")
    s.add_argument("--preset", default="cpu-small")
    s.add_argument("--list", action="store_true", help="list the presets")
    s.set_defaults(func=cmd_config)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psyduck", description="Build, train and sample a small GPT from scratch.")
    sub = p.add_subparsers(dest="command", required=True)

    _add_prepare(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_eval(sub)
    _add_config(sub)

    for name in PLUGIN_COMMANDS:  # modules that add their own subcommands: `register(subparsers)`
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that room is not built (yet)
            raise
        module.register(sub)
    return p


# Larger rooms (the HTTP server, exporters) keep their CLI wiring next to their code.
PLUGIN_COMMANDS = ("psyduck.serve.command", "psyduck.export_command", "psyduck.chat_command")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)  # key=value overrides may sit between flags
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command not in ("train", "finetune")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        status = args.func(args)
    except PsyDuckError as e:
        print(f"psyduck: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psyduck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
