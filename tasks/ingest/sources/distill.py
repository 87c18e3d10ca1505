"""Distillation data: a teacher model's answers to our prompts, as chat-grammar conversations.

Sequence-level distillation: a bigger model behind any OpenAI-compatible endpoint answers prompts, and
each prompt with its answer becomes one document for the student to learn from. The prompts are
synthetic-code task descriptions (tasks/ingest/synthetic.py, drawn with a seed of their own, so they are not
the synthetic source's training functions), opening user turns of chitchat conversations, and the lines
of a file of your own. Asking is tasks/ingest/teacher_api.py's job (limits, retries, the cache, the key); here
the prompts are chosen and every answer is checked against the chat grammar. The answers are cached
per teacher in `<cache>/<model>-<sha256(base_url, model)[:12]>.jsonl` (teacher_api.cache_file).
"""
from __future__ import annotations

import functools
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from chatpipe.tasks.chat.format import Turn, reason, render, validate, validate_prompt
from chatpipe.tasks.common.config import DistillPrompts, DistillSource
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.redact import public_url
from chatpipe.tasks.ingest import synthetic, teacher_api
from chatpipe.tasks.ingest.sources.base import Doc, Skips, reader
from chatpipe.tasks.ingest.sources.chat import chitchat_turns

log = logging.getLogger("chatpipe.ingest")


def code_prompts(n: int, seed: int) -> list[str]:
    """Task descriptions of `n` synthetic functions, from a seed the synthetic source never uses."""
    return [sample.task for sample in synthetic.generate(n, f"distill-{seed}")]


def chat_prompts(n: int, seed: int) -> list[str]:
    """`n` distinct opening user turns of chitchat conversations, drawn by `seed` (all if fewer)."""
    openers = chitchat_openers() if n else ()
    if n > len(openers):
        log.warning("distill: %d chat prompts asked for; chitchat has %d distinct openers", n, len(openers))
    return random.Random(f"distill-chat-{seed}").sample(openers, min(n, len(openers)))


@functools.cache
def chitchat_openers() -> tuple[str, ...]:
    """The distinct first user turns of the chitchat corpus, in its order (read once per process)."""
    import chitchat_dataset

    data = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))
    firsts = (turns[0].text for conv in data.values() if (turns := chitchat_turns(conv["messages"])))
    return tuple(dict.fromkeys(firsts))


def file_prompts(path: Path) -> list[str]:
    """One prompt per line of a UTF-8 file; blank lines are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise InputError(f"{path}: cannot read the distill prompts ({why})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InputError(f"{path}: holds no prompt (one per line)")
    return prompts


def prompt_set(cfg: DistillPrompts) -> list[tuple[str, str]]:
    """(prompt, set name) for every distinct prompt: code, then chat, then file; the first set wins."""
    sets = {"code": code_prompts(cfg.code, cfg.seed), "chat": chat_prompts(cfg.chat, cfg.seed),
            "file": file_prompts(cfg.file) if cfg.file else []}
    seen: dict[str, str] = {}
    for name, prompts in sets.items():
        for prompt in prompts:
            seen.setdefault(prompt.strip(), name)
    return list(seen.items())


@reader("distill")
def read_distill(cfg: DistillSource, skips: Skips) -> Iterator[Doc]:
    system = [Turn("system", cfg.system)] if cfg.system else []
    if system and (error := validate_prompt([*system, Turn("user", "?")])):
        raise ConfigError(f"distill source: system: {error}")
    skipped: Counter[str] = Counter()

    def skip(why: str, prompt: str, detail: str) -> None:
        skipped[why] += 1
        skips.add(why, f"distill:{prompt[:60]!r} ({detail})")

    prompts = []
    for prompt, name in prompt_set(cfg.prompts):
        if error := validate_prompt([*system, Turn("user", prompt)]):
            skip(f"invalid_conversation: {reason(error)}", prompt, error)
        else:
            prompts.append((prompt, name))
    if not prompts and not skipped:
        raise ConfigError("distill source: no prompts; set prompts.code, prompts.chat or prompts.file")
    answers, stats = teacher_api.ask(cfg, [prompt for prompt, _ in prompts])
    meta = {"teacher": cfg.model, "base_url": public_url(cfg.base_url)}
    kept = 0
    for (prompt, name), answer in zip(prompts, answers):
        if isinstance(answer, teacher_api.Failure):
            skip(answer.reason, prompt, answer.detail)
            continue
        turns = [*system, Turn("user", prompt), Turn("assistant", answer.completion)]
        if not answer.completion.strip():
            skip("teacher_empty", prompt, f"empty answer, finish_reason {answer.finish_reason}")
        elif error := validate(turns):
            skip(f"invalid_conversation: {reason(error)}", prompt, error)
        else:
            kept += 1
            # no `cached` flag: a re-run must give the same documents (the data stages key on them)
            yield Doc(render(turns), {**meta, "prompt_set": name, "finish_reason": answer.finish_reason})
    log.info("distill: %d conversations from %s at %s; %s", kept, cfg.model, meta["base_url"],
             _summary(stats, skipped))


def _summary(stats: teacher_api.Stats, skipped: Counter[str]) -> str:
    counts = ", ".join(f"{why} {n}" for why, n in skipped.most_common())
    return (f"{stats.sent} requests sent ({stats.retries} retries), {stats.cached} answers cached; "
            f"skipped {sum(skipped.values())}" + (f" ({counts})" if counts else ""))
