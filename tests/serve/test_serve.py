"""The model server: a real uvicorn server on loopback, spoken to over HTTP like any OpenAI client would.

Most tests share one in-process server over the test bundle. Tests that need a generation to last (slots,
disconnects, concurrency, the context limit) use `endless`: the same weights with a 2,048-token context
and no stop markers, so an answer runs exactly as long as asked. One test runs the real `chatpipe serve`
command, one the real `chatpipe chat`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.decode import Decoder
from chatpipe.model.generate import generate
from chatpipe.model.transformer import KVCache, Transformer
from chatpipe.serve.app import create_app
from chatpipe.serve.auth import Keys
from chatpipe.serve.engine import Engine, Finish
from chatpipe.serve.sampling import Sampling
from chatpipe.serve.server import is_loopback, running
from chatpipe.serve.text import TextStream
from chatpipe.tasks.chat.format import Turn, prompt
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import InputError

from conftest import BUCKET, SECRET

CHATPIPE = str(Path(sys.executable).parent / "chatpipe")
HI = [{"role": "user", "content": "Hi! How are you?"}]


@pytest.fixture(scope="module")
def loaded(bundle_path):
    return bundle.load(bundle_path)


@pytest.fixture(scope="module")
def server(loaded):
    engine = Engine(loaded, max_concurrent=4)
    with running(create_app(engine)) as url:
        yield url
    engine.close()


@pytest.fixture(scope="module")
def endless(bundle_path, tmp_path_factory) -> Path:
    """The test model with a 2,048-token context and no stop markers."""
    tiny = bundle.load(bundle_path)
    model = Transformer(dataclasses.replace(tiny.config, block_size=2048))
    model.load_state_dict(tiny.model.state_dict())
    return bundle.write(tmp_path_factory.mktemp("endless") / "endless", model, bundle_path, "# endless\n",
                        generation={"stop": []})


def serving(path: Path, app_options: dict | None = None, **engine_options):
    """A real server over the bundle at `path`: create_app's options (limits) and the Engine's."""
    return running(create_app(Engine(bundle.load(path), **engine_options), **(app_options or {})))


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-test", "messages": HI, **body}, timeout=30)


def sse(lines) -> list:
    """The events of a server-sent event stream: parsed JSON, or the string "[DONE]"; checks the framing."""
    events, lines = [], list(lines)
    assert lines[-1] == "" or lines[-1].startswith("data:")
    for i, line in enumerate(lines):
        if i % 2:
            assert line == "", f"events are separated by a blank line, got {line!r}"
        else:
            assert line.startswith("data: ")
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream(url: str, path: str, body: dict) -> list:
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return sse(r.iter_lines())


def test_models_and_health(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "model": "tiny-test", "active": 0,
                                                      "max_concurrent": 4}
    models = httpx.get(f"{server}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-test"] and models["data"][0]["context_length"] == 64


def test_completion_is_the_models_own_generation(server, loaded):
    """Greedy text and token counts equal model.generate's on the tokenizer's ids of the prompt."""
    text = "def add(a, b):\n    return"
    r = httpx.post(f"{server}/v1/completions", json={"model": "tiny-test", "prompt": text, "temperature": 0,
                                                    "max_tokens": 30}).json()
    ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids
    tokens = generate(loaded.model, ids, 30, temperature=0, stop=loaded.stop_ids)
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert r["choices"][0]["text"] == loaded.tokenizer.decode(tokens, skip_special_tokens=False)
    assert r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(tokens),
                          "total_tokens": len(ids) + len(tokens)}
    assert r["choices"][0]["finish_reason"] == ("length" if len(tokens) == 30 else "stop")


def test_chat_answer_is_the_first_turn_of_the_generation(server, loaded):
    """The answer is the generated text up to where a turn ends (a stop marker, or '<|' / '|>'), stripped."""
    r = chat(server, temperature=0, max_tokens=40).json()
    ids = loaded.tokenizer.encode(prompt([Turn("user", HI[0]["content"])]), add_special_tokens=False).ids
    tokens = generate(loaded.model, ids, 40, temperature=0, stop=loaded.stop_ids)
    decode = lambda n: loaded.tokenizer.decode(tokens[:n], skip_special_tokens=False)
    used = next((n for n in range(1, len(tokens) + 1) if "<|" in decode(n) or "|>" in decode(n)), len(tokens))
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    assert r["choices"][0]["message"]["content"] == decode(used).split("<|")[0].split("|>")[0].strip()
    assert r["usage"]["prompt_tokens"] == len(ids) and r["usage"]["completion_tokens"] == used


def test_chat_stream_is_server_sent_events_of_the_same_answer(server):
    whole = chat(server, seed=5).json()
    events = stream(server, "/v1/chat/completions", {"model": "tiny-test", "messages": HI, "seed": 5,
                                                      "stream": True, "stream_options": {"include_usage": True}})
    *chunks, usage, done = events
    assert done == "[DONE]"
    assert {c["object"] for c in events[:-1]} == {"chat.completion.chunk"} and len({c["id"] for c in events[:-1]}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": whole["choices"][0]["finish_reason"]}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(chunks) > 3 and content == whole["choices"][0]["message"]["content"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_completion_stream_equals_the_whole_answer(server):
    body = {"model": "tiny-test", "prompt": "<|user|> What is your name?\n<|assistant|>", "seed": 3, "max_tokens": 25}
    whole = httpx.post(f"{server}/v1/completions", json=body).json()
    events = stream(server, "/v1/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]" and all(e["object"] == "text_completion" for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert "usage" not in events[-2]  # only with stream_options.include_usage


def test_same_seed_same_answer(server):
    answers = [chat(server, seed=s, max_tokens=20).json()["choices"][0]["message"]["content"] for s in (1, 1, 2, 3)]
    assert answers[0] == answers[1] and len(set(answers)) > 1


def test_stop_strings_cut_before_the_stop(endless):
    with serving(endless) as url:
        body = {"model": "endless", "prompt": "Once upon a time", "seed": 11, "max_tokens": 60}
        full = httpx.post(f"{url}/v1/completions", json=body).json()["choices"][0]["text"]
        stops = [full[20:24], full[30:32]]  # strings the answer is known to contain, across token boundaries
        cut = full[:min(full.find(s) for s in stops)]
        whole = httpx.post(f"{url}/v1/completions", json={**body, "stop": stops}).json()["choices"][0]
        events = stream(url, "/v1/completions", {**body, "stop": stops, "stream": True})
        pieces = [e["choices"][0]["text"] for e in events[:-1]]
        single = httpx.post(f"{url}/v1/completions", json={**body, "stop": stops[1]}).json()["choices"][0]
    assert whole == {"index": 0, "text": cut, "logprobs": None, "finish_reason": "stop"}
    assert "".join(pieces) == cut and not any(s in p for s in stops for p in pieces)
    assert single["text"] == full[:full.find(stops[1])]


def test_the_context_limit_ends_an_answer_with_length(endless, loaded):
    with serving(endless) as url:
        short = httpx.post(f"{url}/v1/completions", json={"model": "endless", "prompt": "abc", "max_tokens": 7}).json()
        words = "a b c d e f g h " * 400
        ids = loaded.tokenizer.encode(words, add_special_tokens=False).ids[:2040]
        text = loaded.tokenizer.decode(ids)
        assert len(loaded.tokenizer.encode(text, add_special_tokens=False).ids) == 2040
        long = httpx.post(f"{url}/v1/completions", json={"model": "endless", "prompt": text, "max_tokens": 100}).json()
    assert short["usage"]["completion_tokens"] == 7 and short["choices"][0]["finish_reason"] == "length"
    assert long["usage"] == {"prompt_tokens": 2040, "completion_tokens": 8, "total_tokens": 2048}
    assert long["choices"][0]["finish_reason"] == "length"


def test_a_long_chat_keeps_its_system_turn_and_last_exchanges(server, loaded):
    """Oldest exchanges are dropped until prompt + max_tokens fits the 64-token context."""
    system = {"role": "system", "content": "Be brief."}
    exchanges = [{"role": r, "content": f"{r[0]}{i}"} for i in range(12) for r in ("user", "assistant")]
    messages = [system, *exchanges, {"role": "user", "content": "and now?"}]
    turns = [Turn(m["role"], m["content"]) for m in messages]
    count = lambda ts: len(loaded.tokenizer.encode(prompt(ts), add_special_tokens=False).ids)
    kept = next([turns[0], *turns[i:]] for i in range(1, len(turns), 2) if count([turns[0], *turns[i:]]) + 20 <= 64)
    assert 2 < len(kept) < len(turns)
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "tiny-test", "messages": messages,
                                                          "max_tokens": 20, "seed": 0}).json()
    assert r["usage"]["prompt_tokens"] == count(kept)


def test_content_parts_and_max_completion_tokens(server):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi! How"}, {"type": "text", "text": " are you?"}]}]
    as_parts = chat(server, messages=parts, seed=4, max_completion_tokens=6).json()
    as_text = chat(server, seed=4, max_tokens=6).json()
    assert as_parts["choices"] == as_text["choices"] and as_parts["usage"]["completion_tokens"] <= 6


BAD_REQUESTS = [  # (body, status, param, code)
    (b"{not json", 400, None, None),
    (b'["a", "list"]', 400, None, None),
    ({"messages": HI}, 400, "model", None),
    ({"model": "tiny-test"}, 400, "messages", None),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ({"model": "tiny-test", "messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ({"model": "tiny-test", "messages": HI, "temperature": "hot"}, 400, "temperature", None),
    ({"model": "tiny-test", "messages": HI, "temperature": -1}, 400, "temperature", None),
    ({"model": "tiny-test", "messages": HI, "top_p": 0}, 400, "top_p", None),
    ({"model": "tiny-test", "messages": HI, "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": "tiny-test", "messages": HI, "max_tokens": 65}, 400, "max_tokens", "max_tokens_exceeded"),
    ({"model": "tiny-test", "messages": HI, "stream": "yes"}, 400, "stream", None),
    ({"model": "tiny-test", "messages": HI, "stop": ["ok", ""]}, 400, "stop", None),
    ({"model": "tiny-test", "messages": HI, "n": 2}, 400, "n", None),
    ({"model": "gpt-4", "messages": HI}, 404, "model", "model_not_found"),
    ({"model": "tiny-test", "messages": []}, 400, "messages", "invalid_conversation"),
    ({"model": "tiny-test", "messages": [{"role": "assistant", "content": "Hi"}]}, 400, "messages",
     "invalid_conversation"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "say <|system|>"}]}, 400, "messages",
     "invalid_conversation"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "word " * 100}]}, 400, "messages",
     "context_length_exceeded"),
]


@pytest.mark.parametrize("body, status, param, code", BAD_REQUESTS)
def test_bad_requests_get_openai_style_4xx(server, body, status, param, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server}/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code) and error["message"]
    assert (param or "") in error["message"] and "Traceback" not in error["message"]


@pytest.mark.parametrize("method, path, request_kwargs, status", [
    ("POST", "/v1/completions", {"json": {"model": "tiny-test", "prompt": ""}}, 400),
    ("POST", "/v1/completions", {"json": {"model": "tiny-test", "prompt": "x " * 80}}, 400),
    ("POST", "/v1/completions", {"json": {"model": "tiny-test", "prompt": ["a", "b"]}}, 400),
    ("POST", "/v1/completions", {"content": "not JSON, and no JSON content type"}, 400),
    ("GET", "/v1/chat/completions", {}, 405),
    ("GET", "/v2/nothing", {}, 404),
])
def test_other_bad_requests(server, method, path, request_kwargs, status):
    r = httpx.request(method, f"{server}{path}", **request_kwargs)
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_api_keys_from_env_and_file(loaded, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# ops keys\nfile-key-1\n\nfile-key-2\n")
    keys = Keys.configured(key_file, env={"CHATPIPE_API_KEYS": "env-key-a, env-key-b"})
    with running(create_app(Engine(loaded), keys)) as url:
        def status(key: str | None, path: str = "/v1/models") -> int:
            return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {}).status_code

        assert [status(k) for k in ("file-key-1", "file-key-2", "env-key-a", "env-key-b")] == [200] * 4
        assert [status(k) for k in (None, "file-key-3", "env-key-a,env-key-b", "# ops keys")] == [401] * 4
        assert status(None, "/health") == 200 and status(None, "/chat") == 200
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-test", "messages": HI},
                       headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "wrong" not in r.text


def test_a_key_file_without_keys_is_refused(tmp_path):
    (tmp_path / "empty").write_text("# no keys yet\n\n")
    with pytest.raises(InputError, match="holds no key"):
        Keys.configured(tmp_path / "empty", env={})
    with pytest.raises(InputError, match="cannot read it"):
        Keys.configured(tmp_path / "missing", env={})


def test_answers_are_not_held_back_by_delayed_acks(server):
    """A response's body goes out right after its headers (TCP_NODELAY), not once the client's delayed ACK of
    the headers arrives (~40 ms on Linux, on every request)."""
    with httpx.Client(base_url=server) as client:
        client.get("/health")
        times = []
        for _ in range(9):
            start = time.perf_counter()
            client.get("/health")
            times.append(time.perf_counter() - start)
    assert sorted(times)[4] < 0.02, times


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.7", "example.com"]))


async def _stream_timings(url: str, body: dict) -> tuple[float, float, int]:
    """(time of the first content, time of the end, number of chunks) of one streamed completion."""
    first, chunks = None, 0
    async with httpx.AsyncClient(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunks += 1
                first = first or time.monotonic()
    return first, time.monotonic(), chunks


def test_concurrent_streams_all_progress(endless):
    """Four clients at once: each one's first chunk arrives before any of them has finished."""
    with serving(endless, max_concurrent=4) as url:
        async def four():
            return await asyncio.gather(*(_stream_timings(url, {"model": "endless", "prompt": f"Story {i}:",
                                                                  "max_tokens": 300, "seed": i, "stream": True})
                                          for i in range(4)))
        timings = asyncio.run(four())
    assert max(first for first, _, _ in timings) < min(end for _, end, _ in timings)
    assert all(chunks > 50 for _, _, chunks in timings)


