"""Per-token loss weights in the shards: exact on conversations, 1 on code, counted; old shards refused."""
import json
import re

import numpy as np
import pyarrow as pa
import pytest

from chatpipe.tasks.chat.format import CHAT_KINDS, EOT, Turn, render
from chatpipe.tasks.chat.formats import Ours
from chatpipe.tasks.common.documents import is_val, iter_batches, load_manifest
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.tokens.reader import SHARD_FORMAT, TokenReader
from chatpipe.tasks.tokens.shard import Chat, Streams
from chatpipe.tasks.tokens.tokenizer import load

S, U, A = (lambda text, role=role: Turn(role, text) for role in ("system", "user", "assistant"))
CODE = "def f(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def tok(built):
    return load(built[0].tokenizer)


@pytest.fixture(scope="module")
def chat(tok):
    return Chat(Ours(tok), {"chat": "chat_text", "code": "local_code"})


def weigh(tok, chat, tmp_path, docs: list[tuple[str, bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text, is_chat) documents through the shard stage's streams (all in train): ids, weights, lengths."""
    texts = [text for text, _ in docs]
    batch = pa.record_batch([[doc_id(i) for i in range(len(docs))], ["chat" if c else "code" for _, c in docs],
                             texts], names=["id", "source", "text"])
    encoded = chat.encode(batch)
    streams = Streams(tmp_path, np.dtype(np.uint16), 1 << 20, tok.token_to_id(EOT), 0.5, chat)
    streams.add(batch, encoded)
    return *streams.writers["train"]._flat(), np.array([len(e.ids) for e in encoded])


def doc_id(i: int) -> str:
    return f"ffffffff{i:056x}"                                # ≥ every val_fraction: a train document


def split_by_weight(tok, tokens, weights) -> tuple[str, str]:
    decode = lambda ids: tok.decode(ids.tolist(), skip_special_tokens=False)
    return decode(tokens[weights == 1]), decode(tokens[weights == 0])


def expected_supervised(text: str) -> str:
    """The reference, on characters: each answer after its marker, through the marker (or EOT) that ends it."""
    return "".join(m[1] + (m[2] or EOT) for m in re.finditer(
        r"<\|assistant\|>(.*?)(<\|user\|>|<\|system\|>|\Z)", text, flags=re.DOTALL))


@pytest.mark.parametrize("turns, supervised, unsupervised", [
    ((S("Be brief."), U("hi"), A("hello")),
     " hello\n<|endoftext|>", "<|system|> Be brief.\n<|user|> hi\n<|assistant|>"),
    ((U("q1"), A("a1"), U("q2"), A("a2\n\nwith a blank line")),
     " a1\n<|user|> a2\n\nwith a blank line\n<|endoftext|>", "<|user|> q1\n<|assistant|> q2\n<|assistant|>"),
])
def test_weights_on_a_conversation(tok, chat, tmp_path, turns, supervised, unsupervised):
    tokens, weights, _ = weigh(tok, chat, tmp_path, [(render(turns), True)])
    assert weights.dtype == np.uint8 and set(np.unique(weights)) == {0, 1}
    assert split_by_weight(tok, tokens, weights) == (supervised, unsupervised)
    assert supervised == expected_supervised(render(turns))
    assert weights[-1] == 1                                   # the end of turn: the model learns to stop


def test_weights_in_a_mixed_stream(tok, chat, tmp_path):
    """Role does not leak across documents; a conversation last in the stream ends supervised; code is all 1
    even when its text holds markers; a document is chat by its source, never by its text."""
    conv = render((U("hi"), A("hello")))
    docs = [(conv, True), (CODE + "s = '<|assistant|> <|endoftext|>'\n", False), (conv, False), (conv, True)]
    tokens, weights, lengths = weigh(tok, chat, tmp_path, docs)
    parts = np.split(np.arange(len(tokens)), np.cumsum(lengths)[:-1])
    for (text, is_chat), idx in zip(docs, parts):
        if is_chat:
            assert split_by_weight(tok, tokens[idx], weights[idx]) == (" hello\n" + EOT, "<|user|> hi\n<|assistant|>")
        else:
            assert weights[idx].all()
    assert weights[-1] == 1 and tokens[-1] == tok.token_to_id(EOT)


@pytest.mark.parametrize("text, why", [("<|user|> no answer\n", "not a conversation ending"),
                                       (CODE, "not a conversation ending")])
def test_a_chat_document_that_cannot_end_on_an_answer_is_an_error(tok, chat, tmp_path, text, why):
    good = render((U("ok"), A("fine")))
    with pytest.raises(InputError, match=f"^document {doc_id(1)} of source 'chat' .*{why}"):
        weigh(tok, chat, tmp_path / "chat", [(good, True), (text, True)])
    weigh(tok, chat, tmp_path / "code", [(good, True), (text, False)])     # as code: fine


def streams(layout, split):
    m = json.loads((layout.shards / "manifest.json").read_text())
    tables = [pa.ipc.open_file(pa.memory_map(str(layout.shards / s["path"]))).read_all()
              for s in m["splits"][split]["shards"]]
    return m, *(np.concatenate([t.column(c).to_numpy() for t in tables]) for c in ("tokens", "loss_weight"))


def documents(layout, val_fraction, split):
    kinds = {name: s["kind"] for name, s in load_manifest(layout.documents)["sources"].items()}
    for batch in iter_batches(layout.documents):
        for did, src, text in zip(*(batch.column(c).to_pylist() for c in ("id", "source", "text"))):
            if is_val(did, val_fraction) == (split == "val"):
                yield text, kinds[src] in CHAT_KINDS


def test_shards_hold_exact_weights_and_counts(built, tok):
    layout, params, results = built
    for split in ("train", "val"):
        m, tokens, weights = streams(layout, split)
        assert m["format"] == SHARD_FORMAT and weights.dtype == np.uint8 and len(weights) == len(tokens)
        counts = m["splits"][split]
        assert counts["supervised_tokens"] == int(weights.sum()) == results["shard"].metrics[f"{split}_supervised_tokens"]
        assert [s["supervised_tokens"] for s in counts["shards"]] == [
            int(streams_w.sum()) for streams_w in np.split(weights, np.cumsum([s["tokens"] for s in counts["shards"]])[:-1])]
        ends = np.flatnonzero(tokens == m["eot_id"])
        docs = list(documents(layout, params.shard.val_fraction, split))
        is_chat = np.array([c for _, c in docs])
        assert len(docs) == len(ends) and is_chat.any() and not is_chat.all()
        assert weights[ends[is_chat]].all()                      # every conversation supervises its end of turn
        lengths = np.diff(ends, prepend=-1)
        assert counts["chat_tokens"] == int(lengths[is_chat].sum())
        assert counts["supervised_tokens"] - int(lengths[~is_chat].sum()) < counts["chat_tokens"]
        if split == "val":                                       # every document, exactly, against the reference
            for (text, chat), idx in zip(docs, np.split(np.arange(len(tokens)), ends[:-1] + 1)):
                if chat:
                    assert split_by_weight(tok, tokens[idx], weights[idx])[0] == expected_supervised(text)
                else:
                    assert weights[idx].all()


def old_shards(directory, layout, fmt: int | None):
    """The built shards' manifest and first train shard as the shard stage wrote them before loss weights."""
    m = json.loads((layout.shards / "manifest.json").read_text())
    m.pop("format") if fmt is None else m.update(format=fmt)
    shard = m["splits"]["train"]["shards"][0]
    m["splits"]["train"]["shards"] = [shard]
    table = pa.ipc.open_file(pa.memory_map(str(layout.shards / shard["path"]))).read_all().select(["tokens"])
    (directory / "train").mkdir(parents=True)
    with pa.OSFile(str(directory / shard["path"]), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    (directory / "manifest.json").write_text(json.dumps(m))
    return directory


def test_old_shards_are_refused(built, tmp_path):
    with pytest.raises(InputError, match=r"manifest.json: shards in format 1, .*; rerun `chatpipe shard`$"):
        TokenReader(old_shards(tmp_path / "v1", built[0], None), "train", 64, 4)
    with pytest.raises(InputError, match=r"train/shard-00000.arrow: an old-format shard without the loss_weight "
                                         r"column; rerun `chatpipe shard`$"):
        TokenReader(old_shards(tmp_path / "v2", built[0], SHARD_FORMAT), "train", 64, 4)
