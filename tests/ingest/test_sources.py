import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chatpipe.tasks.common.config import HFSource, LocalCodeSource, TheStackSource
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.ingest.sources import READERS, Skips


def read(cfg):
    skips = Skips()
    return list(READERS[cfg.kind](cfg, skips)), skips


def stack_table(n=3, **overrides):
    cols = {
        "content": [f"def f{i}():\n    return {i}\n" for i in range(n)],
        "lang": ["Python"] * n,
        "max_stars_repo_licenses": [["MIT"], ["GPL-3.0"], []][:n],
        "max_stars_repo_path": [f"src/f{i}.py" for i in range(n)],
        "max_stars_repo_name": ["org/repo"] * n,
        "size": [10] * n,
    }
    cols.update(overrides)
    return pa.table(cols)


def test_hf_messages_and_text_columns(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "unanswered"}]},
    ]))
    docs, skips = read(HFSource(kind="hf", path="json", data_files=str(chat)))
    assert [d.text for d in docs] == ["<|user|> hi\n<|assistant|> hello\n"]
    assert skips.counts == {"invalid_conversation: no assistant turn": 1}

    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "plain document"}) + "\n" + json.dumps({"text": ""}) + "\n")
    docs, skips = read(HFSource(kind="hf", path="json", data_files=str(text)))
    assert [d.text for d in docs] == ["plain document"] and skips.counts == {"empty_text": 1}


def test_hf_without_usable_column(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(InputError, match="neither a 'messages' nor a 'text' column"):
        read(HFSource(kind="hf", path="json", data_files=str(f)))


def test_the_stack_local_parquet(tmp_path):
    pq.write_table(stack_table(), tmp_path / "a.parquet")
    docs, _ = read(TheStackSource(kind="the_stack", parquet=[str(tmp_path / "*.parquet")]))
    assert [d.meta["path"] for d in docs] == ["src/f0.py", "src/f1.py", "src/f2.py"]
    assert docs[0].meta == {"lang": "Python", "path": "src/f0.py", "repo": "org/repo", "licenses": ["MIT"]}


def test_the_stack_wrong_schema_and_not_parquet(tmp_path):
    pq.write_table(stack_table().drop(["lang", "max_stars_repo_licenses"]), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad.parquet: not The Stack's schema: missing column\(s\) lang, "
                                         r"max_stars_repo_licenses"):
        read(TheStackSource(kind="the_stack", parquet=[str(tmp_path / "bad.parquet")]))
    (tmp_path / "junk.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(InputError, match="junk.parquet: not a readable Parquet file"):
        read(TheStackSource(kind="the_stack", parquet=[str(tmp_path / "junk.parquet")]))
    with pytest.raises(InputError, match="no Parquet files match"):
        read(TheStackSource(kind="the_stack", parquet=[str(tmp_path / "none-*.parquet")]))


def test_the_stack_hub_offline_is_one_line_error():
    with pytest.raises(InputError) as e:
        read(TheStackSource(kind="the_stack"))
    assert "cannot open dataset 'bigcode/the-stack-dedup'" in str(e.value) and "\n" not in str(e.value)


def test_local_code_tree(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "site-packages").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("A = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("B = 2\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    (tmp_path / "pkg" / "site-packages" / "c.py").write_text("C = 3\n")
    (tmp_path / "pkg" / "latin.py").write_bytes("# caf\xe9\n".encode("latin-1"))
    docs, skips = read(LocalCodeSource(kind="local_code", roots=[str(tmp_path / "pkg")], license="MIT"))
    assert [d.meta["path"] for d in docs] == ["a.py", "sub/b.py"]
    assert docs[0].meta["licenses"] == ["MIT"] and docs[0].meta["repo"] == "pkg"
    assert skips.counts == {"not_utf8": 1}
    with pytest.raises(InputError, match="no such directory"):
        read(LocalCodeSource(kind="local_code", roots=[str(tmp_path / "missing")], license="MIT"))


def test_stdlib_root():
    docs, _ = read(LocalCodeSource(kind="local_code", roots=["stdlib"], license="psf-2.0", max_files=5))
    assert len(docs) == 5 and docs[0].meta["repo"].startswith("cpython-3.11")
