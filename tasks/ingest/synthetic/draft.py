"""The machinery the synthetic-code families share.

``Sample`` and ``FAMILIES``; the ``_Draft`` a family op returns (name, parameters, body,
a reference implementation and an argument drawer); the ``_op`` decorator and the
``_OPS`` registry it fills, per family, in registration order; the rendering of a draft
into a ``Sample`` (signature, docstring in one of several styles, test cases, the task
in words); and the small vocabularies the ops draw from (words, number words, names,
integer lists).  It imports no family module and not the package, so the families can
import it without a cycle.
"""

from __future__ import annotations

import copy
import random
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

FAMILIES: tuple[str, ...] = (
    "arithmetic", "strings", "lists", "dicts", "recursion", "sorting", "math", "conditionals",
)


@dataclass(frozen=True)
class Sample:
    family: str
    name: str  # function name
    code: str  # the function source with a docstring (the document text that is kept)
    tests: str  # assert-based tests that call the function
    task: str  # the function asked for in words: "Write a Python function `f(x: int) -> int`: ..."

    @property
    def program(self) -> str:
        return self.code + "\n\n" + self.tests + "\n"


# ---------------------------------------------------------------- rendering


@dataclass
class _Draft:
    name: str
    params: list[tuple[str, str]]  # (name, annotation); defaults go in the annotation: "int = 1"
    returns: str
    summary: str
    body: str
    ref: Callable[..., Any]  # reference implementation: gives the expected values
    draw: Callable[[random.Random], tuple]  # one tuple of test arguments
    imports: tuple[str, ...] = ()
    decorator: str = ""
    param_docs: dict[str, str] = field(default_factory=dict)


_OPS: dict[str, list[Callable[[random.Random], _Draft]]] = {f: [] for f in FAMILIES}

_TYPE_DOCS = {
    "int": ("an integer", "the input number", "a whole number", "the value to use"),
    "str": ("the input text", "a string", "the text to process", "some text"),
    "list[int]": ("a list of integers", "the numbers to process", "the input values"),
    "list[str]": ("a list of words", "the words to process", "the input strings"),
    "dict[str, int]": ("a mapping from keys to integers", "the input dictionary"),
    "list": ("a possibly nested list", "nested lists of integers"),
}
_RETURN_DOCS = {
    "int": ("the resulting integer", "the computed value", "an integer"),
    "bool": ("True if the condition holds, otherwise False", "whether the check passes"),
    "str": ("the resulting string", "the new text", "a string"),
    "float": ("the computed value", "a float"),
}


def _op(family: str):
    def register(fn):
        _OPS[family].append(fn)
        return fn
    return register


def _sample(family: str, rng: random.Random) -> Sample:
    draft = rng.choice(_OPS[family])(rng)
    cases = _cases(draft, rng)
    typed = rng.random() < 0.75
    sig = ", ".join(_param(p, a, typed) for p, a in draft.params)
    ret = f" -> {draft.returns}" if typed else ""
    # The docstring example: the median-length case (informative, yet short lines).
    by_length = sorted(cases, key=lambda c: len(_call(draft.name, c[0]) + repr(c[1])))
    example = by_length[len(by_length) // 2]
    call, result = _call(draft.name, example[0]), repr(example[1])
    lines = list(draft.imports) + ([""] * 2 if draft.imports else [])
    lines += [draft.decorator] if draft.decorator else []
    lines.append(f"def {draft.name}({sig}){ret}:")
    lines += ["    " + line if line else "" for line in _docstring(draft, call, result, rng)]
    lines += ["    " + line if line else "" for line in draft.body.split("\n")]
    tests = []
    for args, expected in cases:
        if isinstance(expected, bool):
            tests.append(f"assert {_call(draft.name, args)} is {expected}")
        else:
            tests.append(f"assert {_call(draft.name, args)} == {expected!r}")
    return Sample(family, draft.name, "\n".join(lines) + "\n", "\n".join(tests), _task(draft))


def _task(draft: _Draft) -> str:
    """The draft as a request in words, with the full typed signature (draws nothing from the rng)."""
    sig = ", ".join(_param(p, a, typed=True) for p, a in draft.params)
    first, _, rest = draft.summary.partition(" ")
    if first[1:].islower():  # "Return ..." -> "return ...", but "FizzBuzz ..." stays
        first = first.lower()
    return f"Write a Python function `{draft.name}({sig}) -> {draft.returns}`: {first} {rest}".rstrip()


def _param(name: str, annotation: str, typed: bool) -> str:
    ann, _, default = annotation.partition(" = ")
    if not typed:
        return f"{name}={default}" if default else name
    return f"{name}: {ann} = {default}" if default else f"{name}: {ann}"


def _call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(map(repr, args))})"


