"""The chat format a run trains, evaluates and serves on: ours, or the pretrained model's own template.

Ingest stores every conversation in our grammar (format.py), whatever the model; this object decides what
the model sees. One is chosen per run (`chat.format`) and recorded beside the tokenizer (`chat_format.json`),
so every later stage, the bundle and the server read the same one:

- `ours` (from-scratch runs): our markers `<|user|> text`, stop markers, the template format.py renders.
- `model` (an instruct checkpoint with a chat template, e.g. SmolLM2's ChatML): conversations rendered by
  its Jinja template exactly as transformers' `apply_chat_template` renders them (the same renderer), the
  loss on each assistant turn as the template delimits it — from where the generation prompt ends to its
  end-of-turn token, included — and answers that stop on that token. A template is usable when, for every
  assistant turn, the conversation up to it plus the generation prompt is a prefix of the conversation
  through it, and the answer is followed by the end-of-turn token (`Template.delimit` checks a probe
  conversation when the tokenizer stage records it; anything else is refused in one line).

`encode` gives each document's ids (its separator last), loss weights (1 = trained on) and character
offsets; the shard, pack and eval stages all read documents through it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatpipe.tasks.chat.format import (
    CHAT_TEMPLATE,
    EOT,
    MARKERS,
    STOP_MARKERS,
    TURN_MARKERS,
    Turn,
    parse_lines,
    prompt,
    render,
)
from chatpipe.tasks.common.errors import InputError

FILE = "chat_format.json"  # beside tokenizer.json: which format, and a template's tokens
PROBE = (Turn("system", "Be brief."), Turn("user", "Hi!"), Turn("assistant", "Hello."),
         Turn("user", "2+2?"), Turn("assistant", "4"))


@dataclass(frozen=True)
class Encoded:
    """One document as the model sees it: its text, ids (separator last), loss weights and char offsets."""
    text: str
    ids: np.ndarray
    weights: np.ndarray
    offsets: list[tuple[int, int]] | None = None
    starts: dict[str, np.ndarray] | None = None  # a conversation's: where each user / assistant turn starts (token)


def _turns(text: str) -> tuple[Turn, ...]:
    """The one conversation a chat document holds (ingest validated it)."""
    parsed = list(parse_lines(enumerate(text.splitlines(), 1)))
    if len(parsed) != 1 or parsed[0].error:
        raise InputError(f"a chat document is not one valid conversation ({parsed[0].error if parsed else 'empty'}); "
                         f"rerun `chatpipe ingest`")
    return parsed[0].turns


class Ours:
    """Our markers. A chat document is stored as the model sees it; its weights come from the ids alone."""
    name = "ours"
    template = CHAT_TEMPLATE
    stop = STOP_MARKERS
    turn_markers = TURN_MARKERS
    separator = EOT
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}

    def __init__(self, tokenizer, record: dict | None = None) -> None:
        ids = {m: tokenizer.token_to_id(m) for m in (*MARKERS, EOT)}
        if None in ids.values():
            raise InputError(f"the tokenizer lacks the chat markers {[m for m, i in ids.items() if i is None]}; "
                             f"rerun `chatpipe tokenizer`")
        self.tokenizer, self.eot, self.assistant = tokenizer, ids[EOT], ids["<|assistant|>"]
        self.markers = np.array(list(ids.values()))
        self.openers = np.array([ids["<|system|>"], ids["<|user|>"]])
        self.role_ids = {role: ids[f"<|{role}|>"] for role in ("user", "assistant")}
        self.special_ids = self.markers

    def render(self, turns) -> str:
        return render(turns)

    def prompt(self, turns) -> str:
        return prompt(turns)

    def ends_on_answer(self, doc: Encoded) -> bool:
        """A conversation opens with a turn and its closing <|endoftext|> is supervised (it closes an answer)."""
        return bool(doc.weights[-1]) and doc.ids[0] in self.openers

    def encode(self, texts: list[str], chat: list[bool], offsets: bool = False) -> list[Encoded]:
        encode = self.tokenizer.encode_batch if offsets else self.tokenizer.encode_batch_fast
        out = []
        for text, is_chat, enc in zip(texts, chat, encode(texts, add_special_tokens=False)):
            ids = np.array([*enc.ids, self.eot], dtype=np.int64)
            weights = (loss_weights(ids, np.ones(len(ids), dtype=bool), self.assistant, self.markers) if is_chat
                       else np.ones(len(ids), dtype=np.uint8))
            starts = {role: np.flatnonzero(ids == i) for role, i in self.role_ids.items()} if is_chat else None
            out.append(Encoded(text, ids, weights, [*enc.offsets, (len(text), len(text))] if offsets else None, starts))
        return out


def loss_weights(ids: np.ndarray, chat: np.ndarray, assistant: int, markers: np.ndarray) -> np.ndarray:
    """Our format's per-token loss weights (uint8) of a stream of documents, each followed by <|endoftext|>.

    `chat[t]` says whether token t belongs to a chat document (its closing <|endoftext|> included);
    `markers` are the ids of every turn marker and <|endoftext|>. In chat, a token's role is the last
    marker at or before it; a text token weighs 1 in an assistant turn, a marker weighs 1 when it closes
    an assistant turn (so `<|assistant|>` itself, and markers after user or system text, weigh 0).
    """
    is_marker = np.isin(ids, markers)
    last = np.maximum.accumulate(np.where(is_marker, np.arange(len(ids)), -1))
    in_answer = (last >= 0) & (ids[np.maximum(last, 0)] == assistant)  # role of token t is the assistant's
    closes_answer = np.concatenate([[False], in_answer[:-1]])           # ... of token t-1
    return np.where(chat, np.where(is_marker, closes_answer, in_answer), True).astype(np.uint8)


class Template:
    """A checkpoint's own Jinja chat template (transformers' renderer) and its end-of-turn token."""
    name = "model"

    def __init__(self, tokenizer, record: dict) -> None:
        self.tokenizer, self.template = tokenizer, record["chat_template"]
        self.special = {k: v for k, v in record["special"].items() if v}
        self.end = record["end_of_turn"]
        self.stop = tuple(dict.fromkeys(t for t in (self.end, self.special.get("eos_token")) if t))
        self.separator = EOT if tokenizer.token_to_id(EOT) is not None else self.special["eos_token"]
        self.turn_markers = tuple(record["turn_markers"])
        self.special_ids = np.array(sorted({i for t, i in tokenizer.get_vocab().items()
                                            if t in set(self.turn_markers) | set(self.stop) | {self.separator}}))
        self.eot, self.end_id = tokenizer.token_to_id(self.separator), tokenizer.token_to_id(self.end)

    def _render(self, turns, generation_prompt: bool = False) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        messages = [{"role": t.role, "content": t.text} for t in turns]
        rendered, _ = render_jinja_template([messages], chat_template=self.template,
                                            add_generation_prompt=generation_prompt, **self.special)
        return rendered[0]

    def render(self, turns) -> str:
        return self._render(turns)

    def ends_on_answer(self, doc: Encoded) -> bool:
        """The last supervised token is the end-of-turn token, and only whitespace and the separator follow it."""
        last = np.flatnonzero(doc.weights)
        return bool(last.size) and doc.ids[last[-1]] == self.end_id and not \
            self.tokenizer.decode(doc.ids[last[-1] + 1:-1].tolist(), skip_special_tokens=False).strip()

    def prompt(self, turns) -> str:
        return self._render(turns, generation_prompt=True)

    def delimit(self, turns) -> tuple[str, list[tuple[int, int]], dict[str, list[int]]]:
        """The rendered conversation, each assistant answer's character span (its end-of-turn token included),
        and where each user and assistant turn starts (a character). One rendering, each turn's text found in it
        in order (`_find`); where that fails, the definition itself (`_delimit`: a rendering per turn)."""
        text = self.render(turns)
        return text, *(self._find(text, turns) or self._delimit(text, turns))

    def _find(self, text: str, turns) -> tuple[list[tuple[int, int]], dict[str, list[int]]] | None:
        """Each turn's text found in the rendering after the one before it: an answer from its first character
        through the next end-of-turn token, a turn starting at its opening marker (the first at 0). None when a
        turn's text is not found as it is (a template that rewrites it)."""
        cursor, spans, starts = 0, [], {"user": [], "assistant": []}
        for i, turn in enumerate(turns):
            at = text.find(turn.text, cursor)
            if at < 0 or (turn.role == "assistant" and (end := text.find(self.end, at + len(turn.text))) < 0):
                return None
            if turn.role in starts:
                starts[turn.role].append(max((text.rfind(m, cursor, at) for m in self.turn_markers), default=-1)
                                         if i else 0)
            if turn.role == "assistant":
                spans.append((at, end + len(self.end)))
            cursor = at + len(turn.text)
        return None if any(s < 0 for s in (*starts["user"], *starts["assistant"])) else (spans, starts)

    def _delimit(self, text: str, turns) -> tuple[list[tuple[int, int]], dict[str, list[int]]]:
        spans, starts = [], {"user": [], "assistant": []}
        for i, turn in enumerate(turns):
            if turn.role in starts:
                starts[turn.role].append(len(self.render(turns[:i])) if i else 0)
            if turn.role != "assistant":
                continue
            head, through = self.prompt(turns[:i]), self.render(turns[:i + 1])
            if not text.startswith(through) or not through.startswith(head):
                raise InputError("chat.format model: the chat template does not render a conversation as its "
                                 "prompts followed by their answers, so the answers cannot be delimited")
            end = through.rfind(self.end, len(head))
            if end < 0:
                raise InputError(f"chat.format model: the chat template does not end an answer with {self.end!r}")
            spans.append((len(head), end + len(self.end)))
        return spans, starts

    def encode(self, texts: list[str], chat: list[bool], offsets: bool = False) -> list[Encoded]:
        rendered = [self.delimit(_turns(t)) if c else (t, None, None) for t, c in zip(texts, chat)]
        out = []
        for (text, spans, starts), enc in zip(rendered, self.tokenizer.encode_batch([t for t, *_ in rendered],
                                                                                    add_special_tokens=False)):
            ids = np.array([*enc.ids, self.eot], dtype=np.int64)
            weights, first = np.ones(len(ids), dtype=np.uint8), None
            if spans is not None:
                begins, ends = np.array([a for a, _ in enc.offsets]), np.array([b for _, b in enc.offsets])
                inside = np.zeros(len(enc.ids), dtype=bool)
                for a, b in spans:
                    inside |= (ends > a) & (begins < b)
                weights = np.append(inside, False).astype(np.uint8)  # the separator follows a closed answer
                first = {role: np.searchsorted(begins, chars) for role, chars in starts.items()}
            out.append(Encoded(text, ids, weights, [*enc.offsets, (len(text), len(text))], first))
        return out