def test_one_slot_busy_then_freed_by_a_disconnect(endless):
    """With one slot: a second request waits, then gets 429; closing the first stream frees the slot at once."""
    long_answer = {"model": "endless", "prompt": "Once", "max_tokens": 2000, "stream": True}
    quick = {"model": "endless", "prompt": "Hello", "max_tokens": 5}
    with serving(endless, max_concurrent=1, queue_timeout=0.3) as url, httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{url}/v1/completions", json=long_answer) as r:
            lines = r.iter_lines()  # kept: dropping the iterator would close the stream
            assert next(line for line in lines if line.startswith("data: {"))
            start = time.monotonic()
            busy = client.post(f"{url}/v1/completions", json=quick)
            assert busy.status_code == 429 and time.monotonic() - start >= 0.3
            assert busy.json()["error"]["type"] == "rate_limit_error" and busy.headers["retry-after"] == "1"
            assert client.get(f"{url}/health").json()["active"] == 1
        # With one slot and a 0.3 s queue timeout, a 200 (not the 429 above) is the proof that closing the
        # stream freed its slot at once: had it kept generating its 2,000 tokens, this request would be refused.
        # (No wall-clock bound on top: it only measured how busy the machine was.)
        answered = client.post(f"{url}/v1/completions", json=quick)
        health = client.get(f"{url}/health").json()
    assert answered.status_code == 200, f"{answered.status_code}: the closed stream kept its slot (kept generating)"
    assert answered.json()["usage"]["completion_tokens"] == 5
    assert health["active"] == 0