def _cases(draft: _Draft, rng: random.Random) -> list[tuple[tuple, Any]]:
    """3-5 (up to 10) distinct argument tuples whose expected values are not all equal."""
    want = rng.randint(3, 5)
    cases: dict[str, tuple[tuple, Any]] = {}
    for _ in range(200):
        args = draft.draw(rng)
        expected = draft.ref(*copy.deepcopy(args))
        assert expected is not None, draft.name  # a corrupted body returning None must fail
        cases.setdefault(repr(args), (args, expected))
        if len(cases) >= want + 5 or (len(cases) >= want
                                      and len({repr(e) for _, e in cases.values()}) > 1):
            break
    return list(cases.values())


def _docstring(draft: _Draft, call: str, result: str, rng: random.Random) -> list[str]:
    pdocs = [(p, draft.param_docs.get(p)
              or rng.choice(_TYPE_DOCS.get(a.split(" = ")[0], ("the input",))))
             for p, a in draft.params]
    rdoc = rng.choice(_RETURN_DOCS.get(draft.returns, ("the result",)))
    summary = textwrap.wrap(draft.summary, 80)
    style = rng.randrange(6)
    if style == 0:
        lines = [*summary, "", f">>> {call}", result]
    elif style == 1:
        lines = [*summary, "", f"Example: {call} -> {result}"]
    elif style == 2:
        lines = [*summary, "", "Args:", *[f"    {p}: {d}." for p, d in pdocs],
                 "", "Returns:", f"    {rdoc[0].upper() + rdoc[1:]}.", "", "Example:",
                 f"    >>> {call}", f"    {result}"]
    elif style == 3:
        lines = [*summary, "", *[f":param {p}: {d}" for p, d in pdocs], f":return: {rdoc}",
                 "", *textwrap.wrap(f"For example, ``{call}`` gives ``{result}``.", 84)]
    elif style == 4:
        lines = [*summary, "", "Parameters", "----------",
                 *[f"{p}\n    {d[0].upper() + d[1:]}." for p, d in pdocs], "",
                 "Examples", "--------", f">>> {call}", result]
        lines = "\n".join(lines).split("\n")
    elif len(draft.summary) + len(call) + len(result) < 70:
        return [f'"""{draft.summary} E.g. {call} == {result}."""']
    else:
        lines = [*summary, "", *textwrap.wrap(f"E.g. {call} == {result}.", 84)]
    lines[0] = '"""' + lines[0]
    return lines + ['"""']


def _lines(*lines: str) -> str:
    return "\n".join(lines)


def _name(rng: random.Random, verbs: Sequence[str], nouns: Sequence[str]) -> str:
    return f"{rng.choice(verbs)}_{rng.choice(nouns)}"


def _signed(value: int) -> str:
    return f"+ {value}" if value >= 0 else f"- {-value}"


_WORDS = ("apple river stone cloud maple tiger piano ocean lemon candle forest rocket "
          "silver garden winter pepper castle violet mirror falcon harbor meadow copper "
          "ember sun map ink owl fig jar kit log net oak pen ray sky tea van web yak zip "
          "art bee cat dog elm fox gum hat ice jam kiwi lamp moon nest pear quilt rose").split()
_NUM_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
              9: "nine", 10: "ten"}


def _text(rng: random.Random, max_tokens: int = 5) -> str:
    tokens = []
    for _ in range(rng.randint(1, max_tokens)):
        word, kind = rng.choice(_WORDS), rng.random()
        if kind < 0.2:
            word = word.capitalize()
        elif kind < 0.3:
            word = str(rng.randint(0, 999))
        elif kind < 0.4:
            word += rng.choice("!?.,")
        elif kind < 0.45:
            word = word.upper()
        tokens.append(word)
    return " ".join(tokens)


def _sentence(rng: random.Random, pool_size: int = 4, max_words: int = 7) -> str:
    pool = rng.sample(_WORDS, pool_size)
    return " ".join(rng.choice(pool) for _ in range(rng.randint(1, max_words)))


def _ints(rng: random.Random, lo: int = -20, hi: int = 50, min_len: int = 0,
          max_len: int = 8) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(min_len, max_len))]
