"""Chat: the template and its special tokens, chat data, supervised fine-tuning, `psyduck chat`."""

from __future__ import annotations

import json

import pytest

from psyduck.chat import (
    ROLE_MARKERS,
    ChatTemplate,
    check_messages,
    load_template,
    marker_template,
    plain_template,
)
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import cl100k_base, load_tokenizer, train_bpe

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is Paris?"},
    {"role": "assistant", "content": "The capital of France."},
    {"role": "user", "content": "And <|user|> Rome?"},  # marker text in a message stays text
]
TEMPLATES = [marker_template(), plain_template()]


@pytest.fixture(scope="module")
def small_bpe():
    texts = ["What is Paris? The capital of France. Be brief. And Rome? " * 20, "Tell me about X. " * 20]
    return train_bpe(texts, 300)


def tokenizers_under_test(small_bpe):
    return [cl100k_base().with_special_tokens(ROLE_MARKERS), small_bpe.with_special_tokens(ROLE_MARKERS)]


# -- special tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cl100k", "bpe"])
def test_special_tokens_are_appended_and_saved(backend, small_bpe, tmp_path):
    base = cl100k_base() if backend == "cl100k" else small_bpe
    tok = base.with_special_tokens(ROLE_MARKERS)
    assert tok.vocab_size == base.vocab_size + len(ROLE_MARKERS)
    assert [tok.special_token_id(m) for m in ROLE_MARKERS] == list(range(base.vocab_size, tok.vocab_size))
    assert tok.special_token_id("<|endoftext|>") == base.eot_id
    assert tok.special_token_id("<|nope|>") is None
    text = "x <|user|> y"
    assert tok.encode(text) == base.encode(text)  # text never becomes a special token
    assert tok.decode([tok.special_token_id("<|user|>"), *base.encode("hi")]) == "<|user|>hi"
    again = tok.with_special_tokens(ROLE_MARKERS)
    assert again.vocab_size == tok.vocab_size and again.added_tokens == tok.added_tokens
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert (loaded.name, loaded.vocab_size, loaded.added_tokens) == (tok.name, tok.vocab_size, tok.added_tokens)
    assert loaded.fingerprint == tok.fingerprint == base.fingerprint  # ordinary text keeps its ids


def test_cl100k_parts_carry_added_tokens():
    parts = cl100k_base().with_special_tokens(ROLE_MARKERS).tiktoken_parts()
    assert parts is not None and parts.special_tokens["<|end|>"] == 100280


def test_malformed_added_tokens_are_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "tiktoken", "name": "cl100k_base", "added_tokens": {"<|x|>": 5}}))
    with pytest.raises(PsyDuckError, match="malformed added_tokens"):
        load_tokenizer(tmp_path)


# -- the template ----------------------------------------------------------------------------


def test_marker_template_renders_the_documented_text():
    assert marker_template().render(CONVERSATION[:3]) == (
        "<|endoftext|><|system|>Be brief.<|end|>\n<|user|>What is Paris?<|end|>\n"
        "<|assistant|>The capital of France.<|end|>\n<|assistant|>"
    )
    assert plain_template().render(CONVERSATION[1:2]) == "<|endoftext|>User: What is Paris?\nAssistant:"
    assert plain_template().render(CONVERSATION[1:2], add_generation_prompt=False) == "<|endoftext|>User: What is Paris?\n"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_encode_matches_render_and_prompt_is_a_prefix(template, small_bpe):
    for tok in tokenizers_under_test(small_bpe):
        ids = template.encode(tok, CONVERSATION, add_generation_prompt=False)
        assert tok.decode(ids) == template.render(CONVERSATION, add_generation_prompt=False)
        prompt = template.encode(tok, CONVERSATION[:2])
        full, mask = template.encode_for_training(tok, CONVERSATION[:3])
        assert full[: len(prompt)] == prompt and len(full) == len(mask)
        trained = tok.decode([i for i, m in zip(full, mask, strict=True) if m])
        assert trained == template.assistant[len(template.generation_prompt):] + "The capital of France." + template.end
        assert not any(mask[: len(prompt)])


def test_markers_are_single_special_ids(small_bpe):
    tok = small_bpe.with_special_tokens(ROLE_MARKERS)
    ids = marker_template().encode(tok, CONVERSATION[1:2])
    assert ids[:2] == [tok.eot_id, tok.special_token_id("<|user|>")]
    assert ids[-1] == tok.special_token_id("<|assistant|>")
    # a tokenizer without the markers still encodes the conversation, as plain text
    assert small_bpe.decode(marker_template().encode(small_bpe, CONVERSATION[1:2])) == marker_template().render(CONVERSATION[1:2])


def test_stop_strings_and_reply():
    assert marker_template().stop_strings[0] == "<|end|>"
    assert "\nUser:" in plain_template().stop_strings
    assert plain_template().reply(" Paris.") == "Paris."
    assert marker_template().reply("Paris.") == "Paris."


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
@pytest.mark.parametrize("hf_settings", [False, True])
def test_jinja_renders_like_render(template, hf_settings):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(trim_blocks=hf_settings, lstrip_blocks=hf_settings)
    compiled = env.from_string(template.jinja)
    tricky = [*CONVERSATION, {"role": "assistant", "content": "quotes \" ' {{ x }} \\n and é\n"}]
    for messages in (CONVERSATION[:1], CONVERSATION, tricky):
        for gen in (True, False):
            assert compiled.render(messages=messages, add_generation_prompt=gen) == template.render(messages, gen)


def test_template_saved_and_loaded(tmp_path):
    assert load_template(tmp_path) == plain_template()
    marker_template().save(tmp_path)
    assert load_template(tmp_path) == marker_template()
    (tmp_path / "chat_template.json").write_text("{")
    with pytest.raises(PsyDuckError, match="chat_template.json is corrupt"):
        load_template(tmp_path)
    (tmp_path / "chat_template.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(PsyDuckError, match="is corrupt"):
        load_template(tmp_path)
    assert isinstance(load_template(tmp_path.parent / "missing"), ChatTemplate)


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "messages is empty"),
        ("hi", "must be a list"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"content": "x"}], r"messages\[0\] has no 'role'"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}], r"messages\[1\].role 'tool' is not one of system, user, assistant"),
        ([{"role": "user", "content": ["a"]}], r"messages\[0\].content must be a string, got list"),
        (["hi"], r"messages\[0\] must be an object"),
    ],
)
def test_check_messages_names_the_problem(messages, problem):
    with pytest.raises(PsyDuckError, match=problem):
        check_messages(messages)


def test_check_messages_accepts_a_conversation():
    check_messages(CONVERSATION)
