"""Asking a teacher model behind any OpenAI-compatible `POST /chat/completions`, politely and resumably.

Sequence-level distillation (the `distill` ingest source) sends thousands of prompts to someone else's
server. This client keeps at most `concurrency` requests in flight and starts at most `rate` a second;
it retries what may pass (connection errors, timeouts, HTTP 429 and 5xx, malformed answers) with
exponential backoff, a server's Retry-After winning, and turns what will not pass (other 4xx, retries
spent) into a counted failure instead of an error: one bad prompt never stops a run. Every answer is
appended to a JSONL cache as it arrives, so a killed run resumes where it stopped and a re-run sends no
request twice; failures are not cached, so a re-run asks again. The API key is read from the environment
and goes into the Authorization header only: never into a log, a failure's detail or the cache.
"""
from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import httpx
from tqdm import tqdm

from chatpipe.tasks.common.config import DistillSource
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.redact import public_url

log = logging.getLogger("chatpipe.ingest")

MAX_RETRY_AFTER_S = 60.0  # a server asking for a longer pause gets this one; the prompt is retried later
JITTER = 0.1              # backoff delays are stretched by up to 10% so retries do not arrive in step
DETAIL_CHARS = 200        # of a server's error message kept in a failure's detail


@dataclass(frozen=True)
class Answer:
    completion: str
    finish_reason: str | None
    cached: bool  # from the cache file, not from a request of this run


@dataclass(frozen=True)
class Failure:
    reason: str  # a skip reason: teacher_timeout, teacher_connect, teacher_malformed, teacher_http_<status>
    detail: str  # what the last try got, for the skip's examples (the key redacted)


@dataclass
class Stats:
    sent: int = 0     # HTTP requests made, retries included
    cached: int = 0   # prompts answered from the cache
    retries: int = 0  # requests that were retries
    skips: Counter[str] = field(default_factory=Counter)  # failed prompts by reason


def api_key(cfg: DistillSource) -> str | None:
    """The key in the environment variable `cfg.api_key_env` names; None when no variable is named."""
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(cfg.api_key_env, "").strip()
    if not key:
        raise ConfigError(f"distill source: environment variable {cfg.api_key_env} (api_key_env) is not set "
                          f"or empty; export the teacher's API key in it")
    return key


def cache_file(cfg: DistillSource) -> Path:
    """One cache file per teacher: <cache>/<model>-<sha256 of (base_url without userinfo, model)>.jsonl.

    The reader only sees its config, not the source's name in params, so the teacher names the file;
    each record's key also covers the messages and sampling params, so sources that share a teacher
    share its answers."""
    endpoint = f"{public_url(cfg.base_url).rstrip('/')}\n{cfg.model}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.model).strip("._")[:40] or "teacher"
    return Path(cfg.cache) / f"{slug}-{hashlib.sha256(endpoint.encode()).hexdigest()[:12]}.jsonl"


