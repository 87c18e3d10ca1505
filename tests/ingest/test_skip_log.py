"""Skipped records reach the log as one line per source and reason (count + first few examples), never
one line per record; the manifest keeps the full counts."""
import contextlib
import logging

from chatpipe.tasks.common.documents import load_manifest
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.ingest import ingest
from chatpipe.tasks.ingest.sources import Skips

from conftest import make_project, test_params

VALID = "<|user|> hello there\n<|assistant|> hi, how can I help?\n<|endoftext|>\n"
INVALID = {  # 200 invalid conversations of three kinds
    "invalid_conversation: unbalanced marker": ("<|user|> unbalanced {i} <|assistant\n<|assistant|> x\n<|endoftext|>\n", 90),
    "invalid_conversation: unknown marker": ("<|user|> hello {i}\n<|bot|> unknown marker\n<|endoftext|>\n", 70),
    "invalid_conversation: no assistant turn": ("<|user|> nobody answers {i}\n<|endoftext|>\n", 40),
}


def test_skips_are_logged_once_per_source_and_reason(tmp_path, caplog):
    root = make_project(tmp_path)
    conversations = [VALID] + [text.format(i=i) for text, n in INVALID.values() for i in range(n)]
    (root / "data" / "chat_combined.txt").write_text("".join(conversations))
    params = test_params("ingest.sources.stdlib.enabled=false", "ingest.sources.synthetic.enabled=false",
                         "ingest.sources.chitchat.max_conversations=300")
    caplog.set_level(logging.INFO, logger="chatpipe.ingest")
    with contextlib.chdir(root):
        ingest.run(params, Layout(root))

    sources = load_manifest(root / "data" / "documents")["sources"]
    assert sources["chat"]["skipped"] == {reason: n for reason, (_, n) in INVALID.items()}   # full counts
    assert all(len(ex) == Skips.EXAMPLES for ex in sources["chat"]["skip_examples"].values())
    assert sources["chitchat"]["skipped"]                                 # a second source with skips

    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    pairs = [(name, reason) for name, s in sources.items() for reason in s["skipped"]]
    assert len(lines) == len(pairs), "\n".join(lines)
    for name, reason in pairs:
        [line] = [ln for ln in lines if ln.startswith(f"{name}: ") and f"[{reason}]" in ln]
        assert f"skipped {sources[name]['skipped'][reason]:,} " in line
        examples = sources[name]["skip_examples"][reason]
        assert all(ex in line for ex in examples[:Skips.LOGGED])
        assert not any(ex in line for ex in examples[Skips.LOGGED:])
    assert all(r.levelno == logging.WARNING for r in caplog.records if "skipped" in r.getMessage())


def test_a_skip_without_a_location_is_summarised_by_its_count():
    skips = Skips()
    for _ in range(4):
        skips.add("empty_text")
    skips.add("not_utf8", "a.py")
    assert skips.summary("src") == ["src: skipped 4 [empty_text]", "src: skipped 1 [not_utf8], e.g. a.py"]
    assert dict(skips.examples) == {"not_utf8": ["a.py"]}   # the manifest gains no empty example lists
