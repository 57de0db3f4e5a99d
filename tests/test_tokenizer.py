"""The tokenizer contract: exact round trips, a safe end-of-text token, files that load back."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from psyduck.errors import PsyDuckError
from psyduck.tokenizer import EOT, Tokenizer, load_tokenizer, make_tokenizer, train_bpe

BPE_VOCAB = 400

WORDS = (
    "the a model learns to predict next token from text data train loss value small large "
    "attention layer head block weight gradient step batch window byte unicode café naïve 東京 😀"
).split()


def sample_texts(n_docs: int = 40, seed: int = 0) -> list[str]:
    """A few KB of deterministic pseudo-English (with some non-ASCII) to train a small BPE."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))).capitalize() + "." for _ in range(5)]
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(sample_texts(), BPE_VOCAB)


@pytest.fixture(scope="module")
def cl100k() -> Tokenizer:
    return make_tokenizer("cl100k_base")


# Arbitrary Unicode, with the special token's characters mixed in now and then.
any_text = st.lists(st.one_of(st.text(), st.just(EOT)), max_size=5).map("".join)
roundtrip = settings(max_examples=300, deadline=None)


@roundtrip
@given(text=any_text)
def test_cl100k_round_trips_any_unicode(cl100k: Tokenizer, text: str) -> None:
    ids = cl100k.encode(text)
    assert cl100k.decode(ids) == text
    assert cl100k.eot_id not in ids


