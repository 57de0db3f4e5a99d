"""A run's tokenizer as a Hugging Face `tokenizers` file (tokenizer.json), for either backend.

A trained BPE's tokenizer.json already *is* a Hugging Face `tokenizers` file and is copied;
cl100k_base is converted from tiktoken's ranks into the same byte-level BPE form (the usual
tiktoken -> Hugging Face conversion: GPT-2's byte-to-unicode alphabet, merges recovered from the
ranks). Note that `transformers` treats the text "<|endoftext|>" as the special token, while
PsyDuck's own `encode` treats it as plain text.
"""

from __future__ import annotations

from pathlib import Path

from psyduck.tokenizer import TiktokenParts, Tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE writes tokens in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tiktoken_to_hf_json(parts: TiktokenParts) -> str:
    """A tiktoken encoding (e.g. cl100k_base) as a Hugging Face byte-level BPE tokenizer.json.

    tiktoken stores only ranks (bytes -> id); BPE merges are recovered from them: a token of rank r
    is the merge of two shorter tokens whose concatenation it is, and merges apply in rank order.
    `ignore_merges` makes a whole pre-token that is in the vocabulary one token, as tiktoken does.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    ranks = parts.ranks
    byte_map = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {text(b): r for b, r in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    specials = sorted(parts.special_tokens.items(), key=lambda kv: kv[1])
    for name, i in specials:
        vocab[name] = i
    bpe = models.BPE(vocab=vocab, merges=[(text(m[3]), text(m[4])) for m in merges], ignore_merges=True)
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_onig_pattern(parts.pattern)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    return hf.to_str(pretty=True)


def _onig_pattern(pattern: str) -> str:
    """tiktoken's split regex for `tokenizers`' Oniguruma engine.

    tiktoken (Rust fancy-regex) reads `\\p{N}{1,3}+` as a possessive {1,3}; Oniguruma reads the `+` as
    "repeat the {1,3} group", which would keep numbers in one piece ("2024" instead of "202", "4").
    Possessive and greedy agree here (nothing after it can backtrack into a number run).
    """
    return pattern.replace("{1,3}+", "{1,3}")


def hf_tokenizer_json(run: Path, tok: Tokenizer) -> str:
    """The run's tokenizer as a Hugging Face tokenizer.json (text)."""
    parts = tok.tiktoken_parts()
    if parts is not None:
        return tiktoken_to_hf_json(parts)
    return (run / "tokenizer.json").read_text(encoding="utf-8")