async def _answer(engine: Engine, ids: list[int], sampling: Sampling, chat: bool = False) -> tuple[str, Finish]:
    """Engine.start's whole answer: the pieces joined and the Finish (raising what the generation raised)."""
    generation = await engine.start(ids, sampling, chat)
    events = [event async for batch in generation.batches() for event in batch]
    return "".join(events[:-1]), events[-1]


def test_batched_answers_equal_single_streams(endless):
    """Generations decoded together (prompts of different lengths, greedy and seeded sampling, joining and
    leaving the batch at different steps, more of them than slots) each equal their single-stream answer."""
    engine = Engine(bundle.load(endless), max_concurrent=3)
    texts = ["Once", "The quick brown fox jumps over the lazy dog and then", "a b c d e f g", "Hello, world!",
             "def add(a, b):\n    return a + b\n\nprint(", "Story 7:", "x" * 40]
    rows = [(engine.encode(text), Sampling(max_tokens=12 + 9 * i, temperature=0 if i % 3 == 0 else 0.9,
                                           top_p=(None, 0.9)[i % 2], top_k=(None, 40)[i % 3 == 2],
                                           seed=None if i % 3 == 0 else i, stop=("e t",) if i == 4 else ()),
             i == 5) for i, text in enumerate(texts)]

    widths, step_rows = [], engine.decoder.step_rows
    engine.decoder.step_rows = lambda tokens, *args: widths.append(len(tokens)) or step_rows(tokens, *args)

    async def together():
        first = [asyncio.create_task(_answer(engine, *row)) for row in rows[:2]]
        await asyncio.sleep(0.05)  # the others join a batch already under way, some waiting for a slot
        return await asyncio.gather(*first, *(_answer(engine, *row) for row in rows[2:]))

    try:
        batched = asyncio.run(together())
        assert engine.active == 0
    finally:
        engine.close()
    singles = [engine.complete(*row) for row in rows]
    assert batched == singles
    assert max(widths) == 3 and len({f.completion_tokens for _, f in singles}) > 3