def messages(system: str | None, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def request_body(cfg: DistillSource, prompt: str) -> dict:
    """What is sent, and all that decides the answer: model, messages and sampling params."""
    return {"model": cfg.model, "messages": messages(cfg.system, prompt), "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature, "top_p": cfg.top_p}


def request_key(body: dict) -> str:
    """The cache key of a request: sha256 of its body as canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def ask(cfg: DistillSource, prompts: Sequence[str]) -> tuple[list[Answer | Failure], Stats]:
    """The teacher's answer to each prompt (with `cfg.system` first), in order, from the cache or asked."""
    _check_url(cfg.base_url)
    teacher = _Teacher(cfg, api_key(cfg))
    with Cache(cache_file(cfg)) as cache:
        return _run_async(teacher.ask_all(prompts, cache)), teacher.stats


# ---------------------------------------------------------------- the cache


class Cache:
    """Answers already had: one JSON record per line, appended and flushed as each one arrives.

    A line that does not parse (a run killed mid-write leaves a torn last line) is ignored on read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self._file = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        records = [_record(line) for line in data.splitlines() if line.strip()]
        self.records = {r["key"]: r for r in records if r is not None}
        if None in records:
            log.warning("distill cache %s: ignored %d unreadable line(s)", self.path, records.count(None))
        self._file = open(self.path, "ab")
        if data and not data.endswith(b"\n"):
            self._file.write(b"\n")  # end a torn line, so the next record starts on its own
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, record: dict) -> None:
        self.records[record["key"]] = record
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._file.flush()


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    whole = isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("key", "completion"))
    return record if whole else None


# ---------------------------------------------------------------- asking


class _Failed(Exception):
    """One try went wrong; `retry`: another try may do better."""

    def __init__(self, reason: str, detail: str, retry: bool, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry, self.retry_after = reason, detail, retry, retry_after


class _Pace:
    """At most `rate` starts a second: each start takes the next free 1/rate slot."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + self.interval
        await asyncio.sleep(start - now)


class _Teacher:
    def __init__(self, cfg: DistillSource, key: str | None):
        self.cfg, self.key = cfg, key
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.stats = Stats()

    async def ask_all(self, prompts: Sequence[str], cache: Cache) -> list[Answer | Failure]:
        keyed = [(request_key(body), body) for body in (request_body(self.cfg, p) for p in prompts)]
        got: dict[str, Answer | Failure] = {}
        for key, _ in keyed:
            if key not in got and (record := cache.get(key)):
                got[key] = Answer(record["completion"], record.get("finish_reason"), cached=True)
                self.stats.cached += 1
        todo = {key: m for key, m in keyed if key not in got}
        got |= await self._ask_many(todo, cache)
        return [got[key] for key, _ in keyed]

    async def _ask_many(self, todo: dict[str, list[dict]], cache: Cache) -> dict[str, Answer | Failure]:
        """Every request in `todo` (key → body) at once, within the limits; answers go to the cache."""
        got: dict[str, Answer | Failure] = {}
        slots, pace = asyncio.Semaphore(self.cfg.concurrency), _Pace(self.cfg.rate)
        limits = httpx.Limits(max_connections=self.cfg.concurrency)
        with tqdm(total=len(todo), desc="distill: asking the teacher", unit="prompt", leave=False,
                  disable=not todo) as bar:
            async with httpx.AsyncClient(timeout=self.cfg.timeout_s, limits=limits) as client:
                async def one(key: str, body: dict) -> None:
                    got[key] = result = await self._ask(client, slots, pace, body)
                    if isinstance(result, Answer):
                        cache.add({"key": key, "model": self.cfg.model, "prompt": body["messages"][-1]["content"],
                                   "completion": result.completion, "finish_reason": result.finish_reason})
                    else:
                        self.stats.skips[result.reason] += 1
                    bar.update()

                await asyncio.gather(*(one(key, body) for key, body in todo.items()))
        return got

    async def _ask(self, client: httpx.AsyncClient, slots: asyncio.Semaphore, pace: _Pace,
                   body: dict) -> Answer | Failure:
        """One prompt: the first try, then up to `retries` more while the failure may pass."""
        attempt = 1
        while True:
            try:
                async with slots:  # not held while backing off
                    await pace.wait()
                    self.stats.sent += 1
                    self.stats.retries += attempt > 1
                    return await self._try(client, body)
            except _Failed as e:
                if not e.retry or attempt > self.cfg.retries:
                    tries = f"{attempt} tr{'ies' if attempt > 1 else 'y'}"
                    return Failure(e.reason, self._redact(f"{e.detail}; {tries}"))
                await asyncio.sleep(self._delay(attempt, e.retry_after))
            attempt += 1

    async def _try(self, client: httpx.AsyncClient, body: dict) -> Answer:
        try:
            async with asyncio.timeout(self.cfg.timeout_s):  # the whole exchange, not each read
                response = await client.post(self.url, json=body, headers=self.headers)
        except (TimeoutError, httpx.TimeoutException):
            raise _Failed("teacher_timeout", f"no answer within {self.cfg.timeout_s:g} s", retry=True) from None
        except httpx.TransportError as e:  # refused, reset, closed mid-answer...
            raise _Failed("teacher_connect", f"{type(e).__name__}: {e}", retry=True) from None
        except httpx.RequestError as e:  # a body that cannot be decoded
            raise _Failed("teacher_malformed", f"{type(e).__name__}: {e}", retry=True) from None
        if not response.is_success:
            status = response.status_code
            retry_after = _retry_after(response) if status in (429, 503) else None
            raise _Failed(f"teacher_http_{status}", f"HTTP {status}: {_error_message(response)}",
                          retry=status == 429 or status >= 500, retry_after=retry_after)
        return _answer(response)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Before try attempt + 1: what the server asked for, else backoff_s doubled per try so far."""
        if retry_after is not None:
            return retry_after
        return self.cfg.backoff_s * 2 ** (attempt - 1) * (1 + random.uniform(0, JITTER))

    def _redact(self, text: str) -> str:
        return text.replace(self.key, "[api key]") if self.key else text


def _answer(response: httpx.Response) -> Answer:
    """choices[0].message.content of a chat completion; anything else is a malformed answer."""
    try:
        choice = response.json()["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, LookupError, TypeError) as e:
        detail = "not JSON" if isinstance(e, ValueError) else "no choices[0].message.content"
        raise _Failed("teacher_malformed", f"malformed answer: {detail}", retry=True) from None
    if not isinstance(content, str):
        raise _Failed("teacher_malformed", f"malformed answer: content is {type(content).__name__}, "
                                           f"not a string", retry=True)
    finish = choice.get("finish_reason")
    return Answer(content, finish if isinstance(finish, str) else None, cached=False)


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the body."""
    try:
        body = response.json()
        error = body.get("error", body.get("detail")) if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
    except ValueError:
        message = None
    text = message if isinstance(message, str) else response.text
    return " ".join(text.split())[:DETAIL_CHARS] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), capped at MAX_RETRY_AFTER_S."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"distill source: base_url {public_url(url)!r} is not an http(s) URL, "
                          f"e.g. http://127.0.0.1:8000/v1")


def _run_async(coro):
    """asyncio.run, also from a thread whose event loop is already running (then in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
