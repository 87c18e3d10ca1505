"""The `distill` ingest source: a teacher's answers over real HTTP on loopback, no mocks.

The round trip asks the project's own server (serve/) and checks every document against a direct request.
Everything else talks to `FakeTeacher`, a real FastAPI app under uvicorn whose answers each test scripts
(failures, hangs, malformed bodies, 429s, slow answers) and which records what it was sent.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from chatpipe.model.transformer import Transformer
from chatpipe.serve.app import create_app
from chatpipe.serve.auth import Keys
from chatpipe.serve.engine import Engine
from chatpipe.serve.server import running
from chatpipe.tasks.chat.format import Turn, render
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.config import DistillPrompts, DistillSource
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.redact import public_url
from chatpipe.tasks.ingest import synthetic, teacher_api
from chatpipe.tasks.ingest.sources import READERS, Skips
from chatpipe.tasks.ingest.sources.chat import parse_file
from chatpipe.tasks.ingest.sources.distill import prompt_set

from conftest import SECRET

KEY_ENV = "DISTILL_TEST_TEACHER_KEY"
PROMPTS = ["What is a list?", "Name a color.", "Say hi.", "Count to three.", "Why is the sky blue?"]


# ---------------------------------------------------------------- a scripted teacher on loopback

def answer(text: str, finish_reason: str = "stop") -> JSONResponse:
    return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "model": "teacher-x", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}]})


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "error"}}, status_code=status, headers=headers)


async def echo(prompt: str, n: int, request: Request) -> Response:
    return answer(f"echo: {prompt}")


class FakeTeacher:
    """An OpenAI-compatible teacher whose `respond(prompt, n, request)` a test sets; n = 1 on a prompt's
    first try. It records every request: bodies, Authorization headers, start times, peak concurrency."""

    def __init__(self, respond=echo):
        self.respond = respond
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.starts: list[float] = []
        self.tries: Counter[str] = Counter()
        self.active = self.peak = 0
        self.url = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            self.bodies.append(body)
            self.auth.append(request.headers.get("authorization"))
            self.starts.append(time.monotonic())
            self.tries[prompt] += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                return await self.respond(prompt, self.tries[prompt], request)
            finally:
                self.active -= 1

        return app


@contextlib.contextmanager
def teacher(respond=echo):
    fake = FakeTeacher(respond)
    with running(fake.app()) as url:
        fake.url = f"{url}/v1"
        yield fake


def source(base_url: str, tmp_path, prompts=PROMPTS, **fields) -> DistillSource:
    """A distill source over `prompts` (a file, one per line) with test-sized retries and timeouts."""
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return DistillSource.model_validate({
        "kind": "distill", "base_url": base_url, "model": "teacher-x", "prompts": {"file": str(path)},
        "cache": str(tmp_path / "cache"), "retries": 2, "backoff_s": 0.01, "timeout_s": 0.5, **fields})


def read(cfg: DistillSource) -> tuple[list, Skips]:
    skips = Skips()
    return list(READERS["distill"](cfg, skips)), skips


def conversation(prompt: str, completion: str, system: str | None = None) -> str:
    system_turn = [Turn("system", system)] if system else []
    return render([*system_turn, Turn("user", prompt), Turn("assistant", completion)])


def user_turns(docs) -> list[str]:
    return [d.text.split("<|user|> ")[1].split("\n<|assistant|>")[0] for d in docs]


# ---------------------------------------------------------------- prompts


def test_prompt_sets_are_deterministic_distinct_and_not_the_training_functions(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("What is 2+2?\n\n   Say hi.  \nWhat is 2+2?\n", encoding="utf-8")
    cfg = DistillPrompts(code=4, chat=5, file=path, seed=1)
    got = prompt_set(cfg)
    assert got == prompt_set(cfg)
    assert [name for _, name in got] == ["code"] * 4 + ["chat"] * 5 + ["file"] * 2
    assert [p for p, _ in got][-2:] == ["What is 2+2?", "Say hi."]
    code = [p for p, name in got if name == "code"]
    assert all(p.startswith("Write a Python function `") and p.endswith(".") for p in code)
    assert set(code).isdisjoint(s.task for s in synthetic.generate(4, 1))  # the ingest source's seed
    assert prompt_set(DistillPrompts(code=4, chat=5, seed=2)) != got[:9]
    assert public_url("https://user:pw@api.example.com/v1") == "https://api.example.com/v1"


# ---------------------------------------------------------------- the project's own server as the teacher


@pytest.fixture(scope="module")
def own_server(bundle_path, tmp_path_factory):
    """`chatpipe serve` with an API key, on the test bundle's weights with a 256-token context (its own 64
    tokens refuse every code task description: they are 70 to 100 tokens long)."""
    tiny = bundle.load(bundle_path)
    model = Transformer(dataclasses.replace(tiny.config, block_size=256))
    model.load_state_dict(tiny.model.state_dict())
    longer = bundle.write(tmp_path_factory.mktemp("long") / "tiny-test", model, bundle_path, "# tiny-test\n")
    engine = Engine(bundle.load(longer), max_concurrent=4)
    with running(create_app(engine, keys=Keys([SECRET]))) as url:
        yield f"{url}/v1"
    engine.close()


@pytest.mark.integration
def test_round_trip_through_the_projects_own_server(own_server, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = DistillSource.model_validate({
        "kind": "distill", "base_url": own_server, "model": "tiny-test", "api_key_env": KEY_ENV,
        "prompts": {"code": 3, "chat": 3}, "system": "Be brief.", "max_tokens": 16, "concurrency": 1,
        "cache": str(tmp_path / "cache")})
    docs, skips = read(cfg)

    want_docs, want_skips = [], Counter()
    for prompt, name in prompt_set(cfg.prompts):
        r = httpx.post(f"{own_server}/chat/completions", headers={"Authorization": f"Bearer {SECRET}"}, json={
            "model": "tiny-test", "max_tokens": 16, "temperature": 0, "top_p": 1, "messages": [
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]}, timeout=30)
        if r.status_code != 200:
            want_skips[f"teacher_http_{r.status_code}"] += 1
        elif not (content := r.json()["choices"][0]["message"]["content"]).strip():
            want_skips["teacher_empty"] += 1
        else:
            want_docs.append((conversation(prompt, content, "Be brief."), name,
                              r.json()["choices"][0]["finish_reason"]))
    assert len(want_docs) >= 3, (want_docs, want_skips)
    assert [(d.text, d.meta["prompt_set"], d.meta["finish_reason"]) for d in docs] == want_docs
    assert skips.counts == want_skips
    assert {(d.meta["teacher"], d.meta["base_url"]) for d in docs} == {("tiny-test", own_server)}
    for doc in docs:  # each one a valid chat-grammar conversation
        path = tmp_path / "doc.txt"
        path.write_text(doc.text, encoding="utf-8")
        [parsed] = parse_file(path)
        assert parsed.error is None and [t.role for t in parsed.turns] == ["system", "user", "assistant"]
    cached = teacher_api.cache_file(cfg).read_text(encoding="utf-8")
    assert len(cached.splitlines()) == len(docs) + want_skips["teacher_empty"]
    assert SECRET not in cached and SECRET not in caplog.text
    assert f"distill: {len(docs)} conversations from tiny-test" in caplog.text


def test_the_key_is_sent_as_a_bearer_and_a_401_is_not_retried(own_server, tmp_path):
    """The real server checks the key: without it every prompt is one request and a counted skip."""
    docs, skips = read(source(own_server, tmp_path, ["Hi!", "Hello?"], model="tiny-test"))
    assert docs == [] and skips.counts == {"teacher_http_401": 2}
    assert "missing API key" in skips.examples["teacher_http_401"][0]
    assert "1 try" in skips.examples["teacher_http_401"][0]


# ---------------------------------------------------------------- the cache


def test_a_second_read_sends_nothing_and_yields_the_same_documents(tmp_path):
    with teacher() as fake:
        userinfo = fake.url.replace("http://", "http://someone:pw@")
        cfg = source(userinfo, tmp_path, [*PROMPTS, PROMPTS[0]], system="Answer in one line.")
        first, _ = read(cfg)
        assert len(fake.bodies) == 5 and all(b["messages"][0]["role"] == "system" for b in fake.bodies)
        second, skips = read(cfg)
        assert len(fake.bodies) == 5 and not skips.counts
    assert [d.text for d in first] == [conversation(p, f"echo: {p}", "Answer in one line.") for p in PROMPTS]
    assert [d.text for d in second] == [d.text for d in first]
    assert [d.meta for d in second] == [d.meta for d in first]  # the same documents: the data stages key on them
    assert first[0].meta == {"teacher": "teacher-x", "base_url": fake.url, "prompt_set": "file",
                             "finish_reason": "stop"}
    records = [json.loads(line) for line in teacher_api.cache_file(cfg).read_text().splitlines()]
    assert {r["prompt"] for r in records} == set(PROMPTS) and "pw" not in teacher_api.cache_file(cfg).name
    assert set(records[0]) == {"key", "model", "prompt", "completion", "finish_reason"}


def test_a_killed_run_resumes_with_the_missing_prompts_only(tmp_path, caplog):
    with teacher() as fake:
        cfg = source(fake.url, tmp_path)
        full, _ = read(cfg)
        path = teacher_api.cache_file(cfg)
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:2]) + lines[2][:30])  # two records, then a line torn mid-write
        kept = {json.loads(line)["prompt"] for line in lines[:2]}
        resumed, skips = read(cfg)
        assert sorted(b["messages"][-1]["content"] for b in fake.bodies[5:]) == sorted(set(PROMPTS) - kept)
        again, _ = read(cfg)
        assert len(fake.bodies) == 8
    assert [d.text for d in resumed] == [d.text for d in again] == [d.text for d in full]
    assert not skips.counts
    assert "ignored 1 unreadable line" in caplog.text
    readable = [line for line in path.read_text().splitlines() if line.startswith("{") and line.endswith("}")]
    assert len(readable) == 5  # the torn line was ended: every new record is on a line of its own


# ---------------------------------------------------------------- a misbehaving teacher


def test_a_500_is_retried_and_the_answer_kept(tmp_path):
    async def flaky(prompt, n, request):
        return error(500, "hiccup") if n == 1 else answer(f"echo: {prompt}")

    with teacher(flaky) as fake:
        answers, stats = teacher_api.ask(source(fake.url, tmp_path), ["a", "b"])
    assert [a.completion for a in answers] == ["echo: a", "echo: b"]
    assert (stats.sent, stats.retries, stats.cached, stats.skips) == (4, 2, 0, Counter())


def test_a_prompt_that_always_fails_is_a_counted_skip_and_asked_again_next_run(tmp_path, caplog):
    async def broken(prompt, n, request):
        return error(500, "the teacher fell over") if prompt == "bad" else answer(f"echo: {prompt}")

    caplog.set_level(logging.INFO)
    with teacher(broken) as fake:
        cfg = source(fake.url, tmp_path, ["good 1", "bad", "good 2"])
        docs, skips = read(cfg)
        assert user_turns(docs) == ["good 1", "good 2"] and fake.tries["bad"] == 3
        assert skips.counts == {"teacher_http_500": 1}
        assert "HTTP 500: the teacher fell over; 3 tries" in skips.examples["teacher_http_500"][0]
        assert "5 requests sent (2 retries), 0 answers cached; skipped 1 (teacher_http_500 1)" in caplog.text
        fake.respond = echo  # fixed: the failure was not cached, so the next run asks again
        docs, skips = read(cfg)
    assert user_turns(docs) == ["good 1", "bad", "good 2"] and not skips.counts
    assert fake.tries == {"good 1": 1, "bad": 4, "good 2": 1}


def test_a_teacher_that_hangs_times_out(tmp_path):
    async def hang(prompt, n, request):
        for _ in range(150):  # until the client gives up (at most 3 s)
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.02)
        return answer("too late")

    with teacher(hang) as fake:
        start = time.monotonic()
        answers, stats = teacher_api.ask(source(fake.url, tmp_path, timeout_s=0.3, retries=1), ["slow"])
        elapsed = time.monotonic() - start
    assert answers[0].reason == "teacher_timeout" and "no answer within 0.3 s; 2 tries" == answers[0].detail
    assert (stats.sent, stats.retries, stats.skips) == (2, 1, Counter({"teacher_timeout": 1}))
    assert 0.6 <= elapsed < 3


@pytest.mark.parametrize("body", [b"not json {", b'{"id": "x"}', b'{"choices": []}', b"[1, 2]",
                                  b'{"choices": [{"message": {"role": "assistant", "content": null}}]}'])
def test_malformed_answers_are_retried_then_skipped(tmp_path, body):
    async def garbage(prompt, n, request):
        return Response(body, media_type="application/json")

    with teacher(garbage) as fake:
        answers, stats = teacher_api.ask(source(fake.url, tmp_path), ["q"])
    assert answers[0].reason == "teacher_malformed" and answers[0].detail.startswith("malformed answer")
    assert (stats.sent, stats.retries, fake.tries["q"]) == (3, 2, 3)
    assert not teacher_api.cache_file(source(fake.url, tmp_path)).read_text()


def test_answers_that_break_the_chat_grammar_are_counted_skips(tmp_path):
    async def odd(prompt, n, request):
        return answer({"empty": "  ", "marker": "sure <|user|> and more"}.get(prompt, f"echo: {prompt}"))

    with teacher(odd) as fake:
        docs, skips = read(source(fake.url, tmp_path, ["empty", "marker", "fine", "<|system|> injected"]))
    assert user_turns(docs) == ["fine"]
    assert skips.counts == {"teacher_empty": 1, "invalid_conversation: marker inside turn text": 2}
    assert fake.tries == {"empty": 1, "marker": 1, "fine": 1}  # an invalid prompt is never sent


def test_a_429_waits_as_long_as_retry_after_says(tmp_path):
    async def busy(prompt, n, request):
        return error(429, "slow down", {"Retry-After": "1"}) if n == 1 else answer(f"echo: {prompt}")

    with teacher(busy) as fake:
        answers, stats = teacher_api.ask(source(fake.url, tmp_path, backoff_s=0.01), ["q"])
    assert answers[0].completion == "echo: q" and (stats.sent, stats.retries) == (2, 1)
    assert fake.starts[1] - fake.starts[0] >= 0.95


def test_a_closed_port_is_a_connection_failure(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    answers, stats = teacher_api.ask(source(f"http://127.0.0.1:{port}/v1", tmp_path, retries=1), ["q"])
    assert answers[0].reason == "teacher_connect" and "ConnectError" in answers[0].detail
    assert (stats.sent, stats.retries) == (2, 1)


def test_a_4xx_is_not_retried_and_the_key_never_shows(tmp_path, monkeypatch, caplog):
    async def deny(prompt, n, request):  # a careless server that echoes the credentials it got
        return error(401, f"incorrect API key: {request.headers.get('authorization')}")

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    with teacher(deny) as fake:
        docs, skips = read(source(fake.url, tmp_path, ["q1", "q2"], api_key_env=KEY_ENV))
    assert fake.auth == [f"Bearer {SECRET}"] * 2 and fake.tries == {"q1": 1, "q2": 1}
    assert docs == [] and skips.counts == {"teacher_http_401": 2}
    example = skips.examples["teacher_http_401"][0]
    assert "incorrect API key: Bearer [api key]; 1 try" in example
    assert SECRET not in caplog.text and SECRET not in json.dumps(skips.examples)


def test_a_missing_key_variable_is_a_config_error_naming_it(tmp_path, monkeypatch):
    for value in (None, "  "):
        if value is None:
            monkeypatch.delenv(KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(KEY_ENV, value)
        with pytest.raises(ConfigError, match=KEY_ENV):
            read(source("http://127.0.0.1:9/v1", tmp_path, api_key_env=KEY_ENV))


# ---------------------------------------------------------------- limits


def test_no_more_than_concurrency_requests_in_flight(tmp_path):
    async def slow(prompt, n, request):
        await asyncio.sleep(0.1)
        return answer(f"echo: {prompt}")

    prompts = [f"question {i}" for i in range(8)]
    with teacher(slow) as fake:
        docs, _ = read(source(fake.url, tmp_path, prompts, concurrency=2))
    assert user_turns(docs) == prompts and fake.peak == 2


def test_the_rate_limit_spaces_request_starts(tmp_path):
    prompts = [f"question {i}" for i in range(6)]
    with teacher() as fake:
        docs, _ = read(source(fake.url, tmp_path, prompts, rate=20, concurrency=6))
    assert len(docs) == 6 and fake.starts[-1] - fake.starts[0] >= 0.8 * 5 / 20


# ---------------------------------------------------------------- through the data stages


def test_ingest_keeps_the_teachers_answers_as_the_distill_source_with_the_teacher_in_the_lineage(tmp_path):
    """`chatpipe ingest` with only a distill source: its documents, the manifest, and lineage.documents."""
    from chatpipe.tasks.common.layout import Layout
    from chatpipe.tasks.ingest import ingest
    from chatpipe.tasks.publish import lineage

    from conftest import make_project, test_params

    root = make_project(tmp_path / "proj")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    with teacher() as fake, contextlib.chdir(root):
        off = [f"ingest.sources.{name}.enabled=false" for name in ("chat", "chitchat", "stdlib", "synthetic")]
        params = test_params(*off, "ingest.sources.distill.enabled=true", f"ingest.sources.distill.base_url={fake.url}",
                             "ingest.sources.distill.model=teacher-x", "ingest.sources.distill.api_key_env=null",
                             "ingest.sources.distill.prompts={file: prompts.txt}", "ingest.clean.min_chars=1")
        result = ingest.run(params, Layout(root))
        assert len(fake.bodies) == 5
        assert ingest.run(params, Layout(root)).metrics["fingerprint"] == result.metrics["fingerprint"]
        assert len(fake.bodies) == 5                                   # the re-run came from the cache
    assert result.metrics["sources"]["distill"]["kept"] == 5
    docs = lineage.documents(Layout(root))
    assert docs["sources"]["distill"] == {"kind": "distill", "documents": 5, "read": 5, "teacher": "teacher-x",
                                          "teacher_url": fake.url}