FORMATS = {"ours": Ours, "model": Template}


def template_record(chat_template: str | None, special: dict, tokenizer, source: str) -> dict:
    """What `chat.format: model` records for a tokenizer adopted from `source`, checked on a probe conversation."""
    if not chat_template:
        raise InputError(f"chat.format model: {source} has no chat template; use chat.format: ours")
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    probe = Template(tokenizer, {"chat_template": chat_template, "special": special, "end_of_turn": "",
                                 "turn_markers": []})
    answer_at = probe.prompt(PROBE[:2])
    after = probe.render(PROBE[:3])[len(answer_at) + len(PROBE[2].text):]
    end = next((t for t in sorted(specials, key=len, reverse=True) if after.startswith(t)), None)
    if end is None:
        raise InputError(f"chat.format model: {source}'s chat template ends an answer with {after[:20]!r}, "
                         f"not a special token, so the answers cannot be delimited")
    markers = sorted(t for t in specials if t in probe.render(PROBE) and t != end)
    record = {"format": "model", "chat_template": chat_template, "special": special, "end_of_turn": end,
              "turn_markers": markers}
    template = Template(tokenizer, record)
    text = template.render(PROBE)
    if template._find(text, PROBE) not in (None, template._delimit(text, PROBE)):
        raise InputError(f"chat.format model: {source}'s chat template renders a turn's text otherwise than it "
                         f"is, so the answers cannot be found in a conversation")
    return record


def load(tokenizer_dir: Path, tokenizer) -> Ours | Template:
    """The run's chat format, as the tokenizer stage recorded it (ours where nothing is recorded)."""
    path = Path(tokenizer_dir) / FILE
    record = json.loads(path.read_text()) if path.exists() else {"format": "ours"}
    return FORMATS[record["format"]](tokenizer, record)
