import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from chatpipe.tasks.common.documents import is_val, iter_batches
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.tokens.reader import TokenReader
from chatpipe.tasks.tokens.tokenizer import file_hash, load


def manifest(layout):
    return json.loads((layout.shards / "manifest.json").read_text())


def test_manifest_matches_files(built):
    layout, _, results = built
    m = manifest(layout)
    assert m["tokenizer_sha256"] == file_hash(layout.tokenizer)
    assert m["dtype"] == "uint16"
    for split in ("train", "val"):
        shards = m["splits"][split]["shards"]
        assert len(shards) >= 1
        for s in shards:
            path = layout.shards / s["path"]
            assert sha256_file(path) == s["sha256"]
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            assert table.schema.field("tokens").type == pa.uint16() and table.num_rows == s["tokens"]
            assert table.schema.field("loss_weight").type == pa.uint8()   # in the hashed file
    assert len(m["splits"]["train"]["shards"]) > 1        # shard_tokens=65536 cuts the stream
    ingest_docs = json.loads(layout.metrics("ingest").read_text())["totals"]["documents"]
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == ingest_docs
    assert results["shard"].metrics["train_tokens"] == m["splits"]["train"]["tokens"]


def test_streams_decode_to_exactly_their_split(built):
    """Lossless and split by id: decoding each stream gives back exactly that split's documents."""
    layout, params, _ = built
    tok, m = load(layout.tokenizer), manifest(layout)
    expected = {"train": [], "val": []}
    for batch in iter_batches(layout.documents, columns=("id", "text")):
        for did, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            expected["val" if is_val(did, params.shard.val_fraction) else "train"].append(text)
    for split, texts in expected.items():
        stream = np.concatenate([pa.ipc.open_file(pa.memory_map(str(layout.shards / s["path"]))).read_all()
                                 .column(0).to_numpy() for s in m["splits"][split]["shards"]])
        cuts = np.flatnonzero(stream == m["eot_id"])
        docs = np.split(stream, cuts + 1)[:-1]
        decoded = [tok.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs]
        assert decoded == texts, split
    assert not set(expected["train"]) & set(expected["val"])


def reader(layout, **kw):
    args = {"split": "train", "block_size": 64, "batch_size": 4, "seed": 7} | kw
    return TokenReader(layout.shards, **args)


def test_reader_batches_are_shifted_windows(built):
    r = reader(built[0])
    x, y = r.next_batch()
    assert x.shape == y.shape == (4, 64) and x.dtype.is_floating_point is False
    assert (x[:, 1:] == y[:, :-1]).all()


def test_reader_is_seeded(built):
    a, b, c = reader(built[0]), reader(built[0]), reader(built[0], seed=8)
    xa, xb, xc = a.next_batch()[0], b.next_batch()[0], c.next_batch()[0]
    assert (xa == xb).all() and not (xa == xc).all()


@pytest.mark.parametrize("split, before", [("train", 7), ("val", 250)])   # val: resumes across epochs
def test_reader_resumes_exactly(built, split, before):
    r = reader(built[0], split=split)
    for _ in range(before):
        r.next_batch()
    state = json.loads(json.dumps(r.state_dict()))          # survives serialization
    expected = [r.next_batch(weights=True) for _ in range(5)]
    resumed = reader(built[0], split=split)
    resumed.load_state_dict(state)
    for batch, again in zip(expected, (resumed.next_batch(weights=True) for _ in range(5))):
        assert all(torch.equal(a, b) for a, b in zip(batch, again))   # x, y and the loss weights
    if split == "val":
        assert r.epoch >= 1                                 # the test really crossed an epoch


def test_reader_epoch_visits_every_block_once(built):
    r = reader(built[0], split="val", batch_size=1, block_size=32)
    seen = [r._next_blocks(1)[0] for _ in range(r.n_blocks)]
    assert sorted(seen) == list(range(r.n_blocks)) and r.epoch == 1 and r.cursor == 0


def test_reader_ranks_split_the_global_batch(built):
    whole = reader(built[0], batch_size=4).next_batch(weights=True)
    parts = [reader(built[0], batch_size=2, rank=k, world_size=2).next_batch(weights=True) for k in (0, 1)]
    for i, tensor in enumerate(whole):                       # x, y and the loss weights
        assert torch.equal(torch.cat([p[i] for p in parts]), tensor)


def test_reader_memory_maps(built):
    before = pa.total_allocated_bytes()
    r = reader(built[0])
    assert pa.total_allocated_bytes() == before            # nothing copied into Arrow's memory pool
    assert not any(a.flags.owndata for a in [*r.arrays, *r.loss_weights])  # numpy views over the mapped files


def test_reader_refuses_foreign_state(built):
    state = reader(built[0]).state_dict() | {"tokenizer_sha256": "0" * 64}
    with pytest.raises(InputError, match="tokenizer_sha256"):
        reader(built[0]).load_state_dict(state)


def test_reader_weights_align_with_y(built):
    r, plain = reader(built[0]), reader(built[0])
    x, y, w = r.next_batch(weights=True)
    px, py = plain.next_batch()
    assert (x == px).all() and (y == py).all() and w.shape == y.shape and w.dtype == torch.float32
    for row, block in enumerate(r.last_blocks.tolist()):
        shard, start = r._locate(block)
        assert (w[row].numpy() == r.loss_weights[shard][start + 1:start + 65]).all()
        assert (y[row].numpy() == r.arrays[shard][start + 1:start + 65]).all()
    assert 0 < float(w.mean()) < 1


def test_a_batch_without_a_supervised_token_is_an_error(built):
    r = reader(built[0])
    _, _, w = r.next_batch(weights=True)
    r.check_supervised(w)
    where = r"^train batch \(row 0: \S+train/shard-\d{5}\.arrow tokens \d+\.\.\d+; .*: no supervised token"
    with pytest.raises(InputError, match=where) as e:
        r.check_supervised(torch.zeros_like(w))
    assert "\n" not in str(e.value)