@roundtrip
@given(text=any_text)
def test_bpe_round_trips_any_unicode(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.eot_id not in ids
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_cl100k_identity(cl100k: Tokenizer) -> None:
    assert (cl100k.name, cl100k.vocab_size, cl100k.eot_id) == ("cl100k_base", 100277, 100257)
    assert make_tokenizer("cl100k_base")._encoding is cl100k._encoding  # loaded once, cached


def test_bpe_identity_and_eot(bpe: Tokenizer) -> None:
    assert (bpe.name, bpe.vocab_size) == (f"bpe-{BPE_VOCAB}", BPE_VOCAB)
    assert [(t["id"], t["content"]) for t in json.loads(bpe.to_json())["added_tokens"]] == [(bpe.eot_id, EOT)]
    assert bpe.decode([bpe.eot_id]) == EOT


@pytest.mark.parametrize("backend", ["cl100k", "bpe"])
def test_eot_text_in_user_input_is_not_the_special_id(backend: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(backend)
    text = f"one{EOT}two"
    ids = tok.encode(text)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text
    # The real boundary is the id, appended by the data pipeline; it decodes to the same characters.
    assert tok.decode(tok.encode("one") + [tok.eot_id] + tok.encode("two")) == text


@pytest.mark.parametrize("backend", ["cl100k", "bpe"])
def test_encode_batch_equals_encode(backend: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(backend)
    texts = sample_texts(8, seed=1) + ["", " leading space", "tabs\tand\nnewlines\r\n"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(any_text, max_size=4))
def test_encode_to_arrays_equals_encode(cl100k: Tokenizer, bpe: Tokenizer, texts: list[str]) -> None:
    """The array path prepare uses: the same ids as `encode`, EOT text and lone surrogates included."""
    for tok in (cl100k, bpe):
        arrays = tok.encode_to_arrays(texts)
        assert all(a.dtype == np.uint32 for a in arrays)
        assert [a.tolist() for a in arrays] == [tok.encode(t) for t in texts]


def test_undefined_ids_decode_to_nothing(bpe: Tokenizer, cl100k: Tokenizer) -> None:
    hello = cl100k.encode("hello")
    assert cl100k.decode([100256, *hello, 100262, 100275]) == "hello"  # holes in cl100k_base's ids
    assert bpe.decode([*bpe.encode("hello"), bpe.vocab_size + 5]) == "hello"


def test_lone_surrogates_become_replacement_chars(bpe: Tokenizer, cl100k: Tokenizer) -> None:
    for tok in (bpe, cl100k):
        assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
        assert tok.encode_to_arrays(["a\ud800b"])[0].tolist() == tok.encode("a\ud800b")


@pytest.mark.parametrize("backend", ["cl100k", "bpe"])
def test_save_load_round_trip(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tok: Tokenizer = request.getfixturevalue(backend)
    tok.save(tmp_path / "run")
    loaded = load_tokenizer(tmp_path / "run")
    assert (loaded.name, loaded.vocab_size, loaded.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    texts = sample_texts(5, seed=2) + [f"x{EOT}y"]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)


def test_cl100k_file_is_a_small_pointer(cl100k: Tokenizer, tmp_path: Path) -> None:
    cl100k.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"type": "tiktoken", "name": "cl100k_base"}


def test_bpe_file_is_a_hugging_face_tokenizer(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "The model learns. 東京"
    assert hf.encode(text).ids == bpe.encode(text)


def test_bpe_training_is_deterministic(bpe: Tokenizer) -> None:
    again = train_bpe(sample_texts(), BPE_VOCAB)
    assert again.to_json() == bpe.to_json()


def test_make_tokenizer_trains_bpe(bpe: Tokenizer) -> None:
    made = make_tokenizer(f"bpe-{BPE_VOCAB}", sample_texts())
    assert made.to_json() == bpe.to_json()


@pytest.mark.parametrize("spec", ["gpt3", "bpe-256", "bpe-x", "BPE-8192", "cl100k"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(PsyDuckError) as e:
        make_tokenizer(spec, ["text"])
    assert str(e.value) == (
        f"unknown tokenizer '{spec}'; use 'cl100k_base', 'gpt2', 'bpe-<N>' with N >= 257 (e.g. bpe-8192), "
        "or the path of a tokenizer.json"
    )


def test_bpe_spec_needs_texts() -> None:
    with pytest.raises(PsyDuckError) as e:
        make_tokenizer("bpe-300")
    assert str(e.value) == "bpe-300 is trained from text; pass the training texts (prepare does this)"


def test_text_too_small_for_the_vocabulary() -> None:
    with pytest.raises(PsyDuckError) as e:
        train_bpe(["tiny text"], 8192)
    pattern = r"the text is too small to learn bpe-8192: it yields only (\d+) tokens; "
    pattern += r"use more text or --tokenizer bpe-\1"
    assert re.fullmatch(pattern, str(e.value))


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(PsyDuckError) as e:
        load_tokenizer(tmp_path)
    path = tmp_path / "tokenizer.json"
    assert str(e.value) == f"tokenizer file not found: {path}; run `psyduck prepare` again to write it"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"type": "nonsense"}'])
def test_load_corrupt(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(PsyDuckError) as e:
        load_tokenizer(tmp_path)
    message = str(e.value)
    assert message.startswith(f"tokenizer file {path} is corrupt (")
    assert message.endswith("); run `psyduck prepare` again to write it")
    assert "\n" not in message


def test_fingerprint_compares_the_encoding_not_the_file_text(bpe: Tokenizer, tmp_path: Path) -> None:
    """An imported model's tokenizer.json and an identical one trained here agree (issue 16 part 5)."""
    spec = json.loads(bpe.to_json())
    model = spec["model"]
    model["merges"] = [m.split(" ") if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # other format
    spec["pre_tokenizer"]["trim_offsets"] = not spec["pre_tokenizer"].get("trim_offsets", True)  # offsets only
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    reordered = json.dumps(dict(reversed(list(spec.items()))))  # other key order, no indentation
    (tmp_path / "tokenizer.json").write_text(reordered)
    other = load_tokenizer(tmp_path)
    assert other.fingerprint == bpe.fingerprint
    spec["model"]["merges"][0], spec["model"]["merges"][1] = spec["model"]["merges"][1], spec["model"]["merges"][0]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    assert load_tokenizer(tmp_path).fingerprint != bpe.fingerprint  # a different merge order: other ids