def test_a_failure_fails_only_the_generations_it_touched(endless, monkeypatch):
    """A prompt the model cannot take fails its own generation; a failed decode step fails the batch it ran;
    the scheduler goes on serving."""
    engine = Engine(bundle.load(endless), max_concurrent=2)
    greedy = Sampling(max_tokens=20, temperature=0, top_p=None, top_k=None)
    ids = engine.encode("Once upon a time")
    step_rows = engine.decoder.step_rows

    def broken(*args):
        monkeypatch.setattr(engine.decoder, "step_rows", step_rows)  # fails once
        raise RuntimeError("device lost")

    async def run():
        too_long, fine = await asyncio.gather(_answer(engine, [1] * engine.context, greedy),
                                              _answer(engine, ids, greedy), return_exceptions=True)
        monkeypatch.setattr(engine.decoder, "step_rows", broken)
        failed = await asyncio.gather(_answer(engine, ids, greedy), return_exceptions=True)
        return too_long, fine, failed[0], await _answer(engine, ids, greedy)

    try:
        too_long, fine, failed, after = asyncio.run(run())
        assert engine.active == 0
    finally:
        engine.close()
    assert isinstance(too_long, ValueError) and isinstance(failed, RuntimeError)
    assert fine == after == engine.complete(ids, greedy)


