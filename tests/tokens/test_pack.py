"""Packing conversations into sft rows: whole conversations, splits at turn boundaries, nothing cropped,
no row without a supervised token, every conversation's end-of-turn token supervised."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pyarrow as pa
import pytest

from chatpipe.tasks.chat.formats import Encoded, loss_weights
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.tokens.pack import PAD, SUPERVISED, pack, pieces
from tests.conftest import linked, test_params

EOT, U, A, S = 0, 1, 2, 3
MARKERS = np.array([U, A, S, EOT])


def supervised(tokens: np.ndarray, assistant: int, markers: np.ndarray) -> np.ndarray:
    return loss_weights(tokens, np.ones(len(tokens), dtype=bool), assistant, markers) > 0


def starts(t: np.ndarray) -> dict[str, np.ndarray]:
    return {"user": np.flatnonzero(t == U), "assistant": np.flatnonzero(t == A)}


def encoded(t: np.ndarray) -> Encoded:
    """A conversation as our format encodes it: weights from the markers, turn starts at them."""
    return Encoded("", t, supervised(t, A, MARKERS).astype(np.uint8), None, starts(t))


def conversation(*turns: tuple[int, int]) -> np.ndarray:
    """(marker, text length) per turn → a token array ending in <|endoftext|>; text tokens are 9."""
    out = []
    for marker, n in turns:
        out += [marker] + [9] * n
    return np.array([*out, EOT])


def test_supervised_is_the_assistant_text_and_the_token_that_ends_its_turn():
    t = conversation((S, 2), (U, 2), (A, 2), (U, 1), (A, 3))
    got = supervised(t, A, MARKERS)
    #         S 9 9 U 9 9 A 9 9 U 9 A 9 9 9 EOT
    expect = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert got.astype(int).tolist() == expect


def test_a_conversation_that_fits_is_one_piece_and_a_long_one_splits_between_exchanges():
    from collections import Counter

    t = conversation((U, 3), (A, 3), (U, 3), (A, 3))  # 17 tokens: two exchanges of 8, + EOT
    counts = Counter()
    assert pieces(t, 17, starts(t), counts) == [(0, 17)]
    assert pieces(t, 10, starts(t), counts) == [(0, 9), (8, 17)]  # the <|user|> at 8 ends one piece, opens the next
    assert counts["conversations split"] == 1


def test_a_turn_longer_than_a_row_is_counted_and_skipped_never_cropped():
    t = conversation((U, 2), (A, 20), (U, 2), (A, 2))
    packed = pack([encoded(t)], 12, EOT)
    assert packed.counts["turns longer than a row (skipped)"] == 1
    for row, codes in zip(packed.tokens, packed.codes):
        assert (codes == SUPERVISED).any()  # no row without a supervised token
        assert len(row) == 12
    kept = sum(int((c == SUPERVISED).sum()) for c in packed.codes)
    assert kept == 3  # the short answer's two tokens and its <|endoftext|>; nothing of the long one


def test_rows_are_best_fit_and_every_piece_keeps_its_end_of_turn_token():
    rng = np.random.default_rng(0)
    convs = []
    for _ in range(60):
        turns = [(m, int(rng.integers(1, 8))) for _ in range(int(rng.integers(1, 3))) for m in (U, A)]
        t = conversation(*turns)
        convs.append(encoded(t))
    packed = pack(convs, 64, EOT)
    total = sum(len(c.ids) for c in convs)
    assert len(packed.tokens) <= total / 64 * 1.1 + 1  # best fit: rows nearly full
    for row, codes in zip(packed.tokens, packed.codes):
        assert codes[0] == PAD  # nothing in a row predicts its first token
        ends = (row == EOT) & (codes == SUPERVISED)
        assert ends.any() or (row[codes == SUPERVISED][-1] == U), "a piece without its end-of-turn token"
    supervised_in = sum(int(c.weights[1:].sum()) for c in convs)  # the first token of a conversation is a marker
    assert sum(int((c == SUPERVISED).sum()) for c in packed.codes) == supervised_in


def test_the_pack_stage_writes_weighted_rows(built, tmp_path):
    from chatpipe.tasks.tokens import pack as stage

    layout, _, _ = built
    root = linked(tmp_path, layout)
    (root / "data" / "documents").symlink_to(layout.documents.resolve())
    params = test_params("sft.enabled=true", "sft.prompt_loss_weight=0.25")
    with contextlib.chdir(root):
        result = stage.run(params, Layout(root))
    assert result.ok, result.summary
    manifest = json.loads((root / "data" / "sft" / "manifest.json").read_text())
    assert manifest["row_tokens"] == params.model.block_size and manifest["splits"]["train"]["rows"] > 10
    batch = pa.ipc.open_file(str(root / "data" / "sft" / manifest["splits"]["train"]["shards"][0]["path"])).get_batch(0)
    tokens, weights = (batch.column(c).to_numpy() for c in ("tokens", "loss_weight"))
    assert len(tokens) == manifest["splits"]["train"]["shards"][0]["rows"] * params.model.block_size + 1
    assert set(np.unique(weights).tolist()) == {0.0, 0.25, 1.0}
    with pytest.raises(ConfigError, match="sft.sources: no documents from 'nowhere'"):
        stage.run(test_params("sft.enabled=true", "sft.sources=[nowhere]"), Layout(root))
