import json

import pytest

from chatpipe.tasks.chat.format import SPECIAL_TOKENS
from chatpipe.tasks.tokens.tokenizer import load

TRICKY = [
    "", " ", "  leading and trailing  ", "tabs\tand\r\nwindows newlines\n\n\n",
    "unicode: héllo wörld — 你好，世界 — こんにちは — 🤖🚀 — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "<|user|> hi\n<|assistant|> hello<|endoftext|>",
    "<|user|><|user|>x<|assistant|>", "<|usr|> almost a marker <| |>",
    "def f(x):\n    return x ** 2  # comment\n", "\x00\x01 control \x7f chars", "ﬁ ligature Å vs Å",
]


@pytest.fixture(scope="module")
def tok(built):
    return load(built[0].tokenizer)


def test_special_tokens_are_single_ids(tok):
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert sorted(ids.values()) == [0, 1, 2, 3]
    for t, i in ids.items():
        assert tok.encode(t, add_special_tokens=False).ids == [i]
        inside = tok.encode(f"abc{t}def", add_special_tokens=False).ids
        assert inside.count(i) == 1
    # no learned token contains a marker: they can never be merged with their neighbours
    assert not [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS and "|>" in t and "<|" in t]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text


def test_metrics_and_vocab(built, tok):
    layout, params, _ = built
    m = json.loads(layout.metrics("tokenizer").read_text())
    assert m["vocab_size"] == tok.get_vocab_size() == params.tokenizer.vocab_size
    assert {"chitchat", "stdlib", "synthetic"} <= set(m["heldout"])   # the 8-dialogue chat file may have none
    for source, h in m["heldout"].items():
        assert h["round_trip"] and 1.0 < h["bytes_per_token"] < 10, source


def test_loads_in_transformers(built, tok):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(built[0].tokenizer / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(built[0].tokenizer))
    text = "<|user|> what is 2+2?\n<|assistant|> 4\n"
    expected = tok.encode(text, add_special_tokens=False).ids
    assert fast.encode(text, add_special_tokens=False) == expected
    assert auto.encode(text, add_special_tokens=False) == expected
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == tok.token_to_id("<|endoftext|>")
    assert auto.decode(expected) == text
