"""The request bodies the API accepts, as strict pydantic models (OpenAI's field names and meanings).

Strict: a string where a number belongs is an error, not a guess. Every string is `Text`: one that
cannot be UTF-8 (a lone surrogate, which JSON can spell as "\\ud800") is a 400 naming its field, where the
tokenizer would have failed on it. Fields OpenAI clients send that we do not implement (logprobs,
presence_penalty, ...) are ignored, as other OpenAI-compatible servers do; `user` and a message's `name`
are checked as text, then unused; `n` must be 1. Unset sampling fields take the bundle's
generation_config.json defaults.
"""
from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from chatpipe.serve.errors import APIError
from chatpipe.serve.sampling import Sampling

MAX_STOP_STRINGS = 4


def _unicode(text: str) -> str:
    """`text`, if it is valid Unicode (encodable as UTF-8, as the tokenizer needs)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"is not valid text: a lone UTF-16 surrogate (\\u{ord(text[e.start]):04x}) at character "
                         f"{e.start}") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)  # Python's json reads NaN, 1e999


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class Message(Strict):
    role: Text
    content: Text | list[TextPart]
    name: Text | None = None  # OpenAI's participant name: checked, unused

    def plain(self) -> dict:
        """{role, content} with the content parts joined into one string."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": content}


class StreamOptions(Strict):
    include_usage: bool = False


class GenerationRequest(Strict):
    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = Field(None, validate_default=True)  # a list once validated
    seed: int | None = Field(None, ge=-2**63, lt=2**64)  # what torch.Generator.manual_seed takes
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None  # OpenAI's end-user id: checked, unused

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported (got {n})")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str]:
        stop = [stop] if isinstance(stop, str) else stop or []
        if len(stop) > MAX_STOP_STRINGS or not all(stop):
            raise ValueError(f"up to {MAX_STOP_STRINGS} non-empty strings")
        return stop

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling(self, defaults: Sampling, max_tokens_limit: int) -> Sampling:
        """This request's sampling params: its own where set, else the bundle's defaults."""
        max_tokens = self.requested_max_tokens()
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise APIError(400, f"max_tokens: {max_tokens} is more than this server allows ({max_tokens_limit})",
                           param="max_tokens", code="max_tokens_exceeded")
        return Sampling(max_tokens=min(_or(max_tokens, defaults.max_tokens), max_tokens_limit),
                        temperature=_or(self.temperature, defaults.temperature),
                        top_p=_or(self.top_p, defaults.top_p), top_k=_or(self.top_k, defaults.top_k),
                        seed=self.seed, stop=tuple(self.stop))


def _or(value, default):
    return default if value is None else value


class ChatRequest(GenerationRequest):
    messages: list[Message]
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: Text


FIELDS = {name for model in (ChatRequest, CompletionRequest, Message, TextPart, StreamOptions)
          for name in model.model_fields}


def validation_error(errors: list[dict]) -> APIError:
    """A 400 naming the field of the most specific of pydantic's errors, e.g. `messages[0].content`.

    A location holds field names, list indexes and, inside a union, the member's type (`str`,
    `list[TextPart]`), which is not a field and is left out.
    """
    error = max(errors, key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        return APIError(400, f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})")
    if tuple(error["loc"]) == ("body",):
        return APIError(400, "the body must be a JSON object, sent with `Content-Type: application/json`")
    param = ""
    for part in error["loc"][1:]:  # [0] is "body"
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in FIELDS:
            param += f".{part}" if param else part
    message = "is required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
    return APIError(400, f"{param or 'the body'}: {message}", param=param or None)


def unreadable_body(cause: BaseException | None) -> APIError:
    """A 400 for a body FastAPI could not turn into JSON for a reason other than its syntax (`cause`: what
    json.loads raised), saying which."""
    if isinstance(cause, UnicodeDecodeError):
        why = f"byte {cause.object[cause.start]:#04x} at offset {cause.start} is not UTF-8"
    elif isinstance(cause, RecursionError):
        why = "nested too deeply"
    elif isinstance(cause, ValueError):
        why = f"a number of more than {sys.get_int_max_str_digits()} digits"
    else:
        why = "it cannot be read"
    return APIError(400, f"the body is not valid JSON ({why})")
