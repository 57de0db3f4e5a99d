"""Chat: the template and its special tokens, chat data, supervised fine-tuning, `psyduck chat`."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from psyduck.chat import (
    ROLE_MARKERS,
    ChatTemplate,
    ReplyStream,
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


def test_a_streamed_reply_adds_up_to_reply():
    def shown(template: ChatTemplate, pieces: list[str]) -> list[str]:
        stream = ReplyStream(template)
        out = [stream.push(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
        assert "".join(out) == template.reply("".join(pieces)) == stream.text
        return out

    assert shown(plain_template(), [" ", "Par", "is."]) == ["", "Par", "is."]
    assert shown(plain_template(), [" Paris", " is"]) == ["Paris", " is"]
    assert shown(plain_template(), ["Paris"]) == ["Paris"]  # a model that skips the space keeps its text
    assert shown(marker_template(), [" Paris"]) == [" Paris"]  # the marker template leaves nothing to the model
    wide = ChatTemplate(name="wide", system="S:  ", user="U:  ", assistant="A:  ", end="\n", separator="")
    assert wide.header_rest == "  "
    assert shown(wide, [" ", " ", "x"]) == ["", "", "x"]  # held while it may still be the header's two spaces
    assert shown(wide, [" ", "x"]) == ["", " x"]  # then not: shown after all
    assert shown(wide, [" "]) == [" "]  # the end came first: what there is


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


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_transformers_apply_chat_template_agrees(template, small_bpe):
    transformers = pytest.importorskip("transformers")
    import tokenizers

    tok = small_bpe.with_special_tokens(ROLE_MARKERS)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(tok.to_json()), eos_token="<|endoftext|>")
    hf.chat_template = template.jinja
    for gen in (True, False):
        assert hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen) == template.render(CONVERSATION, gen)
    ids = hf.apply_chat_template(CONVERSATION[:2], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # newer transformers return a BatchEncoding
    assert list(ids) == template.encode(tok, CONVERSATION[:2])  # markers are single ids there too


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


# -- growing the vocabulary ------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_grown_rows_are_the_mean_and_old_rows_untouched(tied):
    import torch

    from psyduck.config import ModelConfig
    from psyduck.model import GPT
    from psyduck.train.finetune import load_grown

    small = {"block_size": 16, "d_model": 32, "n_layer": 1, "n_head": 4, "dropout": 0.0}
    torch.manual_seed(0)
    base = GPT(ModelConfig(vocab_size=50, tie_embeddings=tied, head_bias=not tied, **small)).eval()
    if not tied:
        with torch.no_grad():
            base.lm_head.bias.normal_()
    grown = GPT(ModelConfig(vocab_size=54, tie_embeddings=tied, head_bias=not tied, **small)).eval()
    load_grown(grown, base, first_new=50)
    emb, old = grown.tok_emb.weight.detach(), base.tok_emb.weight.detach()
    assert torch.equal(emb[:50], old)
    assert torch.allclose(emb[50:], old.mean(0).expand(4, -1))
    head = grown.lm_head.weight.detach()
    assert torch.equal(head[:50], base.lm_head.weight.detach())
    assert torch.allclose(head[50:], base.lm_head.weight.detach().mean(0).expand(4, -1))
    assert (grown.lm_head.weight is grown.tok_emb.weight) == tied
    if not tied:
        assert torch.equal(grown.lm_head.bias[:50], base.lm_head.bias)
        assert torch.allclose(grown.lm_head.bias[50:], base.lm_head.bias.mean().expand(4))
    x = torch.randint(50, (2, 10))
    with torch.no_grad():
        assert torch.allclose(grown(x)[0][..., :50], base(x)[0], atol=1e-6)  # the same model on old tokens


# -- the loss mask ---------------------------------------------------------------------------


def test_masked_targets_give_no_loss_and_no_gradient():
    import torch
    import torch.nn.functional as F

    from psyduck.config import ModelConfig
    from psyduck.losses import FusedLoss, plain_loss
    from psyduck.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=12, d_model=16, n_layer=1, n_head=2, dropout=0.0))
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 30, 31, 32, 33]])  # 30..33 appear only at the end
    y = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    masked = y.clone()
    masked[0, 7:] = -1  # nothing at or after position 7 is graded
    masked[0, :2] = -1
    for loss_fn in (plain_loss, FusedLoss()):
        model.zero_grad()
        _, loss = model(x, masked, loss=loss_fn)
        loss.backward()
        logits = model(x)[0][0]
        expected = F.cross_entropy(logits[2:7], y[0, 2:7])
        assert torch.allclose(loss, expected, atol=1e-5)
        grad = model.tok_emb.weight.grad
        assert torch.count_nonzero(grad[30:34]) == 0  # read only where nothing is graded: no gradient
        assert torch.count_nonzero(grad[3]) > 0
        # what the masked targets say does not matter at all
        other = masked.clone()
        other[0, 7:] = -1
        h = model.body(x).detach().requires_grad_(True)
        _, l2 = loss_fn(h, model.lm_head, other)
        l2.backward()
        assert torch.count_nonzero(h.grad[0, 7:]) == 0 and torch.count_nonzero(h.grad[0, :2]) == 0
        assert torch.count_nonzero(h.grad[0, 2:7]) > 0


def test_packed_rows_grade_only_the_assistant(small_bpe):
    from psyduck.data.chat_batches import ChatBatches, pack
    from psyduck.data.chat_data import ChatSplits

    tok = small_bpe.with_special_tokens(ROLE_MARKERS)
    conv = [{"role": "user", "content": "What is Paris?"}, {"role": "assistant", "content": "The capital."}]
    long = [{"role": "user", "content": "Tell me about X. " * 30}, {"role": "assistant", "content": "Rome."}]
    batches = ChatBatches(ChatSplits(train=[conv] * 5 + [long], val=[conv]), tok, marker_template(), 40)
    p = batches.packed["train"]
    assert p.x.shape[1] == 40 and (p.x[:, 0] == tok.eot_id).all()  # rows start at a conversation
    assert p.dropped == 1 and p.cut == 1  # the long one had no answer left within the context
    assert tok.decode(p.y[0][p.y[0] != -1].tolist()) == "The capital.<|end|>" * tok.decode(p.x[0].tolist()).count("<|user|>")
    assert batches.num_tokens("val") == len(tok.encode("The capital.")) + 1
    assert batches.num_bytes("val") == len("The capital.<|end|>")
    rows, masks, _, _ = pack([([1, 2, 3], [0, 1, 1])] * 3, block_size=6, pad_id=0, order_seed=0)
    assert rows == [[1, 2, 3, 1, 2, 3, 0], [1, 2, 3, 0, 0, 0, 0]] and masks[1] == [0, 1, 1, 0, 0, 0, 0]


# -- chat data -------------------------------------------------------------------------------


def test_jsonl_conversations_and_bad_lines_by_number(tmp_path):
    from psyduck.data.chat_data import load_chat_data, read_conversations

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "name": "x"}]}
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([json.dumps(good)] * 3) + "\n\n")
    assert read_conversations(path) == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]] * 3
    splits = load_chat_data(str(path))
    assert len(splits.train) == 2 and len(splits.val) == 1
    lines = [
        json.dumps(good), "{not json", json.dumps({"text": "x"}), json.dumps({"messages": [{"role": "user", "content": "q"}]}),
        json.dumps({"messages": [{"role": "bot", "content": "q"}]}),
    ]
    path.write_text("\n".join(lines))
    with pytest.raises(PsyDuckError) as e:
        read_conversations(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path} has 4 bad lines (line 2: not JSON")
    assert 'line 3: not an object with a "messages" list' in message
    assert "line 4: no assistant message to learn from" in message
    assert "line 5: messages[0].role 'bot' is not one of system, user, assistant" in message
    with pytest.raises(PsyDuckError, match="chat data not found: nope.jsonl"):
        load_chat_data("nope.jsonl")


def test_wiki_vital_qa_is_deterministic_and_holds_out_whole_articles():
    from psyduck.data.chat_data import wiki_vital_qa

    a, b = wiki_vital_qa(), wiki_vital_qa()
    assert a == b
    assert len(a.train) > 30_000 and 1_000 < len(a.val) < 3_000
    val_questions = {c[0]["content"] for c in a.val}
    assert not val_questions & {c[0]["content"] for c in a.train}
    kinds = {c[0]["content"].split(" ")[0] for c in a.train}
    assert kinds == {"What", "Tell", "Describe"}
    assert any(len(c) == 4 and c[2]["content"] == "Tell me more." for c in a.train)
    paris = [c for c in a.train + a.val if c[0]["content"] == "What is Paris?"]
    assert paris and paris[0][1]["content"].startswith("Paris is")
    check_messages(a.val[0])


# -- fine-tuning -----------------------------------------------------------------------------

QUICK = ["eval_interval=10", "eval_iters=2", "sample_tokens=8", "batch_size=8"]


@pytest.fixture(scope="module")
def base_run(tiny_data, tmp_path_factory):
    """A tiny model trained briefly on the corpus, with room for a conversation (64 tokens)."""
    from psyduck.config import get_preset
    from psyduck.train import train

    run = tmp_path_factory.mktemp("chat") / "base"
    cfg = get_preset("tiny").replace({"data.path": str(tiny_data), "max_iters": 60, "model.block_size": 64, **dict(q.split("=") for q in QUICK)})
    train(cfg, run, progress=False)
    return run


def test_finetune_on_wiki_vital_qa_answers_held_out_questions_better(base_run, tmp_path):
    import torch

    from psyduck.chat import load_template
    from psyduck.data.chat_batches import ChatBatches
    from psyduck.data.chat_data import wiki_vital_qa
    from psyduck.model import GPT
    from psyduck.runs import load_run, read_run_config
    from psyduck.train.finetune import finetune, held_out_loss, load_grown

    out = tmp_path / "chat"
    result = finetune(base_run, "wiki-vital-qa", out, ["max_iters=60", *QUICK], progress=False, max_conversations=3000)
    assert result["step"] == 60
    tuned, tok = load_run(out)
    assert load_template(out) == marker_template() and tok.added_tokens.keys() == set(ROLE_MARKERS)
    assert json.loads((out / "finetune.json").read_text())["chat"] == "wiki-vital-qa"
    assert (out / "loss_curve.png").stat().st_size > 0 and "<|user|>" in (out / "samples.txt").read_text()
    base_model, base_tok = load_run(base_run)
    before = GPT(read_run_config(out).model).eval()
    load_grown(before, base_model, base_tok.vocab_size)
    val = ChatBatches(wiki_vital_qa().limited(1), tok, marker_template(), 64)  # all held-out conversations
    base_loss, tuned_loss = held_out_loss(before, val), held_out_loss(tuned, val)
    assert tuned_loss < base_loss - 0.05, (base_loss, tuned_loss)  # measured: 5.39 -> 5.25
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    assert rows[0]["val_loss"] == pytest.approx(held_out_loss(before, val), abs=1.0)  # step 0 is the base model
    with torch.no_grad():  # the ordinary text ids did not move
        assert tok.encode("Paris is a city") == base_tok.encode("Paris is a city")


def test_finetune_resumes_exactly(base_run, tmp_path, small_conversations):
    import torch

    from psyduck.runs import load_run
    from psyduck.train.finetune import finetune

    recipe = [*QUICK, "train.schedule=constant", "model.dropout=0.1"]  # dropout: the RNG must resume too
    finetune(base_run, str(small_conversations), tmp_path / "straight", ["max_iters=20", *recipe], progress=False)
    finetune(base_run, str(small_conversations), tmp_path / "split", ["max_iters=10", *recipe], progress=False)
    finetune(base_run, str(small_conversations), tmp_path / "split", ["max_iters=20"], resume=True, progress=False)
    rows = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("straight", "split")]
    assert len(rows[0]) == len(rows[1]) == 3
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in rows[0]] == [(r["step"], r["train_loss"], r["val_loss"]) for r in rows[1]]
    a, b = load_run(tmp_path / "straight")[0].state_dict(), load_run(tmp_path / "split")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other.jsonl"
    other.write_text(small_conversations.read_text().replace("Paris", "Lyon"))
    with pytest.raises(PsyDuckError, match="was fine-tuned on other conversations"):
        finetune(base_run, str(other), tmp_path / "split", ["max_iters=30"], resume=True, progress=False)


@pytest.fixture()
def small_conversations(tmp_path):
    path = tmp_path / "conversations.jsonl"
    lines = []
    for i in range(40):
        city = ["Paris", "Rome", "Berlin", "Madrid"][i % 4]
        lines.append({"messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": f"What is {city}? ({i})"},
            {"role": "assistant", "content": f"{city} is a capital city."},
        ]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# -- the commands ----------------------------------------------------------------------------


def test_finetune_and_chat_commands(base_run, tmp_path, small_conversations):
    out = tmp_path / "chat"
    done = run_cli("finetune", str(base_run), "--chat", str(small_conversations), "--out", str(out), "--max-iters", "10",
                   "--no-progress", *QUICK)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["step"] == 10
    assert f"talk to it: psyduck chat {out}" in done.stderr
    talk = chat_cli(str(out), "--seed", "1", "--max-new-tokens", "8", "--system", "Be brief.",
                    stdin="What is Paris?\n\n/reset\n/nope\nAnd Rome?\n")
    assert talk.returncode == 0, talk.stderr
    assert len(talk.stdout.splitlines()) == 2  # one reply per question; empty lines and commands answer nothing
    assert "(conversation cleared)" in talk.stderr and "unknown command /nope" in talk.stderr
    assert "Traceback" not in talk.stderr
    plain = chat_cli(str(base_run), "--max-new-tokens", "4", stdin="hello\n")  # a base model: plain template
    assert plain.returncode == 0 and "plain User:/Assistant: template" in plain.stderr


def chat_cli(*args: str, stdin: str):
    """`psyduck chat ARGS` with `stdin` piped in (ending in end-of-input, as Ctrl-D does)."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "psyduck", "chat", *args], check=False, input=stdin, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)