TERNARY = {"quant": "ternary", "n_kv_heads": 2, "qk_norm": True}


def decoder_atol(shape: dict) -> float:
    """How close a decoder step's logits must be to Transformer.forward's (logits here are ~1).

    Float: the same products in another order, 1e-5. Ternary: the same, except where an activation sits within
    float rounding of an int8 rounding boundary, so the decoder's and the forward's quantizers round it apart by
    one level. Over 300 seeds of this test that happened in ~4% of them, moving logits by at most 6.6e-5; leaving
    out the decoder's activation quantization moved them by 2.1e-4 or more (weights in float: ~3e-2). So 1e-4."""
    return 1e-4 if shape.get("quant") else 1e-5


@pytest.mark.parametrize("shape", [{}, {"n_kv_heads": 2, "qk_norm": True}, {"tie_embeddings": True},
                                   {"moe": MoEConfig(n_experts=4, top_k=2, capacity_factor=0.5)}, TERNARY],
                         ids=["dense", "gqa-qknorm", "tied", "moe", "ternary"])
def test_decoder_steps_equal_the_models_forward(shape):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=32, multiple_of=16,
                                    **shape)).eval()
    idx = torch.randint(0, 64, (2, 20))
    with torch.inference_mode():
        full, _ = model(idx)
        cache = KVCache.for_model(model, batch_size=2)
        model(idx[:, :8], cache=cache)
        decoder = Decoder(model)
        steps = torch.stack([decoder.step(idx[:, t], cache) for t in range(8, 20)], dim=1)
    torch.testing.assert_close(steps, full[:, 8:], rtol=0, atol=decoder_atol(shape))


