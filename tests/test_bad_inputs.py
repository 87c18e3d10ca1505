"""Bad input through the real CLI: one line naming what is wrong and a non-zero exit, or a counted skip.
Never a traceback, never a half-written output."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_project

CHATPIPE = str(Path(sys.executable).parent / "chatpipe")
ONLY_CHAT = ["-S", "ingest.sources.chitchat.enabled=false", "-S", "ingest.sources.stdlib.enabled=false",
             "-S", "ingest.sources.synthetic.enabled=false"]


def chatpipe(root, *args, prefix=()):
    return subprocess.run([*prefix, CHATPIPE, *args, "-C", str(root)], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("chatpipe: error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_no_output(root):
    assert not (root / "data" / "documents").exists()
    assert not (root / "metrics" / "ingest.json").exists()
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(".")]


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "proj")


def write_chat(root, data: bytes):
    (root / "data" / "chat_combined.txt").write_bytes(data)


@pytest.mark.parametrize("content, fragments", [
    (None, ["chat_combined.txt: no such file"]),
    (b"", ["chat_combined.txt: empty file"]),
    (b"\n  \n\n", ["chat_combined.txt: empty file"]),
    (b"<|user|> hi\n<|assistant|> ok\n<|user|> caf\xe9\n<|assistant|> x\n", ["chat_combined.txt:3: invalid UTF-8"]),
    (b"<|user|> hi\n<|assistant|> ok\n" + bytes(range(256)) * 4, ["chat_combined.txt:3: binary data"]),
])
def test_unreadable_chat_file_is_one_line_error(project, content, fragments):
    path = project / "data" / "chat_combined.txt"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    proc = chatpipe(project, "ingest", *ONLY_CHAT)
    assert_one_line_error(proc, *fragments)
    assert_no_output(project)


BAD_CONVERSATIONS = b"""<|user|> fine
<|assistant|> fine
<|endoftext|>
<|user|> unbalanced <|assistant
<|assistant|> x
<|endoftext|>
<|user|> hello
<|bot|> unknown marker
<|endoftext|>
<|user|> nobody answers
<|endoftext|>
"""


def test_invalid_conversations_are_counted_skips(project):
    write_chat(project, BAD_CONVERSATIONS)
    proc = chatpipe(project, "ingest", *ONLY_CHAT)
    assert proc.returncode == 0, proc.stderr
    chat = json.loads((project / "metrics" / "ingest.json").read_text())["sources"]["chat"]
    assert chat["kept"] == 1
    assert chat["skipped"] == {"invalid_conversation: unbalanced marker": 1,
                               "invalid_conversation: unknown marker": 1,
                               "invalid_conversation: no assistant turn": 1}
    assert any(":4 (unbalanced" in w for w in chat["skip_examples"]["invalid_conversation: unbalanced marker"])
    assert "skipped" in proc.stderr and "3 skipped" not in proc.stdout
    assert "skipped 3" in proc.stdout


def test_strict_mode_turns_a_skip_into_an_error(project):
    write_chat(project, BAD_CONVERSATIONS)
    proc = chatpipe(project, "ingest", *ONLY_CHAT, "-S", "ingest.strict=true")
    assert_one_line_error(proc, "chat_combined.txt:4", "unbalanced marker")
    assert_no_output(project)


def test_a_single_50mb_line_is_a_counted_skip(project):
    big = b"<|user|> " + b"a" * (50 << 20) + b"\n<|assistant|> ok\n<|endoftext|>\n"
    write_chat(project, b"<|user|> hi\n<|assistant|> hello\n<|endoftext|>\n" + big + b"x" * (50 << 20) + b"\n")
    proc = chatpipe(project, "ingest", *ONLY_CHAT)
    assert proc.returncode == 0, proc.stderr
    chat = json.loads((project / "metrics" / "ingest.json").read_text())["sources"]["chat"]
    assert chat["kept"] == 1
    assert chat["dropped"] == {"too_long": 1}                                  # the 50 MB user turn
    assert chat["skipped"] == {"invalid_conversation: text outside a turn": 1}  # the 50 MB junk line


def test_parquet_with_the_wrong_schema(project):
    pq.write_table(pa.table({"text": ["x"], "license": ["MIT"]}), project / "data" / "stack.parquet")
    proc = chatpipe(project, "ingest", *ONLY_CHAT, "-S", "ingest.sources.chat.enabled=false",
                    "-S", "ingest.sources.stack.enabled=true", "-S", "ingest.sources.stack.parquet=[data/stack.parquet]")
    assert_one_line_error(proc, "data/stack.parquet: not The Stack's schema: missing column(s) content, lang")
    assert_no_output(project)


def test_unreadable_directory(project):
    locked = project / "data" / "code" / "locked"
    locked.mkdir(parents=True)
    (locked / "x.py").write_text("X = 1\n")
    locked.chmod(0)
    # root reads anything: without the capabilities that bypass permission checks, it cannot
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root and util-linux setpriv is missing")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    try:
        proc = chatpipe(project, "ingest", *ONLY_CHAT, "-S", "ingest.sources.chat.enabled=false",
                        "-S", "ingest.sources.stdlib.enabled=true", "-S", "ingest.sources.stdlib.roots=[data/code]",
                        prefix=prefix)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(proc, "data/code/locked: cannot read directory (Permission denied)")
    assert_no_output(project)


def test_bad_param_on_the_command_line(project):
    proc = chatpipe(project, "ingest", "-S", "tokenizer.vocab_size=lots")
    assert_one_line_error(proc, "tokenizer.vocab_size")


def test_later_stage_without_inputs(project):
    assert_one_line_error(chatpipe(project, "tokenizer"), "run `chatpipe ingest` first")
    assert_one_line_error(chatpipe(project, "shard"), "run `chatpipe tokenizer` first")


def test_help_everywhere(project):
    for cmd in ([], ["ingest"], ["tokenizer"], ["shard"], ["params"]):
        proc = subprocess.run([CHATPIPE, *cmd, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "Usage" in proc.stdout


def test_a_pretrained_model_that_cannot_be_used_is_one_line(project, tmp_path):
    """A checkpoint without a chat template under chat.format: model, a GGUF file that is not one, a missing one."""
    from tests.train.test_pretrained import tokenizer_json

    (checkpoint := tmp_path / "no-template").mkdir()
    tokenizer_json(checkpoint)  # a tokenizer.json and nothing that says how to chat
    assert chatpipe(project, "ingest", *ONLY_CHAT).returncode == 0
    proc = chatpipe(project, "tokenizer", "-S", f"tokenizer.from=hf:{checkpoint}", "-S", "chat.format=model")
    assert_one_line_error(proc, f"hf:{checkpoint} has no chat template; use chat.format: ours")
    assert not (project / "artifacts" / "tokenizer").exists()
    (fake := tmp_path / "fake.gguf").write_bytes(b"GGUF" + bytes(64))  # the magic, then nothing whole
    for model in (f"gguf:{fake}", f"gguf:{tmp_path / 'missing.gguf'}"):
        proc = subprocess.run([CHATPIPE, "serve", "--model", model, "--port", "0"], capture_output=True, text=True,
                              timeout=300)
        assert_one_line_error(proc, f"--model {model}: ")
