"""`chatpipe serve --model gguf:smollm2-135m-instruct`: a real pretrained chat model served as it is, on its own
chat template, answers greedily exactly as transformers' `generate` does after `apply_chat_template`."""
from __future__ import annotations

import httpx
import pytest
import torch

from chatpipe.model import checkpoints
from chatpipe.serve.app import create_app
from chatpipe.serve.engine import Engine
from chatpipe.serve.server import running
from chatpipe.serve.source import open_bundle

pytestmark = pytest.mark.integration
SPEC = "gguf:smollm2-135m-instruct"
PROMPTS = ["Write a Python function that returns the sum of a list.", "What is the capital of France?",
           "Give me three tips for sleeping better.", "Hi! How are you today?", "What is 12 times 7?"]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def served():
    engine = Engine(open_bundle(SPEC, "cpu"), max_concurrent=2)
    try:
        with running(create_app(engine)) as url:
            yield engine, url
    finally:
        engine.close()


def test_the_gguf_model_is_served_on_its_own_template(served):
    engine, url = served
    assert engine.bundle.chat.name == "model" and engine.bundle.chat.stop == ("<|im_end|>",)
    assert engine.context == 8192 and engine.name == "SmolLM2-135M-Instruct.Q4_1"
    models = httpx.get(f"{url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [engine.name]


def test_greedy_answers_equal_transformers_generate_token_for_token(served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine, url = served
    path = checkpoints.resolve(SPEC)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ours_tok = engine.bundle.tokenizer  # transformers' conversion splits numbers otherwise than the file says
    for text in PROMPTS:  # (test_the_tokenizer_splits_as_llama_cpp_does): its template's text, our ids
        messages = [{"role": "user", "content": text}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([ours_tok.encode(prompt, add_special_tokens=False).ids])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=end,
                                 pad_token_id=end)[0, ids.shape[1]:].tolist()
        theirs = out[:out.index(end)] if end in out else out
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": engine.name, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] == ids.shape[1], text
        ours = body["choices"][0]["message"]["content"]
        assert ours == ours_tok.decode(theirs, skip_special_tokens=True).strip(), text
        assert body["usage"]["completion_tokens"] == len(theirs), text  # the stop token is not counted
        assert body["choices"][0]["finish_reason"] == ("stop" if end in out else "length")


def test_the_tokenizer_splits_as_llama_cpp_does(served):
    """SmolLM2's file names its pre-tokenizer "smollm" (each digit alone): our tokenizer splits as llama.cpp does
    on the file itself, on 1,000 strings of code, whitespace, digits and non-ASCII (transformers' conversion
    differs on 42 of them: it reads "2024" as one piece)."""
    import random

    from tests.publish.test_gguf_export import llama, strings

    engine, _ = served
    assert engine.bundle.tokenizer.encode("in 2024").tokens == ["in", "Ġ", "2", "0", "2", "4"]
    with llama(checkpoints.resolve(SPEC), vocab_only=True) as llm:
        differ = [s for s in strings(random.Random(0), 1000) if llm.tokenize(s.encode(), add_bos=False, special=True)
                  != engine.bundle.tokenizer.encode(s, add_special_tokens=False).ids]
    assert not differ, f"{len(differ)} of 1000 differ, e.g. {differ[:3]!r}"