@pytest.mark.parametrize("shape", [{}, {"n_kv_heads": 2, "qk_norm": True},
                                   {"moe": MoEConfig(n_experts=4, top_k=2, capacity_factor=0.5)}, TERNARY],
                         ids=["dense", "gqa-qknorm", "moe", "ternary"])
def test_decoder_row_steps_at_their_own_positions_equal_the_models_forward(shape):
    """Rows of a pool at different lengths (prefilled alone) step together; each row's logits are its own forward's."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=32, multiple_of=16,
                                    **shape)).eval()
    idx, starts = torch.randint(0, 64, (3, 20)), [3, 11, 7]
    decoder = Decoder(model)
    with torch.inference_mode():
        pool = KVCache.for_model(model, batch_size=4)
        pool.k.normal_(0, 1e3)  # stale cache (an earlier row's) past a row's position must not leak into it
        pool.v.normal_(0, 1e3)
        for r, n in enumerate(starts):
            _, cache = decoder.prefill(idx[r, :n].tolist())
            pool.k[:, r, :, :n], pool.v[:, r, :, :n] = cache.k[:, 0, :, :n], cache.v[:, 0, :, :n]
        positions = torch.tensor(starts)
        for _ in range(6):
            logits = decoder.step_rows(idx[torch.arange(3), positions], positions, pool)
            for r, pos in enumerate(positions.tolist()):
                torch.testing.assert_close(logits[r], model(idx[r:r + 1, :pos + 1])[0][0, -1], rtol=0,
                                           atol=decoder_atol(shape))
            positions += 1


def test_decoder_tokens_equal_generate(loaded):
    ids = loaded.tokenizer.encode(prompt([Turn("user", "Hello!")]), add_special_tokens=False).ids
    decoder = Decoder(loaded.model)
    for sampling in ({"temperature": 0}, {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "seed": 3}):
        assert list(decoder.tokens(ids, 40, stop=loaded.stop_ids, **sampling)) == \
            generate(loaded.model, ids, 40, stop=loaded.stop_ids, **sampling)


def test_text_stream_is_utf8_safe_and_equals_decode(loaded):
    tokenizer = loaded.tokenizer
    text = "héllo 世界 🙂 naïve — ok"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    stream_ = TextStream(tokenizer)
    pieces = [stream_.push(i) for i in ids]
    assert "".join(pieces) + stream_.finish() == text
    assert "" in pieces and not any("\ufffd" in p for p in pieces)  # some tokens were half a character
    rng = random.Random(0)
    for _ in range(50):  # arbitrary ids, invalid UTF-8 included: the pieces still add up to decode()
        ids = [rng.randrange(tokenizer.get_vocab_size()) for _ in range(rng.randrange(1, 30))]
        stream_ = TextStream(tokenizer)
        pieces = [stream_.push(i) for i in ids]
        assert "".join(pieces) + stream_.finish() == tokenizer.decode(ids, skip_special_tokens=False)


def test_text_stream_holds_back_stop_prefixes_and_strips(loaded):
    tokenizer = loaded.tokenizer
    ids = lambda s: tokenizer.encode(s, add_special_tokens=False).ids
    held = TextStream(tokenizer, stop=["END"])
    pieces = [held.push(i) for i in ids("It is EN")]
    assert "".join(pieces) == "It is " and held.finish() == "EN"  # "EN" might have become "END"
    cut = TextStream(tokenizer, stop=["END"])
    assert "".join(cut.push(i) for i in ids("go ENDING")) == "go " and cut.stopped and cut.finish() == ""
    chat_answer = TextStream(tokenizer, strip=True)
    assert "".join(chat_answer.push(i) for i in ids("  Hello there \n")) + chat_answer.finish() == "Hello there"


def test_chatpipe_serve_command(bundle_path, tmp_path):
    """The real command: binds 127.0.0.1 only by default, prints its URLs, keys from a file and the env, bounds
    request bodies."""
    (tmp_path / "keys").write_text("file-secret-123\n")
    env = {**os.environ, "CHATPIPE_API_KEYS": "env-secret-456"}
    proc = subprocess.Popen([CHATPIPE, "serve", "--model", str(bundle_path), "--port", "0",
                             "--api-key-file", str(tmp_path / "keys"), "--max-request-bytes", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("serving tiny-test"), lines + [proc.stderr.read() if proc.poll() is not None else ""]
        api = lines[1].split("API: ")[1].split()[0]
        assert api.startswith("http://127.0.0.1:") and "keys required" in lines[1]
        base = api.removesuffix("/v1")
        assert lines[2].strip() == f"chat page: {base}/chat"
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):  # bound to 127.0.0.1, not to every address
            socket.create_connection(("127.0.0.2", port), timeout=5)
        ok = {"model": "tiny-test", "messages": HI, "max_tokens": 5}
        for key, status in (("file-secret-123", 200), ("env-secret-456", 200), ("nope", 401), (None, 401)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert httpx.post(f"{api}/chat/completions", json=ok, headers=headers, timeout=30).status_code == status
        big = httpx.post(f"{api}/chat/completions", json={**ok, "messages": [{"role": "user", "content": "x" * 4096}]},
                         headers={"Authorization": "Bearer file-secret-123"}, timeout=30)
        assert big.status_code == 413 and "limit of 4096 bytes" in big.json()["error"]["message"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.endswith("stopped\n") and "Traceback" not in err, err
    assert "secret" not in out + err


def test_chatpipe_serve_refuses_bad_options(bundle_path, tmp_path):
    r = subprocess.run([CHATPIPE, "serve", "--model", str(tmp_path), "--port", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a model bundle" in r.stderr


def test_chatpipe_chat_command(bundle_path, loaded):
    """Lines in, answers out: history kept, /reset forgets it, /exit quits."""
    engine = Engine(loaded)
    sampling = dataclasses.replace(engine.defaults(), seed=7, max_tokens=12)

    def answer(*exchange: str) -> str:
        turns = [Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(exchange)]
        ids = loaded.tokenizer.encode(prompt(turns), add_special_tokens=False).ids
        return engine.complete(ids, sampling, chat=True)[0]

    first = answer("Hello there")
    in_context = answer("Hello there", first, "What is your name?")
    fresh = answer("What is your name?")
    assert first and in_context != fresh  # so the output tells whether the history was used
    r = subprocess.run([CHATPIPE, "chat", "--model", str(bundle_path), "--seed", "7", "--max-tokens", "12"],
                       input="Hello there\nWhat is your name?\n/reset\nWhat is your name?\n/exit\nnever read\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{first}\n{in_context}\n{fresh}\n"


def test_chat_with_a_bundle_published_on_gcs(bundle_path, gcs_env, tmp_path):
    """`--model gs://...`: downloaded (verified) into the cache once, then served from there."""
    from chatpipe.tasks.publish import gcs

    uri = f"gs://{BUCKET}/served/tiny-test"
    gcs.upload(bundle_path, uri)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([CHATPIPE, "chat", "--model", uri, "--seed", "1", "--max-tokens", "8"], input="Hello\n",
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    cached = tmp_path / "cache" / "chat-pipeline" / "models" / BUCKET / "served" / "tiny-test"
    assert bundle.load(cached).name == "tiny-test" and SECRET not in r.stdout + r.stderr