def test_fit_history_drops_the_oldest_turns_but_keeps_the_system_message(small_bpe):
    from psyduck.chat_command import fit_history

    tok = small_bpe.with_special_tokens(ROLE_MARKERS)
    template = marker_template()
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(10):
        history += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    history.append({"role": "user", "content": "last"})
    ids = fit_history(template, tok, history, 60)
    text = tok.decode(ids)
    assert len(ids) <= 60 and text.startswith("<|endoftext|><|system|>Be brief.") and text.endswith("last<|end|>\n<|assistant|>")
    assert "question 0" not in text
    assert fit_history(template, tok, history[-1:], 2) == template.encode(tok, history[-1:])  # too long alone: kept whole


def finetune_error(capsys, *args: str) -> str:
    """What `psyduck finetune ARGS` prints on stderr, run in this process; it must fail with status 2."""
    from psyduck.cli import main

    assert main(["finetune", *args]) == 2
    return capsys.readouterr().err


def test_finetune_errors_are_one_line(base_run, tmp_path, capsys):
    out = ["--out", str(tmp_path / "x")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    assert finetune_error(capsys, str(base_run), "--chat", str(bad), *out) == (
        f"psyduck: error: {bad} has 1 bad line (line 1: messages is empty; give at least one "
        "{'role': 'user', 'content': ...} message); fix or remove them\n"
    )
    assert finetune_error(capsys, str(base_run), "--chat", "wiki-vital-qa", "--out", str(base_run)) == (
        f"psyduck: error: --out {base_run} is the base run itself; fine-tune into a new folder\n"
    )
    assert finetune_error(capsys, str(base_run), "--chat", "missing.jsonl", *out) == (
        "psyduck: error: chat data not found: missing.jsonl; pass a .jsonl file of {\"messages\": [...]} lines "
        "or wiki-vital-qa\n"
    )
    assert finetune_error(capsys, str(base_run), "--chat", "x.jsonl", "model.n_layer=3", *out) == (
        f"psyduck: error: finetune keeps {base_run}'s architecture: model.n_layer cannot change (it is 2); "
        "only model.dropout may\n"
    )
    assert finetune_error(capsys, str(base_run), "--chat", "x.jsonl", "--minutes", "1", "--max-seconds", "5", *out) == (
        "psyduck: error: --minutes and --max-seconds both set the time budget; give only one of them\n"
    )
    assert finetune_error(capsys, str(base_run), "--chat", "wiki-vital-qa", "train.sampling=shuffle", *out) == (
        "psyduck: error: train.sampling=shuffle reads token shards; fine-tuning draws its conversations its own way: "
        "use train.sampling=random\n"
    )
    assert finetune_error(capsys, str(tmp_path / "nothing"), "--chat", "x.jsonl", *out).startswith(
        f"psyduck: error: run folder not found: {tmp_path / 'nothing'}"
    )


def test_finetune_an_imported_hf_model(tiny_data, tmp_path, small_conversations):
    import torch

    transformers = pytest.importorskip("transformers")
    from psyduck.interop.hf_import import import_hf
    from psyduck.runs import load_run
    from psyduck.train.finetune import finetune

    tok = load_tokenizer(tiny_data)
    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    eot = "<|endoftext|>"
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_data / "tokenizer.json"), bos_token=eot, eos_token=eot, unk_token=eot
    ).save_pretrained(folder)
    run = import_hf(folder, tmp_path / "imported")
    finetune(run, str(small_conversations), tmp_path / "chat", ["max_iters=4", *QUICK], progress=False)
    model, chat_tok = load_run(tmp_path / "chat")
    assert model.config.vocab_size == tok.vocab_size + len(ROLE_MARKERS) == chat_tok.vocab_size
    assert chat_tok.special_token_id("<|assistant|>") == tok.vocab_size + 2
