"""`chat.format: model` end to end: a tiny Llama GGUF with a ChatML template (tests/model/test_gguf.py writes it)
trained, judged, evaluated, published and served on its own template — no marker of ours anywhere."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import httpx
import numpy as np
import pyarrow as pa
import pytest

from chatpipe.tasks.chat.format import Turn, render
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.pipeline import PIPELINE
from tests.model.test_gguf import TEMPLATE, bpe, tiny_model, write_gguf  # noqa: F401 (bpe: a fixture)
from tests.train.test_pretrained import params

pytestmark = pytest.mark.integration
CONVERSATION = (Turn("user", "Hi there!"), Turn("assistant", "Hello! How are you?"),
                Turn("user", "Fine."), Turn("assistant", "Good."))


@pytest.fixture(scope="module")
def chatml(bpe, tmp_path_factory) -> str:  # noqa: F811
    path = tmp_path_factory.mktemp("chatml") / "tiny-chatml.gguf"
    write_gguf(path, tiny_model(bpe.get_vocab_size(), tied=True), bpe)
    return f"gguf:{path}"


def test_a_pretrained_model_trains_and_serves_on_its_own_template(built, chatml, tmp_path):
    from transformers import AutoTokenizer

    from chatpipe.serve.app import create_app
    from chatpipe.serve.engine import Engine
    from chatpipe.serve.server import running
    from chatpipe.tasks.common import bundle

    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "documents").symlink_to(built[0].documents.resolve())
    p = params(chatml, "chat.format=model", "distill.enabled=false", "train.precision=fp32", "publish.registry=null",
               "gate.max_loss=12", "sft.enabled=true", "sft.steps=4", "eval.humaneval.prompt=chat")
    layout, results = Layout(root), {}
    with contextlib.chdir(root):
        for stage in ("tokenizer", "shard", "pack", "pilot", "gate", "full", "sft", "eval", "publish"):
            results[stage] = PIPELINE[stage](p, layout)
            assert results[stage].ok, results[stage].summary

    # The tokenizer is the file's, nothing added; the format and its end-of-turn token are recorded beside it.
    assert results["tokenizer"].metrics["chat_format"] == "model" and results["tokenizer"].metrics["added_tokens"] == {}
    recorded = json.loads((layout.tokenizer / "chat_format.json").read_text())
    assert (recorded["end_of_turn"], recorded["turn_markers"], recorded["chat_template"]) == \
           ("<|im_end|>", ["<|im_start|>"], TEMPLATE)

    # Shards: every chat document rendered on the template, its answers (through <|im_end|>) the supervised part.
    tok = bundle.Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json"))
    shard = pa.ipc.open_file(str(layout.shards / "train" / "shard-00000.arrow")).read_all()
    ids, weights = shard.column("tokens").to_numpy(), shard.column("loss_weight").to_numpy()
    text = tok.decode(ids[:4000].tolist(), skip_special_tokens=False)
    assert "<|im_start|>user\n" in text and "<|user|>" not in text
    answers = tok.decode(ids[:4000][weights[:4000] == 1].tolist(), skip_special_tokens=False)
    assert "<|im_end|>" in answers and "<|im_start|>" not in answers.replace("<|im_end|><|im_start|>", "")

    # The pilot's samples and eval's chat prompts are on the template; eval measured assistant bits per byte.
    ev = results["eval"].metrics
    assert all(c["prompt"].startswith("<|im_start|>") and c["prompt"].endswith("<|im_start|>assistant\n")
               and "<|user|>" not in c["prompt"] for c in ev["chat"]) and ev["val_assistant_bpb"] > 0
    assert ev["humaneval"]["prompt"] == "chat"

    # Publish: the HF export renders conversations as we trained on them, and stops on <|im_end|>.
    dist = root / "dist" / p.publish.name
    hf = AutoTokenizer.from_pretrained(dist / "hf")
    messages = [{"role": t.role, "content": t.text} for t in CONVERSATION]
    ours = bundle.load(dist)
    assert hf.apply_chat_template(messages, tokenize=False) == ours.chat.render(CONVERSATION)
    generation = json.loads((dist / "hf" / "generation_config.json").read_text())
    assert tok.token_to_id("<|im_end|>") in np.atleast_1d(generation["eos_token_id"]).tolist()
    assert ours.generation["stop"] == ["<|im_end|>"]

    # Serve the bundle: a chat request is rendered on the template (its prompt tokens are the template's), and
    # llama.cpp answers from the published model.gguf (its template, its stop token) greedily as our server does.
    from tests.publish.test_gguf_export import llama

    assert results["publish"].metrics["gguf"]["type"] == "F16" and (dist / "model.gguf").is_file()
    engine = Engine(ours, max_concurrent=1)
    try:
        with running(create_app(engine)) as url, llama(dist / "model.gguf", n_ctx=64) as llm:
            for question in ("Hi there!", "How are you?", "Good morning."):
                asked = [{"role": "user", "content": question}]
                r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                    "model": p.publish.name, "messages": asked, "max_tokens": 8, "temperature": 0})
                assert r.status_code == 200
                prompt = ours.chat.prompt((Turn("user", question),))
                assert r.json()["usage"]["prompt_tokens"] == len(tok.encode(prompt, add_special_tokens=False).ids)
                theirs = llm.create_chat_completion(asked, max_tokens=8, temperature=0, top_k=1, repeat_penalty=1.0)
                assert theirs["usage"]["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
                assert theirs["choices"][0]["message"]["content"].strip() == r.json()["choices"][0]["message"]["content"]
    finally:
        engine.close()
    assert render(CONVERSATION[:1]) not in prompt


def test_chatpipe_chat_talks_to_a_gguf_file_as_it_is(chatml):
    """`chatpipe chat --model gguf:<file>`: the file served directly, no pipeline; one exchange, then exit."""
    out = subprocess.run([sys.executable, "-m", "chatpipe.cli", "chat", "--model", chatml, "--max-tokens", "5",
                          "--temperature", "0"], input="Hi there!\n", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
