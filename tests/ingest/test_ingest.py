import contextlib
import hashlib
import json

import pyarrow.parquet as pq
import pytest

from chatpipe.tasks.common.documents import SCHEMA, load_manifest, parts
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.ingest import ingest
from chatpipe.tasks.ingest.sources import READERS, Doc

from conftest import make_project, test_params


def test_documents_contract(built):
    layout, _, results = built
    manifest = load_manifest(layout.documents)
    assert set(manifest["sources"]) == {"chat", "chitchat", "stdlib", "synthetic"}
    ids = []
    for path in parts(layout.documents):
        table = pq.read_table(path)
        assert table.schema == SCHEMA
        for row in table.to_pylist():
            assert row["id"] == hashlib.sha256(row["text"].encode()).hexdigest()
            assert row["source"] == path.parent.name
            json.loads(row["meta"])
            ids.append(row["id"])
    assert len(ids) == len(set(ids)) == manifest["totals"]["documents"]
    assert results["ingest"].summary.startswith(f"ingest: {len(ids):,} documents")


def test_every_document_read_is_accounted_for(built):
    layout, _, _ = built
    metrics = json.loads(layout.metrics("ingest").read_text())
    for name, s in metrics["sources"].items():
        assert s["read"] == s["kept"] + sum(s["dropped"].values()), name
        assert s["kept"] > 0, name
    chitchat = metrics["sources"]["chitchat"]
    assert chitchat["read"] + sum(chitchat["skipped"].values()) == 1200    # max_conversations
    assert chitchat["skipped"]["invalid_conversation: no reply"] > 0       # one-speaker dialogues
    assert metrics["sources"]["chat"]["kept"] == 8                          # the sample file's 8 dialogues


def test_chat_documents_keep_their_markers(built):
    layout, _, _ = built
    text = pq.read_table(layout.documents / "chat" / "part-00000.parquet").column("text")[0].as_py()
    assert text.startswith("<|system|> You are a helpful") and "\n<|assistant|> " in text


def test_interrupted_ingest_leaves_previous_output_intact(tmp_path, monkeypatch):
    root = make_project(tmp_path)
    params = test_params("ingest.sources.stdlib.enabled=false", "ingest.sources.synthetic.enabled=false",
                         "ingest.sources.chitchat.max_conversations=50")
    with contextlib.chdir(root):
        ingest.run(params, Layout(root))
        before = sorted(p.name for p in (root / "data" / "documents").rglob("*"))

        def dies(cfg, skips):
            yield Doc("<|user|> a first document\n<|assistant|> fine\n", {})
            raise KeyboardInterrupt

        monkeypatch.setitem(READERS, "chitchat", dies)
        with pytest.raises(KeyboardInterrupt):
            ingest.run(params, Layout(root))
    assert sorted(p.name for p in (root / "data" / "documents").rglob("*")) == before
    assert [p.name for p in (root / "data").iterdir() if p.name.startswith(".")] == []   # no temp dirs


def test_fingerprint_is_recorded_downstream(built):
    layout, _, _ = built
    fp = load_manifest(layout.documents)["fingerprint"]
    assert len(fp) == 64
    assert json.loads(layout.metrics("tokenizer").read_text())["documents_fingerprint"] == fp
    assert json.loads((layout.shards / "manifest.json").read_text())["documents_fingerprint"] == fp


def test_ingest_is_deterministic(tmp_path):
    params = test_params("ingest.sources.chitchat.max_conversations=200", "ingest.sources.stdlib.max_files=10",
                         "ingest.sources.synthetic.n=40")
    prints = []
    for run_dir in ("a", "b"):
        root = make_project(tmp_path / run_dir)
        with contextlib.chdir(root):
            ingest.run(params, Layout(root))
        prints.append(load_manifest(root / "data" / "documents")["fingerprint"])
    assert prints[0] == prints[1]
