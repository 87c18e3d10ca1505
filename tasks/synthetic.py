"""Deterministic generator of small, tested Python functions (synthetic code data).

The code seed of the model is trained on synthetic code: every sample is one small
function with a docstring (``Sample.code``, the text that is kept) plus assert-based
tests (``Sample.tests``).  Every sample is executed in ``tasks.sandbox`` and kept only
if its tests pass, so the expected values in the tests are computed here, by a
reference implementation known to the generator and evaluated on the test inputs at
generation time -- never by running the generated code.  A generated function that
is wrong therefore fails its tests.

Samples are varied on purpose (function, parameter and local names, constants,
operations, implementation style -- loop, comprehension, builtin, recursion --
annotations, docstring wording and layout) so that near-duplicate removal (MinHash,
Jaccard 0.8 over 5-token shingles) keeps most of them.  The same ``(n, seed,
families)`` always yields the same samples (``random.Random`` seeded per sample from
a string, independent of PYTHONHASHSEED).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import random
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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


def generate(n: int, seed: int | str, families: Sequence[str] = FAMILIES) -> Iterator[Sample]:
    """Yield ``n`` samples, cycling through ``families``; deterministic in its arguments."""
    families = tuple(families)
    unknown = [f for f in families if f not in _OPS]
    if unknown:
        raise ValueError(f"unknown synthetic famil{'ies' if len(unknown) > 1 else 'y'}: "
                         f"{', '.join(map(repr, unknown))} (known: {', '.join(FAMILIES)})")
    if not families and n > 0:
        raise ValueError("no families to generate from")
    return (_sample(families[i % len(families)], random.Random(f"{seed}:{i}"))
            for i in range(n))


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


# ---------------------------------------------------------------- arithmetic


@_op("arithmetic")
def _affine(rng: random.Random) -> _Draft:
    a, b = rng.choice([-7, -5, -3, -2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]), rng.randint(-40, 40)
    x = rng.choice(["x", "value", "n", "amount", "reading", "level", "raw"])
    style = rng.randrange(3)
    if style == 0:
        body = f"return {a} * {x} {_signed(b)}"
    elif style == 1:
        tmp = rng.choice(["scaled", "product", "stretched", "multiplied"])
        body = _lines(f"{tmp} = {x} * {a}", f"return {tmp} {_signed(b)}")
    else:
        acc = rng.choice(["result", "out", "y"])
        body = _lines(f"{acc} = {x}", f"{acc} *= {a}",
                      f"{acc} {'+=' if b >= 0 else '-='} {abs(b)}", f"return {acc}")
    summary = rng.choice([
        f"Return {x} multiplied by {a}, then {'increased' if b >= 0 else 'decreased'} by {abs(b)}.",
        f"Compute the linear transform {a} * {x} {_signed(b)}.",
        f"Scale {x} by a factor of {a} and add an offset of {b}.",
        f"Apply y = {a}*{x} {_signed(b)} to the given {x}.",
    ])
    name = _name(rng, ["scale", "transform", "adjust", "convert", "rescale", "calibrate", "map"],
                 ["value", "reading", "amount", "score", "level", "input", "sample"])
    return _Draft(name, [(x, "int")], "int", summary, body, lambda v: a * v + b,
                  lambda r: (r.randint(-60, 60),))


@_op("arithmetic")
def _sum_multiples(rng: random.Random) -> _Draft:
    k = rng.randint(2, 9)
    n = rng.choice(["n", "limit", "upper", "bound", "stop", "end"])
    i = rng.choice(["i", "num", "m", "candidate", "j"])
    acc = rng.choice(["total", "acc", "running", "result"])
    style = rng.randrange(4)
    if style == 0:
        body = _lines(f"{acc} = 0", f"for {i} in range(1, {n} + 1):", f"    if {i} % {k} == 0:",
                      f"        {acc} += {i}", f"return {acc}")
    elif style == 1:
        body = f"return sum({i} for {i} in range(1, {n} + 1) if {i} % {k} == 0)"
    elif style == 2:
        body = f"return sum(range({k}, {n} + 1, {k}))"
    else:
        body = _lines(f"{acc} = 0", f"{i} = {k}", f"while {i} <= {n}:", f"    {acc} += {i}",
                      f"    {i} += {k}", f"return {acc}")
    summary = rng.choice([
        f"Return the sum of all multiples of {k} between 1 and {n} inclusive.",
        f"Add up every positive integer not greater than {n} that is divisible by {k}.",
        f"Compute the total of the numbers in 1..{n} that {k} divides evenly.",
    ])
    name = _name(rng, ["sum", "add", "total", "accumulate"],
                 [f"multiples_of_{_NUM_WORDS[k]}", f"multiples_of_{k}", f"steps_of_{k}"])
    return _Draft(name, [(n, "int")], "int", summary, body,
                  lambda m: sum(range(k, m + 1, k)), lambda r: (r.randint(0, 150),))


@_op("arithmetic")
def _digit_sum(rng: random.Random) -> _Draft:
    power = rng.choice([1, 2])
    n = rng.choice(["n", "number", "value", "num", "code"])
    acc = rng.choice(["total", "acc", "result", "s"])
    pw = "" if power == 1 else " ** 2"
    style = rng.randrange(3)
    if style == 0:
        body = _lines(f"{n} = abs({n})", f"{acc} = 0", f"while {n}:",
                      f"    {acc} += ({n} % 10){pw}" if power > 1 else f"    {acc} += {n} % 10",
                      f"    {n} //= 10", f"return {acc}")
    elif style == 1:
        ch = rng.choice(["ch", "c", "digit"])
        body = f"return sum(int({ch}){pw} for {ch} in str(abs({n})))"
    else:
        d = rng.choice(["digit", "d", "last"])
        body = _lines(f"{n} = abs({n})", f"{acc} = 0", f"while {n} > 0:",
                      f"    {n}, {d} = divmod({n}, 10)", f"    {acc} += {d}{pw}", f"return {acc}")
    what = "digits" if power == 1 else "squares of the digits"
    summary = rng.choice([f"Return the sum of the {what} of {n}.",
                          f"Compute the sum of the {what} in the decimal form of {n}.",
                          f"Add up the {what} of {n}, ignoring its sign."])
    nouns = ["digit_sum", "sum_digits", "digit_total", "add_digits"] if power == 1 else \
        ["square_digit_sum", "sum_squared_digits", "digit_square_total"]
    name = rng.choice(nouns) + rng.choice(["", "_of", "_for"])
    return _Draft(name, [(n, "int")], "int", summary, body,
                  lambda v: sum(int(c) ** power for c in str(abs(v))),
                  lambda r: (r.randint(-99999, 999999),))


@_op("arithmetic")
def _polynomial(rng: random.Random) -> _Draft:
    a, b, c = rng.choice([-4, -3, -2, -1, 1, 2, 3, 4, 5]), rng.randint(-9, 9), rng.randint(-20, 20)
    x = rng.choice(["x", "t", "value", "point", "z"])
    style = rng.randrange(3)
    lead = f"{x} * {x}" if a == 1 else f"-{x} * {x}" if a == -1 else f"{a} * {x} * {x}"
    if style == 0:
        body = f"return {lead} {_signed(b)} * {x} {_signed(c)}"
    elif style == 1:
        body = f"return ({a} * {x} {_signed(b)}) * {x} {_signed(c)}"
    else:
        sq = rng.choice(["square", "squared", "x2"])
        body = _lines(f"{sq} = {x} ** 2", f"return {a} * {sq} {_signed(b)} * {x} {_signed(c)}")
    summary = rng.choice([f"Evaluate the quadratic {a}*{x}^2 {_signed(b)}*{x} {_signed(c)} at {x}.",
                          f"Return the value of the polynomial {a}{x}^2 + ({b}){x} + ({c}).",
                          f"Compute a quadratic in {x} with coefficients {a}, {b} and {c}."])
    name = _name(rng, ["eval", "evaluate", "compute", "quadratic"],
                 ["quadratic", "polynomial", "curve", "parabola", "poly"])
    return _Draft(name, [(x, "int")], "int", summary, body, lambda v: a * v * v + b * v + c,
                  lambda r: (r.randint(-30, 30),))


@_op("arithmetic")
def _ceil_div(rng: random.Random) -> _Draft:
    a, b = rng.choice([("items", "per_box"), ("people", "seats"), ("pages", "per_sheet"),
                       ("total", "batch_size"), ("n", "k"), ("tasks", "per_worker"),
                       ("guests", "per_table"), ("bytes_", "block")])
    style = rng.randrange(4)
    if style == 0:
        body = f"return ({a} + {b} - 1) // {b}"
    elif style == 1:
        body = f"return -(-{a} // {b})"
    elif style == 2:
        body = _lines(f"full, rest = divmod({a}, {b})", "return full + (1 if rest else 0)")
    else:
        cnt = rng.choice(["count", "groups", "needed"])
        body = _lines(f"{cnt} = {a} // {b}", f"if {a} % {b}:", f"    {cnt} += 1", f"return {cnt}")
    summary = rng.choice([f"Return how many groups of size {b} are needed to hold {a}.",
                          f"Compute the ceiling of {a} divided by {b} using integer arithmetic.",
                          f"Count the containers needed when each takes at most {b} of the {a}."])
    name = rng.choice(["boxes_needed", "count_batches", "sheets_required", "groups_needed",
                       "min_trips", "rounds_needed", "ceil_divide", "blocks_for"])
    return _Draft(name, [(a, "int"), (b, "int")], "int", summary, body, lambda p, q: -(-p // q),
                  lambda r: (r.randint(0, 300), r.randint(1, 25)))


@_op("arithmetic")
def _clamp(rng: random.Random) -> _Draft:
    lo = rng.randint(-50, 10)
    hi = lo + rng.randint(5, 100)
    x = rng.choice(["x", "value", "score", "level", "reading", "speed", "volume"])
    style = rng.randrange(4)
    if style == 0:
        body = f"return min(max({x}, {lo}), {hi})"
    elif style == 1:
        body = _lines(f"if {x} < {lo}:", f"    return {lo}", f"if {x} > {hi}:", f"    return {hi}",
                      f"return {x}")
    elif style == 2:
        body = f"return sorted(({lo}, {x}, {hi}))[1]"
    else:
        body = f"return {lo} if {x} < {lo} else {hi} if {x} > {hi} else {x}"
    summary = rng.choice([f"Clamp {x} into the closed interval [{lo}, {hi}].",
                          f"Return {x} limited to the range {lo}..{hi}.",
                          f"Force {x} to stay between {lo} and {hi}, inclusive."])
    name = _name(rng, ["clamp", "limit", "bound", "restrict", "clip", "cap"],
                 [x, "value", "input", "reading"])
    return _Draft(name, [(x, "int")], "int", summary, body, lambda v: min(max(v, lo), hi),
                  lambda r: (r.randint(lo - 60, hi + 60),))


@_op("arithmetic")
def _distance(rng: random.Random) -> _Draft:
    a, b = rng.choice([("a", "b"), ("x", "y"), ("start", "end"), ("first", "second"),
                       ("left", "right"), ("p", "q"), ("old", "new")])
    style = rng.randrange(3)
    if style == 0:
        body = f"return abs({a} - {b})"
    elif style == 1:
        body = _lines(f"if {a} > {b}:", f"    return {a} - {b}", f"return {b} - {a}")
    else:
        body = f"return max({a}, {b}) - min({a}, {b})"
    summary = rng.choice([f"Return the absolute difference between {a} and {b}.",
                          f"Compute how far apart {a} and {b} are on the number line.",
                          f"Give the distance |{a} - {b}|."])
    name = rng.choice(["gap_between", "distance", "abs_difference", "spread_between",
                       "separation", "delta", "how_far"])
    return _Draft(name, [(a, "int"), (b, "int")], "int", summary, body, lambda p, q: abs(p - q),
                  lambda r: (r.randint(-100, 100), r.randint(-100, 100)))


# ---------------------------------------------------------------- strings

_CHAR_CLASSES = [  # (description, code with {c}, predicate)
    ("vowels", '{c} in "aeiou"', lambda c: c in "aeiou"),
    ("vowels (ignoring case)", '{c}.lower() in "aeiou"', lambda c: c.lower() in "aeiou"),
    ("digits", "{c}.isdigit()", str.isdigit),
    ("uppercase letters", "{c}.isupper()", str.isupper),
    ("spaces", '{c} == " "', lambda c: c == " "),
    ("punctuation marks", '{c} in ".,!?"', lambda c: c in ".,!?"),
]


@_op("strings")
def _count_chars(rng: random.Random) -> _Draft:
    desc, code, pred = rng.choice(_CHAR_CLASSES)
    s = rng.choice(["text", "s", "word", "line", "message", "phrase"])
    c = rng.choice(["ch", "c", "char", "letter"])
    cond = code.format(c=c)
    style = rng.randrange(4)
    if style == 0:
        acc = rng.choice(["count", "total", "found", "n"])
        body = _lines(f"{acc} = 0", f"for {c} in {s}:", f"    if {cond}:", f"        {acc} += 1",
                      f"return {acc}")
    elif style == 1:
        body = f"return sum(1 for {c} in {s} if {cond})"
    elif style == 2:
        body = f"return len([{c} for {c} in {s} if {cond}])"
    else:
        body = f"return sum({cond} for {c} in {s})"
    summary = rng.choice([f"Count the {desc} in {s}.", f"Return how many {desc} {s} contains.",
                          f"Return the number of characters of {s} that are {desc}."])
    noun = desc.split()[0].rstrip("s").replace("uppercase", "upper")
    name = _name(rng, ["count", "num", "tally"], [f"{noun}s", f"{noun}_chars", f"{noun}s_in"])
    return _Draft(name, [(s, "str")], "int", summary, body,
                  lambda t: sum(1 for ch in t if pred(ch)), lambda r: (_text(r),))


@_op("strings")
def _remove_chars(rng: random.Random) -> _Draft:
    desc, code, pred = rng.choice(_CHAR_CLASSES)
    s = rng.choice(["text", "s", "raw", "line", "message", "source"])
    c = rng.choice(["ch", "c", "char", "symbol"])
    cond = code.format(c=c)
    style = rng.randrange(3)
    if style == 0:
        out = rng.choice(["kept", "parts", "chars", "pieces"])
        body = _lines(f"{out} = []", f"for {c} in {s}:", f"    if not {cond}:",
                      f"        {out}.append({c})", f'return "".join({out})')
    elif style == 1:
        body = f'return "".join({c} for {c} in {s} if not {cond})'
    else:
        out = rng.choice(["result", "cleaned", "out"])
        body = _lines(f'{out} = ""', f"for {c} in {s}:", f"    if {cond}:", "        continue",
                      f"    {out} += {c}", f"return {out}")
    summary = rng.choice([f"Return {s} with all {desc} removed.", f"Strip every one of the {desc} "
                          f"out of {s}.", f"Delete the {desc} from {s} and return what is left."])
    noun = desc.split()[0]
    name = _name(rng, ["remove", "strip", "drop", "without", "delete"], [noun, f"{noun}_from"])
    return _Draft(name, [(s, "str")], "str", summary, body,
                  lambda t: "".join(ch for ch in t if not pred(ch)), lambda r: (_text(r),))


@_op("strings")
def _reverse_words(rng: random.Random) -> _Draft:
    per_word = rng.random() < 0.4
    s = rng.choice(["sentence", "text", "s", "phrase", "line"])
    w = rng.choice(["word", "w", "token", "part"])
    style = rng.randrange(3)
    if per_word:
        if style == 0:
            body = f'return " ".join({w}[::-1] for {w} in {s}.split())'
        elif style == 1:
            body = f'return " ".join(["".join(reversed({w})) for {w} in {s}.split()])'
        else:
            out = rng.choice(["flipped", "out", "result"])
            body = _lines(f"{out} = []", f"for {w} in {s}.split():", f"    {out}.append({w}[::-1])",
                          f'return " ".join({out})')
        summary = rng.choice([f"Reverse the letters of every word in {s}, keeping word order.",
                              f"Return {s} with each word spelled backwards."])
        ref = lambda t: " ".join(x[::-1] for x in t.split())  # noqa: E731
        name = _name(rng, ["mirror", "flip", "reverse"], ["each_word", "word_letters", "every_word"])
    else:
        if style == 0:
            body = f'return " ".join(reversed({s}.split()))'
        elif style == 1:
            body = f'return " ".join({s}.split()[::-1])'
        else:
            out = rng.choice(["words", "order", "result"])
            body = _lines(f"{out} = []", f"for {w} in {s}.split():", f"    {out}.insert(0, {w})",
                          f'return " ".join({out})')
        summary = rng.choice([f"Return the words of {s} in reverse order.",
                              f"Reverse the order of the whitespace-separated words in {s}."])
        ref = lambda t: " ".join(reversed(t.split()))  # noqa: E731
        name = _name(rng, ["reverse", "flip", "invert", "backwards"], ["words", "word_order"])
    return _Draft(name, [(s, "str")], "str", summary, body, ref, lambda r: (_text(r),))


@_op("strings")
def _acronym(rng: random.Random) -> _Draft:
    sep = rng.choice(["", "", "."])
    s = rng.choice(["phrase", "name", "title", "words", "text"])
    w = rng.choice(["word", "w", "part", "token"])
    plus = f' + "{sep}"' if sep else ""
    style = rng.randrange(3)
    if style == 0:
        body = f'return "".join({w}[0].upper(){plus} for {w} in {s}.split())'
    elif style == 1:
        out = rng.choice(["letters", "initials", "result"])
        body = _lines(f'{out} = ""', f"for {w} in {s}.split():", f"    {out} += {w}[0].upper(){plus}",
                      f"return {out}")
    else:
        body = f'return "".join([{w}[:1].upper(){plus} for {w} in {s}.split()])'
    extra = f', each followed by "{sep}"' if sep else ""
    summary = rng.choice([f"Build the acronym of {s}: the upper-cased first letters{extra}.",
                          f"Return the initials of the words in {s}{extra}."])
    name = _name(rng, ["make", "build", "to", "get"], ["acronym", "initials", "abbreviation"])
    return _Draft(name, [(s, "str")], "str", summary, body,
                  lambda t: "".join(x[0].upper() + sep for x in t.split()),
                  lambda r: (" ".join(r.choice(_WORDS) for _ in range(r.randint(1, 5))),))


@_op("strings")
def _run_length(rng: random.Random) -> _Draft:
    omit_ones = rng.random() < 0.5
    s = rng.choice(["s", "text", "data", "raw", "seq"])
    piece = "ch if n == 1 else f\"{ch}{n}\"" if omit_ones else "f\"{ch}{n}\""
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if not {s}:", '    return ""', "parts = []", f"current, n = {s}[0], 1",
                      f"for ch in {s}[1:]:", "    if ch == current:", "        n += 1",
                      "        continue", "    parts.append(" + piece.replace("ch", "current") + ")",
                      "    current, n = ch, 1", "parts.append(" + piece.replace("ch", "current") + ")",
                      'return "".join(parts)')
        imports: tuple[str, ...] = ()
    else:
        body = _lines("parts = []", f"for ch, group in groupby({s}):", "    n = len(list(group))",
                      f"    parts.append({piece})", 'return "".join(parts)')
        imports = ("from itertools import groupby",)

    def ref(t: str) -> str:
        runs = [(k, len(list(g))) for k, g in itertools.groupby(t)]
        return "".join(k if (omit_ones and m == 1) else f"{k}{m}" for k, m in runs)

    tail = " (a run of one is written as the bare character)" if omit_ones else ""
    summary = rng.choice([f"Run-length encode {s}{tail}.",
                          f"Compress {s} by replacing each run of a character with the character "
                          f"and the run length{tail}."])
    name = rng.choice(["run_length_encode", "rle", "compress_runs", "encode_runs", "squash_repeats"])

    def draw(r: random.Random) -> tuple:
        return ("".join(r.choice("abcxyz") * r.choice([1, 1, 2, 3, 4]) for _ in range(r.randint(0, 6))),)

    return _Draft(name, [(s, "str")], "str", summary, body, ref, draw, imports=imports)


@_op("strings")
def _palindrome(rng: random.Random) -> _Draft:
    mode = rng.randrange(3)
    s = rng.choice(["s", "text", "word", "candidate", "phrase"])
    norm = [f"{s}", f"{s}.lower()", f'"".join(ch.lower() for ch in {s} if ch.isalnum())'][mode]
    t = rng.choice(["t", "cleaned", "normalized", "chars"])
    style = rng.randrange(3)
    if style == 0:
        body = _lines(f"{t} = {norm}", f"return {t} == {t}[::-1]")
    elif style == 1:
        body = _lines(f"{t} = {norm}", f"i, j = 0, len({t}) - 1", "while i < j:",
                      f"    if {t}[i] != {t}[j]:", "        return False", "    i += 1", "    j -= 1",
                      "return True")
    else:
        body = _lines(f"{t} = {norm}", f"return all({t}[i] == {t}[-1 - i] for i in range(len({t}) // 2))")
    how = ["exactly", "ignoring case", "ignoring case and non-alphanumeric characters"][mode]
    summary = rng.choice([f"Return True if {s} reads the same forwards and backwards ({how}).",
                          f"Check whether {s} is a palindrome, {how}."])
    name = rng.choice(["is_palindrome", "reads_same_backwards", "palindrome_check", "is_mirror_word"])

    def ref(x: str) -> bool:
        y = [x, x.lower(), "".join(ch.lower() for ch in x if ch.isalnum())][mode]
        return y == y[::-1]

    def draw(r: random.Random) -> tuple:
        w = r.choice(_WORDS)
        if r.random() < 0.5:
            return (_text(r, 2),)
        pal = w + r.choice(["", "x", "a"]) + w[::-1]
        if mode and r.random() < 0.5:
            pal = pal.capitalize()
        if mode == 2 and r.random() < 0.5:
            pal = pal[:2] + r.choice([" ", ", ", "!"]) + pal[2:]
        return (pal,)

    return _Draft(name, [(s, "str")], "bool", summary, body, ref, draw)


@_op("strings")
def _caesar(rng: random.Random) -> _Draft:
    k = rng.randint(1, 25)
    s = rng.choice(["text", "message", "plain", "s", "secret"])
    c = rng.choice(["ch", "c", "letter"])
    shifted = f'chr((ord({c}) - ord("a") + {k}) % 26 + ord("a"))'
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        out = rng.choice(["out", "result", "chars"])
        body = _lines(f"{out} = []", f"for {c} in {s}:", f'    if "a" <= {c} <= "z":',
                      f"        {out}.append({shifted})", "    else:", f"        {out}.append({c})",
                      f'return "".join({out})')
    elif style == 1:
        body = f'return "".join({shifted} if "a" <= {c} <= "z" else {c} for {c} in {s})'
    else:
        imports = ("import string",)
        lower = "string.ascii_lowercase"
        body = _lines(f"table = str.maketrans({lower}, {lower}[{k}:] + {lower}[:{k}])",
                      f"return {s}.translate(table)")
    summary = rng.choice([f"Shift every lowercase letter of {s} forward by {k} in the alphabet, "
                          "wrapping around; other characters are unchanged.",
                          f"Apply a Caesar cipher with shift {k} to the lowercase letters of {s}."])
    name = rng.choice(["caesar_shift", "rotate_letters", "encode_caesar", "shift_cipher",
                       f"rot{k}", "encrypt"])

    def ref(t: str) -> str:
        return "".join(chr((ord(x) - 97 + k) % 26 + 97) if "a" <= x <= "z" else x for x in t)

    return _Draft(name, [(s, "str")], "str", summary, body, ref, lambda r: (_text(r),),
                  imports=imports)


@_op("strings")
def _extreme_word(rng: random.Random) -> _Draft:
    longest = rng.random() < 0.6
    s = rng.choice(["sentence", "text", "s", "line"])
    w = rng.choice(["word", "w", "candidate"])
    best = rng.choice(["best", "winner", "champion"])
    fn, cmp = ("max", ">") if longest else ("min", "<")
    style = rng.randrange(2)
    if style == 0:
        body = f"return {fn}({s}.split(), key=len)"
    else:
        body = _lines(f"words = {s}.split()", f"{best} = words[0]", f"for {w} in words[1:]:",
                      f"    if len({w}) {cmp} len({best}):", f"        {best} = {w}", f"return {best}")
    adj = "longest" if longest else "shortest"
    summary = rng.choice([f"Return the {adj} word of {s} (the first one on ties).",
                          f"Find the {adj} whitespace-separated word in {s}; earlier words win ties."])
    name = _name(rng, ["find", "get", "pick"], [f"{adj}_word", adj])
    ref = (lambda t: max(t.split(), key=len)) if longest else (lambda t: min(t.split(), key=len))
    return _Draft(name, [(s, "str")], "str", summary, body, ref,
                  lambda r: (" ".join(r.choice(_WORDS) for _ in range(r.randint(1, 6))),))


# ---------------------------------------------------------------- lists

_INT_PREDICATES = [  # (description, code with {x}, predicate factory over a constant)
    ("even numbers", "{x} % 2 == 0", lambda k: lambda v: v % 2 == 0),
    ("odd numbers", "{x} % 2 == 1", lambda k: lambda v: v % 2 == 1),
    ("numbers greater than {k}", "{x} > {k}", lambda k: lambda v: v > k),
    ("numbers below {k}", "{x} < {k}", lambda k: lambda v: v < k),
    ("multiples of {k}", "{x} % {k} == 0", lambda k: lambda v: v % k == 0),
    ("negative numbers", "{x} < 0", lambda k: lambda v: v < 0),
]


@_op("lists")
def _filter_numbers(rng: random.Random) -> _Draft:
    desc, code, factory = rng.choice(_INT_PREDICATES)
    k = rng.randint(2, 9) if "multiples" in desc else rng.randint(-5, 30)
    desc, pred = desc.format(k=k), factory(k)
    xs = rng.choice(["numbers", "values", "nums", "xs", "data", "readings"])
    x = rng.choice(["x", "n", "value", "item", "v"])
    cond = code.format(x=x, k=k)
    mode, style = rng.choice(["list", "count", "sum"]), rng.randrange(3)
    acc = rng.choice(["result", "acc", "out", "picked"])
    if mode == "list":
        body = [_lines(f"{acc} = []", f"for {x} in {xs}:", f"    if {cond}:",
                       f"        {acc}.append({x})", f"return {acc}"),
                f"return [{x} for {x} in {xs} if {cond}]",
                f"return list(filter(lambda {x}: {cond}, {xs}))"][style]
        summary = rng.choice([f"Return the {desc} in {xs}, keeping their order.",
                              f"Keep only the {desc} from {xs}."])
        ref, ret, verb = (lambda v: [e for e in v if pred(e)]), "list[int]", ["keep", "select", "filter"]
    elif mode == "count":
        body = [_lines(f"{acc} = 0", f"for {x} in {xs}:", f"    if {cond}:", f"        {acc} += 1",
                       f"return {acc}"),
                f"return sum(1 for {x} in {xs} if {cond})",
                f"return len([{x} for {x} in {xs} if {cond}])"][style]
        summary = rng.choice([f"Count the {desc} in {xs}.", f"Return how many {desc} {xs} holds."])
        ref, ret, verb = (lambda v: sum(1 for e in v if pred(e))), "int", ["count", "how_many", "num"]
    else:
        body = [_lines(f"{acc} = 0", f"for {x} in {xs}:", f"    if {cond}:", f"        {acc} += {x}",
                       f"return {acc}"),
                f"return sum({x} for {x} in {xs} if {cond})",
                f"return sum(filter(lambda {x}: {cond}, {xs}))"][style]
        summary = rng.choice([f"Return the sum of the {desc} in {xs}.",
                              f"Add up the {desc} found in {xs}."])
        ref, ret, verb = (lambda v: sum(e for e in v if pred(e))), "int", ["sum", "total", "add"]
    noun = desc.replace("numbers ", "").replace(" numbers", "").replace(" ", "_").replace("-", "minus_")
    name = f"{rng.choice(verb)}_{noun}"
    return _Draft(name, [(xs, "list[int]")], ret, summary, body, ref, lambda r: (_ints(r),))


@_op("lists")
def _running(rng: random.Random) -> _Draft:
    use_max = rng.random() < 0.35
    xs = rng.choice(["values", "numbers", "xs", "series", "deltas"])
    acc = rng.choice(["running", "current", "so_far", "acc"])
    out = rng.choice(["result", "out", "prefix"])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        step = f"{acc} = max({acc}, x)" if use_max else f"{acc} += x"
        init = f"{acc} = {xs}[0] if {xs} else 0" if use_max else f"{acc} = 0"
        body = _lines(f"{out} = []", init, f"for x in {xs}:", f"    {step}", f"    {out}.append({acc})",
                      f"return {out}")
    elif style == 1:
        imports = ("from itertools import accumulate",)
        body = f"return list(accumulate({xs}, max))" if use_max else f"return list(accumulate({xs}))"
    else:
        fn = "max" if use_max else "sum"
        body = f"return [{fn}({xs}[:i + 1]) for i in range(len({xs}))]"
    what = "maximum" if use_max else "sum"
    summary = rng.choice([f"Return the running {what} of {xs}.",
                          f"Compute the prefix {what}s of {xs}: element i is the {what} of the "
                          f"first i + 1 values."])
    name = _name(rng, ["running", "prefix", "cumulative"], ["max", "maximum", "peak"] if use_max
                 else ["sum", "sums", "total", "totals"])
    ref = (lambda v: list(itertools.accumulate(v, max))) if use_max else \
        (lambda v: list(itertools.accumulate(v)))
    return _Draft(name, [(xs, "list[int]")], "list[int]", summary, body, ref,
                  lambda r: (_ints(r, -10, 30, 1, 8),), imports=imports)


@_op("lists")
def _differences(rng: random.Random) -> _Draft:
    absolute = rng.random() < 0.4
    xs = rng.choice(["values", "points", "xs", "levels", "heights"])
    a, b = rng.choice([("a", "b"), ("prev", "cur"), ("left", "right"), ("x", "y")])
    diff = f"abs({b} - {a})" if absolute else f"{b} - {a}"
    style = rng.randrange(2)
    if style == 0:
        body = f"return [{diff} for {a}, {b} in zip({xs}, {xs}[1:])]"
    else:
        out = rng.choice(["steps", "result", "gaps"])
        idx = f"{xs}[i] - {xs}[i - 1]"
        idx = f"abs({idx})" if absolute else idx
        body = _lines(f"{out} = []", f"for i in range(1, len({xs})):", f"    {out}.append({idx})",
                      f"return {out}")
    kind = "absolute differences" if absolute else "differences"
    summary = rng.choice([f"Return the {kind} between consecutive elements of {xs}.",
                          f"Compute the list of {kind} {xs}[i] - {xs}[i - 1] for i >= 1."])
    name = _name(rng, ["pairwise", "consecutive", "adjacent", "step"],
                 ["gaps", "diffs", "differences", "deltas"])
    ref = (lambda v: [abs(q - p) for p, q in zip(v, v[1:])]) if absolute else \
        (lambda v: [q - p for p, q in zip(v, v[1:])])
    return _Draft(name, [(xs, "list[int]")], "list[int]", summary, body, ref,
                  lambda r: (_ints(r, -20, 20, 2, 8),))


@_op("lists")
def _chunk(rng: random.Random) -> _Draft:
    k = rng.randint(2, 4)
    xs = rng.choice(["items", "values", "xs", "seq", "records"])
    style = rng.randrange(3)
    if style == 0:
        body = f"return [{xs}[i:i + {k}] for i in range(0, len({xs}), {k})]"
    elif style == 1:
        body = _lines("chunks = []", f"for start in range(0, len({xs}), {k}):",
                      f"    chunks.append({xs}[start:start + {k}])", "return chunks")
    else:
        body = _lines("chunks, current = [], []", f"for x in {xs}:", "    current.append(x)",
                      f"    if len(current) == {k}:", "        chunks.append(current)",
                      "        current = []", "if current:", "    chunks.append(current)",
                      "return chunks")
    summary = rng.choice([f"Split {xs} into consecutive chunks of {k}; the last may be shorter.",
                          f"Group {xs} into lists of length {k}, in order."])
    name = _name(rng, ["chunk", "split", "group", "batch"], [f"by_{k}", f"in_{_NUM_WORDS[k]}s", "list"])
    return _Draft(name, [(xs, "list[int]")], "list[list[int]]", summary, body,
                  lambda v: [v[i:i + k] for i in range(0, len(v), k)],
                  lambda r: (_ints(r, 0, 9, 1, 9),))


@_op("lists")
def _dedupe(rng: random.Random) -> _Draft:
    xs = rng.choice(["items", "values", "xs", "ids", "numbers"])
    x = rng.choice(["x", "item", "value"])
    style = rng.randrange(3)
    if style == 0:
        body = _lines("seen = set()", "unique = []", f"for {x} in {xs}:", f"    if {x} not in seen:",
                      f"        seen.add({x})", f"        unique.append({x})", "return unique")
    elif style == 1:
        body = f"return list(dict.fromkeys({xs}))"
    else:
        body = f"return [{x} for i, {x} in enumerate({xs}) if {x} not in {xs}[:i]]"
    summary = rng.choice([f"Remove duplicates from {xs}, keeping the first occurrence of each.",
                          f"Return the distinct elements of {xs} in order of first appearance."])
    name = _name(rng, ["dedupe", "unique", "distinct", "drop_duplicate"], [xs, "in_order", "items"])
    return _Draft(name, [(xs, "list[int]")], "list[int]", summary, body,
                  lambda v: list(dict.fromkeys(v)), lambda r: (_ints(r, 0, 6, 0, 9),))


@_op("lists")
def _rotate(rng: random.Random) -> _Draft:
    left = rng.random() < 0.5
    xs, k = rng.choice([("items", "k"), ("values", "steps"), ("xs", "n"), ("seq", "shift")])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        sl = f"{xs}[{k}:] + {xs}[:{k}]" if left else f"{xs}[-{k}:] + {xs}[:-{k}]"
        body = _lines(f"if not {xs}:", "    return []", f"{k} %= len({xs})", f"return {sl}")
    elif style == 1:
        imports = ("from collections import deque",)
        body = _lines(f"d = deque({xs})", f"d.rotate({'-' if left else ''}{k})", "return list(d)")
    else:
        src = f"(i + {k}) % len({xs})" if left else f"(i - {k}) % len({xs})"
        body = f"return [{xs}[{src}] for i in range(len({xs}))]"
    way = "left" if left else "right"
    summary = rng.choice([f"Rotate {xs} {k} positions to the {way} and return the new list.",
                          f"Return {xs} cyclically shifted {way} by {k}."])
    name = _name(rng, ["rotate", "shift", "cycle"], [way, f"{way}_by", "list"])

    def ref(v: list[int], n: int) -> list[int]:
        if not v:
            return []
        n %= len(v)
        return v[n:] + v[:n] if left else v[len(v) - n:] + v[:len(v) - n]

    return _Draft(name, [(xs, "list[int]"), (k, "int")], "list[int]", summary, body, ref,
                  lambda r: (_ints(r, 0, 9, 1, 7), r.randint(0, 9)), imports=imports)


@_op("lists")
def _dot(rng: random.Random) -> _Draft:
    a, b = rng.choice([("a", "b"), ("xs", "ys"), ("weights", "values"), ("u", "v"),
                       ("prices", "quantities")])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = f"return sum(x * y for x, y in zip({a}, {b}))"
    elif style == 1:
        body = _lines("total = 0", f"for i in range(len({a})):", f"    total += {a}[i] * {b}[i]",
                      "return total")
    else:
        imports = ("import operator",)
        body = f"return sum(map(operator.mul, {a}, {b}))"
    summary = rng.choice([f"Return the dot product of {a} and {b} (equal lengths).",
                          f"Multiply {a} and {b} element-wise and sum the products."])
    name = rng.choice(["dot", "dot_product", "weighted_sum", "inner_product", "total_value"])

    def draw(r: random.Random) -> tuple:
        m = r.randint(1, 6)
        return ([r.randint(-9, 9) for _ in range(m)], [r.randint(-9, 9) for _ in range(m)])

    return _Draft(name, [(a, "list[int]"), (b, "list[int]")], "int", summary, body,
                  lambda p, q: sum(x * y for x, y in zip(p, q)), draw, imports=imports)


@_op("lists")
def _spread(rng: random.Random) -> _Draft:
    xs = rng.choice(["values", "numbers", "samples", "temps", "scores"])
    style = rng.randrange(3)
    if style == 0:
        body = f"return max({xs}) - min({xs})"
    elif style == 1:
        body = _lines(f"lo = hi = {xs}[0]", f"for x in {xs}[1:]:", "    if x < lo:", "        lo = x",
                      "    elif x > hi:", "        hi = x", "return hi - lo")
    else:
        body = _lines(f"ordered = sorted({xs})", "return ordered[-1] - ordered[0]")
    summary = rng.choice([f"Return the range of {xs}: its largest minus its smallest element.",
                          f"Compute max({xs}) - min({xs}) for a non-empty list."])
    name = _name(rng, ["value", "data", "sample", "score"], ["range", "spread", "span", "width"])
    return _Draft(name, [(xs, "list[int]")], "int", summary, body, lambda v: max(v) - min(v),
                  lambda r: (_ints(r, -30, 60, 1, 8),))


# ---------------------------------------------------------------- dicts


@_op("dicts")
def _word_counts(rng: random.Random) -> _Draft:
    lower = rng.random() < 0.5
    s = rng.choice(["text", "sentence", "document", "s", "line"])
    counts = rng.choice(["counts", "freq", "tally", "histogram"])
    w = rng.choice(["word", "w", "token"])
    words = f"{s}.lower().split()" if lower else f"{s}.split()"
    style = rng.randrange(4)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = _lines(f"{counts} = {{}}", f"for {w} in {words}:",
                      f"    {counts}[{w}] = {counts}.get({w}, 0) + 1", f"return {counts}")
    elif style == 1:
        body = _lines(f"{counts} = {{}}", f"for {w} in {words}:", f"    if {w} in {counts}:",
                      f"        {counts}[{w}] += 1", "    else:", f"        {counts}[{w}] = 1",
                      f"return {counts}")
    elif style == 2:
        imports = ("from collections import Counter",)
        body = f"return dict(Counter({words}))"
    else:
        imports = ("from collections import defaultdict",)
        body = _lines(f"{counts} = defaultdict(int)", f"for {w} in {words}:",
                      f"    {counts}[{w}] += 1", f"return dict({counts})")
    how = " (case-insensitive)" if lower else ""
    summary = rng.choice([f"Count how often each word occurs in {s}{how}.",
                          f"Return a dict mapping every word of {s} to its number of occurrences{how}."])
    name = _name(rng, ["word", "count", "token"], ["counts", "frequencies", "words", "histogram"])

    def draw(r: random.Random) -> tuple:
        t = _sentence(r)
        return (" ".join(x.capitalize() if r.random() < 0.3 else x for x in t.split()),)

    return _Draft(name, [(s, "str")], "dict[str, int]", summary, body,
                  lambda t: dict(Counter(t.lower().split() if lower else t.split())),
                  draw, imports=imports)


@_op("dicts")
def _invert(rng: random.Random) -> _Draft:
    d = rng.choice(["mapping", "table", "codes", "lookup", "index", "d"])
    k, v = rng.choice([("key", "value"), ("k", "v"), ("name", "code"), ("src", "dst")])
    style = rng.randrange(3)
    if style == 0:
        body = f"return {{{v}: {k} for {k}, {v} in {d}.items()}}"
    elif style == 1:
        body = _lines("inverted = {}", f"for {k}, {v} in {d}.items():", f"    inverted[{v}] = {k}",
                      "return inverted")
    else:
        body = f"return dict(zip({d}.values(), {d}.keys()))"
    summary = rng.choice([f"Swap the keys and values of {d} (its values are unique).",
                          f"Return the inverse of {d}: each value maps back to its key."])
    name = _name(rng, ["invert", "reverse", "flip", "swap"], ["mapping", "dict", "table", "keys_values"])

    def draw(r: random.Random) -> tuple:
        keys = r.sample(_WORDS, r.randint(1, 4))
        return (dict(zip(keys, r.sample(range(100), len(keys)))),)

    return _Draft(name, [(d, "dict[str, int]")], "dict[int, str]", summary, body,
                  lambda m: {y: x for x, y in m.items()}, draw)


@_op("dicts")
def _group_by(rng: random.Random) -> _Draft:
    by_len = rng.random() < 0.5
    ws = rng.choice(["words", "names", "items", "tokens"])
    w = rng.choice(["word", "w", "name", "item"])
    key = f"len({w})" if by_len else f"{w}[0]"
    groups = rng.choice(["groups", "buckets", "by_key", "result"])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = _lines(f"{groups} = {{}}", f"for {w} in {ws}:",
                      f"    {groups}.setdefault({key}, []).append({w})", f"return {groups}")
    elif style == 1:
        body = _lines(f"{groups} = {{}}", f"for {w} in {ws}:", f"    k = {key}",
                      f"    if k not in {groups}:", f"        {groups}[k] = []",
                      f"    {groups}[k].append({w})", f"return {groups}")
    else:
        imports = ("from collections import defaultdict",)
        body = _lines(f"{groups} = defaultdict(list)", f"for {w} in {ws}:",
                      f"    {groups}[{key}].append({w})", f"return dict({groups})")
    what = "length" if by_len else "first letter"
    summary = rng.choice([f"Group the strings in {ws} by their {what}, keeping input order.",
                          f"Return a dict from {what} to the list of {ws} with that {what}."])
    name = f"group_by_{'length' if by_len else 'initial'}" + rng.choice(["", "s", "_of"])
    if by_len:
        name = rng.choice([name, "bucket_by_size", "words_by_length"])

    def ref(items: list[str]) -> dict:
        out: dict = {}
        for x in items:
            out.setdefault(len(x) if by_len else x[0], []).append(x)
        return out

    return _Draft(name, [(ws, "list[str]")], "dict[int, list[str]]" if by_len else
                  "dict[str, list[str]]", summary, body, ref,
                  lambda r: ([r.choice(_WORDS) for _ in range(r.randint(1, 6))],), imports=imports)


@_op("dicts")
def _merge(rng: random.Random) -> _Draft:
    use_max = rng.random() < 0.35
    a, b = rng.choice([("a", "b"), ("first", "second"), ("left", "right"), ("old", "new"),
                       ("base", "extra")])
    style = rng.randrange(2)
    if use_max:
        if style == 0:
            body = _lines(f"merged = dict({a})", f"for key, value in {b}.items():",
                          "    merged[key] = max(merged[key], value) if key in merged else value",
                          "return merged")
        else:
            body = _lines(f"keys = list({a}) + [k for k in {b} if k not in {a}]",
                          f"return {{k: max({a}.get(k, {b}.get(k)), {b}.get(k, {a}.get(k))) "
                          "for k in keys}")
        summary = f"Merge {a} and {b}; where both have a key keep the larger value."
        ref = lambda p, q: {k: max(p.get(k, q.get(k)), q.get(k, p.get(k))) for k in {**p, **q}}  # noqa
    else:
        if style == 0:
            body = _lines(f"merged = dict({a})", f"for key, value in {b}.items():",
                          "    merged[key] = merged.get(key, 0) + value", "return merged")
        else:
            body = f"return {{k: {a}.get(k, 0) + {b}.get(k, 0) for k in {a}.keys() | {b}.keys()}}"
        summary = rng.choice([f"Merge {a} and {b}, adding the values of keys present in both.",
                              f"Return the key-wise sum of the two counters {a} and {b}."])
        ref = lambda p, q: {k: p.get(k, 0) + q.get(k, 0) for k in {**p, **q}}  # noqa: E731
    name = _name(rng, ["merge", "combine", "join", "union"],
                 ["max", "maxima", "keep_larger"] if use_max else ["sum", "counts", "totals", "add"])

    def draw(r: random.Random) -> tuple:
        pool = r.sample(_WORDS, 5)
        return tuple({w: r.randint(-5, 20) for w in r.sample(pool, r.randint(0, 4))} for _ in "ab")

    return _Draft(name, [(a, "dict[str, int]"), (b, "dict[str, int]")], "dict[str, int]",
                  summary, body, ref, draw)


@_op("dicts")
def _filter_dict(rng: random.Random) -> _Draft:
    t = rng.randint(0, 15)
    keep_high = rng.random() < 0.6
    d = rng.choice(["scores", "stock", "inventory", "counts", "prices", "ages"])
    cond = f"value >= {t}" if keep_high else f"value < {t}"
    style = rng.randrange(3)
    if style == 0:
        body = f"return {{key: value for key, value in {d}.items() if {cond}}}"
    elif style == 1:
        body = _lines("kept = {}", f"for key, value in {d}.items():", f"    if {cond}:",
                      "        kept[key] = value", "return kept")
    else:
        body = f"return dict(filter(lambda item: item[1] {cond.split(' ', 1)[1]}, {d}.items()))"
    rel = f"at least {t}" if keep_high else f"below {t}"
    summary = rng.choice([f"Keep only the entries of {d} whose value is {rel}.",
                          f"Return a new dict with the items of {d} that have a value {rel}."])
    name = _name(rng, ["filter", "select", "keep"], [f"{d}", f"{'high' if keep_high else 'low'}_{d}",
                                                     "entries"])
    return _Draft(name, [(d, "dict[str, int]")], "dict[str, int]", summary, body,
                  lambda m: {k: v for k, v in m.items() if (v >= t if keep_high else v < t)},
                  lambda r: ({w: r.randint(0, 30) for w in r.sample(_WORDS, r.randint(1, 5))},))


@_op("dicts")
def _arg_extreme(rng: random.Random) -> _Draft:
    biggest = rng.random() < 0.6
    d = rng.choice(["scores", "votes", "sales", "counts", "ratings", "stock"])
    fn, cmp = ("max", ">") if biggest else ("min", "<")
    style = rng.randrange(3)
    if style == 0:
        body = f"return {fn}({d}, key={d}.get)"
    elif style == 1:
        body = _lines("best = None", f"for key in {d}:",
                      f"    if best is None or {d}[key] {cmp} {d}[best]:",
                      "        best = key", "return best")
    else:
        sign = "-" if biggest else ""
        body = f"return sorted({d}.items(), key=lambda kv: {sign}kv[1])[0][0]"
    adj = "largest" if biggest else "smallest"
    summary = rng.choice([f"Return the key of {d} with the {adj} value (the first such key on ties).",
                          f"Find which key in the non-empty dict {d} has the {adj} value."])
    name = _name(rng, ["top" if biggest else "bottom", "best" if biggest else "worst", "key_of"],
                 [d, "key", adj])
    ref = (lambda m: max(m, key=m.get)) if biggest else (lambda m: min(m, key=m.get))
    return _Draft(name, [(d, "dict[str, int]")], "str", summary, body, ref,
                  lambda r: ({w: r.randint(0, 20) for w in r.sample(_WORDS, r.randint(1, 5))},))


@_op("dicts")
def _order_total(rng: random.Random) -> _Draft:
    default = rng.choice([0, 0, 1, 5])
    prices, order = rng.choice([("prices", "order"), ("price_list", "basket"), ("costs", "cart"),
                                ("rates", "usage")])
    style = rng.randrange(2)
    if style == 0:
        body = f"return sum({prices}.get(item, {default}) * qty for item, qty in {order}.items())"
    else:
        body = _lines("total = 0", f"for item, qty in {order}.items():",
                      f"    total += {prices}.get(item, {default}) * qty", "return total")
    summary = rng.choice([f"Return the total cost of {order} given unit {prices}; unknown items "
                          f"cost {default}.", f"Price {order} (item -> quantity) with {prices}, "
                          f"charging {default} for items without a price."])
    name = _name(rng, ["order", "basket", "cart", "bill"], ["total", "cost", "price", "amount"])

    def draw(r: random.Random) -> tuple:
        pool = r.sample(_WORDS, 5)
        return ({w: r.randint(1, 20) for w in pool[:3]},
                {w: r.randint(1, 5) for w in r.sample(pool, r.randint(1, 4))})

    return _Draft(name, [(prices, "dict[str, int]"), (order, "dict[str, int]")], "int", summary,
                  body, lambda p, o: sum(p.get(i, default) * q for i, q in o.items()), draw)


# ---------------------------------------------------------------- recursion


@_op("recursion")
def _factorial(rng: random.Random) -> _Draft:
    step = rng.choice([1, 1, 2])
    name = rng.choice(["factorial", "fact", "product_down"] if step == 1 else
                      ["double_factorial", "semi_factorial", "odd_even_product"])
    n = rng.choice(["n", "k", "num", "m"])
    style = rng.randrange(3)
    params = [(n, "int")]
    if style == 0:
        body = _lines(f"if {n} <= 1:", "    return 1", f"return {n} * {name}({n} - {step})")
    elif style == 1:
        body = f"return 1 if {n} <= 1 else {n} * {name}({n} - {step})"
    else:
        params.append(("acc", "int = 1"))
        body = _lines(f"if {n} <= 1:", "    return acc", f"return {name}({n} - {step}, acc * {n})")
    summary = (rng.choice([f"Return {n}! computed recursively.", f"Compute the factorial of {n} "
                           "with recursion (0! == 1)."]) if step == 1 else
               f"Return the double factorial {n}!! = {n} * ({n} - 2) * ... recursively.")

    def ref(v: int) -> int:
        return 1 if v <= 1 else v * ref(v - step)

    return _Draft(name, params, "int", summary, body, ref, lambda r: (r.randint(0, 15),))


@_op("recursion")
def _fibonacci(rng: random.Random) -> _Draft:
    a, b = rng.choice([(0, 1), (0, 1), (2, 1), (1, 1), (3, 2), (1, 3)])
    name = rng.choice(["fib", "fibonacci", "nth_term", "sequence_term", "lucas_like"])
    n = rng.choice(["n", "index", "k", "i"])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    decorator = ""
    if style == 2:
        imports = rng.choice([("from functools import lru_cache",), ("import functools",)])
        decorator = "@lru_cache(maxsize=None)" if "lru" in imports[0] else "@functools.cache"
    if style == 1:
        body = _lines(f"if {n} < 2:", f"    return {a} if {n} == 0 else {b}",
                      f"return {name}({n} - 1) + {name}({n} - 2)")
    else:
        body = _lines(f"if {n} == 0:", f"    return {a}", f"if {n} == 1:", f"    return {b}",
                      f"return {name}({n} - 1) + {name}({n} - 2)")
    summary = rng.choice([f"Return term {n} of the sequence starting {a}, {b} where each term is "
                          "the sum of the previous two.",
                          f"Compute the {n}-th Fibonacci-style number with seeds {a} and {b}."])

    @functools.lru_cache(maxsize=None)
    def ref(v: int) -> int:
        return a if v == 0 else b if v == 1 else ref(v - 1) + ref(v - 2)

    return _Draft(name, [(n, "int")], "int", summary, body, ref, lambda r: (r.randint(0, 18),),
                  imports=imports, decorator=decorator)


def _nested(rng: random.Random, depth: int = 0) -> list:
    out: list = []
    for _ in range(rng.randint(0, 4)):
        if depth < 3 and rng.random() < 0.3:
            out.append(_nested(rng, depth + 1))
        else:
            out.append(rng.randint(-9, 20))
    return out


@_op("recursion")
def _nested_op(rng: random.Random) -> _Draft:
    mode = rng.choice(["sum", "count", "flatten", "depth"])
    xs = rng.choice(["data", "items", "nested", "tree", "xs"])
    item = rng.choice(["item", "x", "element", "node"])
    is_list = f"isinstance({item}, list)"
    name = {"sum": ["nested_sum", "deep_sum", "sum_all", "total_nested"],
            "count": ["count_leaves", "count_numbers", "deep_count", "leaf_count"],
            "flatten": ["flatten", "flat_list", "deep_flatten", "unnest"],
            "depth": ["nesting_depth", "max_depth", "list_depth", "depth_of"]}[mode]
    name = rng.choice(name)
    style = rng.randrange(2)
    if mode == "sum":
        body = (_lines("total = 0", f"for {item} in {xs}:", f"    if {is_list}:",
                       f"        total += {name}({item})", "    else:", f"        total += {item}",
                       "return total") if style == 0 else
                f"return sum({name}({item}) if {is_list} else {item} for {item} in {xs})")
        summary = f"Return the sum of all integers in the arbitrarily nested list {xs}."
        ref: Callable[[list], Any] = \
            lambda v: sum(ref(e) if isinstance(e, list) else e for e in v)  # noqa: E731
        ret = "int"
    elif mode == "count":
        body = (_lines("count = 0", f"for {item} in {xs}:",
                       f"    count += {name}({item}) if {is_list} else 1", "return count")
                if style == 0 else
                f"return sum({name}({item}) if {is_list} else 1 for {item} in {xs})")
        summary = f"Count the integers anywhere inside the nested list {xs}."
        ref = lambda v: sum(ref(e) if isinstance(e, list) else 1 for e in v)  # noqa: E731
        ret = "int"
    elif mode == "flatten":
        body = (_lines("flat = []", f"for {item} in {xs}:", f"    if {is_list}:",
                       f"        flat.extend({name}({item}))", "    else:",
                       f"        flat.append({item})", "return flat") if style == 0 else
                _lines(f"if not {xs}:", "    return []", f"head, rest = {xs}[0], {xs}[1:]",
                       "if isinstance(head, list):", f"    return {name}(head) + {name}(rest)",
                       f"return [head] + {name}(rest)"))
        summary = f"Flatten the nested list {xs} into a flat list of its integers, left to right."
        ref = lambda v: [y for e in v for y in (ref(e) if isinstance(e, list) else [e])]  # noqa
        ret = "list[int]"
    else:
        body = (f"return 1 + max(({name}({item}) for {item} in {xs} if {is_list}), default=0)"
                if style == 0 else
                _lines("deepest = 0", f"for {item} in {xs}:", f"    if {is_list}:",
                       f"        deepest = max(deepest, {name}({item}))", "return deepest + 1"))
        summary = f"Return how deeply {xs} is nested: a flat list has depth 1."
        ref = lambda v: 1 + max((ref(e) for e in v if isinstance(e, list)), default=0)  # noqa
        ret = "int"
    return _Draft(name, [(xs, "list")], ret, summary, body, ref, lambda r: (_nested(r),))


@_op("recursion")
def _power(rng: random.Random) -> _Draft:
    base, exp = rng.choice([("base", "exp"), ("x", "n"), ("b", "e"), ("value", "exponent")])
    name = rng.choice(["power", "pow_rec", "fast_power", "raise_to", "int_power"])
    style = rng.randrange(3)
    if style == 0:
        body = _lines(f"if {exp} == 0:", "    return 1", f"return {base} * {name}({base}, {exp} - 1)")
    elif style == 1:
        body = _lines(f"if {exp} == 0:", "    return 1", f"half = {name}({base}, {exp} // 2)",
                      f"if {exp} % 2:", f"    return half * half * {base}", "return half * half")
    else:
        body = _lines(f"if {exp} == 0:", "    return 1", f"if {exp} % 2 == 0:",
                      f"    return {name}({base} * {base}, {exp} // 2)",
                      f"return {base} * {name}({base}, {exp} - 1)")
    summary = rng.choice([f"Return {base} raised to the non-negative integer {exp}, recursively.",
                          f"Compute {base} ** {exp} without the ** operator."])
    return _Draft(name, [(base, "int"), (exp, "int")], "int", summary, body, lambda p, q: p ** q,
                  lambda r: (r.randint(-6, 9), r.randint(0, 10)))


@_op("recursion")
def _gcd_rec(rng: random.Random) -> _Draft:
    a, b = rng.choice([("a", "b"), ("x", "y"), ("m", "n"), ("first", "second")])
    name = rng.choice(["gcd", "greatest_common_divisor", "euclid", "common_factor", "hcf"])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if {b} == 0:", f"    return {a}", f"return {name}({b}, {a} % {b})")
    else:
        body = f"return {a} if {b} == 0 else {name}({b}, {a} % {b})"
    summary = rng.choice([f"Return the greatest common divisor of {a} and {b} (Euclid, recursive).",
                          f"Compute gcd({a}, {b}) for non-negative integers by recursion."])
    return _Draft(name, [(a, "int"), (b, "int")], "int", summary, body, math.gcd,
                  lambda r: (r.randint(0, 120) * r.choice([1, 2, 6]), r.randint(0, 90)))


@_op("recursion")
def _to_base(rng: random.Random) -> _Draft:
    base = rng.choice([2, 2, 3, 5, 8])
    n = rng.choice(["n", "number", "value", "num"])
    name = {2: ["to_binary", "binary_string", "bin_repr"], 8: ["to_octal", "octal_string"]}.get(
        base, [f"to_base_{base}", f"base{base}_digits"])
    name = rng.choice(name)
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if {n} < {base}:", f"    return str({n})",
                      f"return {name}({n} // {base}) + str({n} % {base})")
    else:
        body = _lines(f"q, r = divmod({n}, {base})",
                      f'return ({name}(q) if q else "") + str(r)')
    summary = rng.choice([f"Return the base-{base} representation of the non-negative integer {n}.",
                          f"Convert {n} >= 0 to a string of base-{base} digits using recursion."])

    def ref(v: int) -> str:
        return str(v) if v < base else ref(v // base) + str(v % base)

    return _Draft(name, [(n, "int")], "str", summary, body, ref, lambda r: (r.randint(0, 500),))


@_op("recursion")
def _string_rec(rng: random.Random) -> _Draft:
    mode = rng.choice(["reverse", "count"])
    s = rng.choice(["s", "text", "word", "chars"])
    style = rng.randrange(2)
    if mode == "reverse":
        name = rng.choice(["reverse", "reverse_string", "backwards", "rev"])
        body = (_lines(f"if len({s}) <= 1:", f"    return {s}", f"return {s}[-1] + {name}({s}[:-1])")
                if style == 0 else
                _lines(f"if not {s}:", '    return ""', f"return {name}({s}[1:]) + {s}[0]"))
        summary = rng.choice([f"Return {s} reversed, using recursion.",
                              f"Reverse the string {s} recursively (no slicing tricks like [::-1])."])
        ref: Callable[[str], Any] = lambda t: t[::-1]  # noqa: E731
    else:
        target = rng.choice("aeost")
        name = rng.choice([f"count_{target}", f"occurrences_of_{target}", f"num_{target}s"])
        body = (_lines(f"if not {s}:", "    return 0",
                       f'return ({s}[0] == "{target}") + {name}({s}[1:])') if style == 0 else
                _lines(f"if {s} == \"\":", "    return 0", f"rest = {name}({s}[1:])",
                       f'return rest + 1 if {s}[0] == "{target}" else rest'))
        summary = f'Count the occurrences of "{target}" in {s} recursively.'
        ref = lambda t: t.count(target)  # noqa: E731
    return _Draft(name, [(s, "str")], "str" if mode == "reverse" else "int", summary, body, ref,
                  lambda r: (r.choice(_WORDS) + r.choice(["", "s", "e", r.choice(_WORDS)]),))


@_op("recursion")
def _binary_search(rng: random.Random) -> _Draft:
    xs, target = rng.choice([("sorted_values", "target"), ("xs", "x"), ("items", "key"),
                             ("numbers", "wanted")])
    name = rng.choice(["binary_search", "find_index", "bsearch", "search_sorted"])
    body = _lines("if hi is None:", f"    hi = len({xs}) - 1", "if lo > hi:", "    return -1",
                  "mid = (lo + hi) // 2", f"if {xs}[mid] == {target}:", "    return mid",
                  f"if {xs}[mid] < {target}:", f"    return {name}({xs}, {target}, mid + 1, hi)",
                  f"return {name}({xs}, {target}, lo, mid - 1)")
    summary = rng.choice([f"Return the index of {target} in the sorted list {xs}, or -1 if absent.",
                          f"Recursively binary-search {xs} (sorted, distinct) for {target}."])

    def draw(r: random.Random) -> tuple:
        v = sorted(r.sample(range(-20, 60), r.randint(0, 8)))
        return (v, r.choice(v) if v and r.random() < 0.6 else r.randint(-20, 60))

    return _Draft(name, [(xs, "list[int]"), (target, "int"), ("lo", "int = 0"),
                         ("hi", "int | None = None")], "int", summary, body,
                  lambda v, t: v.index(t) if t in v else -1, draw,
                  param_docs={"lo": "first index of the search window",
                              "hi": "last index of the search window (default: the end)"})


# ---------------------------------------------------------------- sorting


@_op("sorting")
def _sort_algorithm(rng: random.Random) -> _Draft:
    desc = rng.random() < 0.3
    algo = rng.choice(["insertion", "selection", "bubble", "builtin"])
    xs = rng.choice(["values", "numbers", "xs", "data", "nums", "seq"])
    arr = rng.choice(["items", "arr", "result", "out"])
    gt, lt = ("<", ">") if desc else (">", "<")
    if algo == "insertion":
        body = _lines(f"{arr} = list({xs})", f"for i in range(1, len({arr})):", f"    current = {arr}[i]",
                      "    j = i - 1", f"    while j >= 0 and {arr}[j] {gt} current:",
                      f"        {arr}[j + 1] = {arr}[j]", "        j -= 1", f"    {arr}[j + 1] = current",
                      f"return {arr}")
    elif algo == "selection":
        body = _lines(f"{arr} = list({xs})", f"for i in range(len({arr})):", "    best = i",
                      f"    for j in range(i + 1, len({arr})):", f"        if {arr}[j] {lt} {arr}[best]:",
                      "            best = j", f"    {arr}[i], {arr}[best] = {arr}[best], {arr}[i]",
                      f"return {arr}")
    elif algo == "bubble":
        body = _lines(f"{arr} = list({xs})", f"size = len({arr})", "for i in range(size):",
                      "    for j in range(size - 1 - i):", f"        if {arr}[j] {gt} {arr}[j + 1]:",
                      f"            {arr}[j], {arr}[j + 1] = {arr}[j + 1], {arr}[j]", f"return {arr}")
    else:
        body = (f"return sorted({xs}, reverse=True)" if desc else f"return sorted({xs})")
    order = "descending" if desc else "ascending"
    how = "" if algo == "builtin" else f" using {algo} sort"
    summary = rng.choice([f"Return a new list with {xs} in {order} order{how}.",
                          f"Sort {xs} into {order} order{how}, leaving the input untouched."])
    name = (f"{algo}_sort" if algo != "builtin" else "sorted_copy") + ("_desc" if desc else "")
    name = rng.choice([name, f"sort_{order}" if algo == "builtin" else name, f"{algo}_sorted"])
    return _Draft(name, [(xs, "list[int]")], "list[int]", summary, body,
                  lambda v: sorted(v, reverse=desc), lambda r: (_ints(r, -20, 40, 0, 8),))


_WORD_KEYS = [  # (description, key code with {w}, key function)
    ("by length, then alphabetically", "(len({w}), {w})", lambda w: (len(w), w)),
    ("by last letter, then alphabetically", "({w}[-1], {w})", lambda w: (w[-1], w)),
    ("longest first, ties alphabetically", "(-len({w}), {w})", lambda w: (-len(w), w)),
    ("alphabetically ignoring case", "({w}.lower(), {w})", lambda w: (w.lower(), w)),
    ("by number of vowels, then alphabetically", '(sum(c in "aeiou" for c in {w}), {w})',
     lambda w: (sum(c in "aeiou" for c in w), w)),
]


@_op("sorting")
def _sort_words(rng: random.Random) -> _Draft:
    desc, code, key = rng.choice(_WORD_KEYS)
    ws = rng.choice(["words", "names", "tags", "labels", "tokens"])
    w = rng.choice(["w", "word", "s", "name"])
    style = rng.randrange(3)
    if style == 0:
        body = f"return sorted({ws}, key=lambda {w}: {code.format(w=w)})"
    elif style == 1:
        body = _lines(f"def sort_key({w}):", f"    return {code.format(w=w)}", "",
                      f"return sorted({ws}, key=sort_key)")
    else:
        body = _lines(f"ordered = list({ws})", f"ordered.sort(key=lambda {w}: {code.format(w=w)})",
                      "return ordered")
    summary = rng.choice([f"Return {ws} sorted {desc}.", f"Order {ws} {desc} and return a new list."])
    name = _name(rng, ["sort", "order", "rank", "arrange"], [ws, f"{ws}_by_key", "strings"])
    return _Draft(name, [(ws, "list[str]")], "list[str]", summary, body,
                  lambda v: sorted(v, key=key),
                  lambda r: ([r.choice(_WORDS).capitalize() if r.random() < 0.2 else r.choice(_WORDS)
                              for _ in range(r.randint(0, 6))],))


@_op("sorting")
def _top_k(rng: random.Random) -> _Draft:
    largest = rng.random() < 0.6
    xs, k = rng.choice([("scores", "k"), ("values", "n"), ("numbers", "count"), ("xs", "how_many")])
    style = rng.randrange(2)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = (f"return sorted({xs}, reverse=True)[:{k}]" if largest else
                f"return sorted({xs})[:{k}]")
    else:
        imports = ("import heapq",)
        body = f"return heapq.{'nlargest' if largest else 'nsmallest'}({k}, {xs})"
    adj, order = ("largest", "from largest down") if largest else ("smallest", "from smallest up")
    summary = rng.choice([f"Return the {k} {adj} elements of {xs}, {order}.",
                          f"Pick the top {k} ({adj}) numbers in {xs}, sorted {order}."])
    name = _name(rng, ["top" if largest else "bottom", adj, "first"], ["k", "n", "values", "items"])
    ref = (lambda v, m: sorted(v, reverse=True)[:m]) if largest else (lambda v, m: sorted(v)[:m])
    return _Draft(name, [(xs, "list[int]"), (k, "int")], "list[int]", summary, body, ref,
                  lambda r: (_ints(r, 0, 50, 0, 8), r.randint(0, 4)), imports=imports)


@_op("sorting")
def _merge_sorted(rng: random.Random) -> _Draft:
    a, b = rng.choice([("a", "b"), ("left", "right"), ("first", "second"), ("xs", "ys")])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = _lines("merged = []", "i = j = 0", f"while i < len({a}) and j < len({b}):",
                      f"    if {a}[i] <= {b}[j]:", f"        merged.append({a}[i])", "        i += 1",
                      "    else:", f"        merged.append({b}[j])", "        j += 1",
                      f"return merged + {a}[i:] + {b}[j:]")
    elif style == 1:
        body = f"return sorted({a} + {b})"
    else:
        imports = ("import heapq",)
        body = f"return list(heapq.merge({a}, {b}))"
    summary = rng.choice([f"Merge the sorted lists {a} and {b} into one sorted list.",
                          f"Combine two ascending lists, {a} and {b}, keeping the result sorted."])
    name = rng.choice(["merge_sorted", "merge_lists", "combine_sorted", "merge_two", "zip_merge"])
    return _Draft(name, [(a, "list[int]"), (b, "list[int]")], "list[int]", summary, body,
                  lambda p, q: sorted(p + q),
                  lambda r: (sorted(_ints(r, 0, 30, 0, 5)), sorted(_ints(r, 0, 30, 0, 5))),
                  imports=imports)


@_op("sorting")
def _is_sorted(rng: random.Random) -> _Draft:
    strict = rng.random() < 0.4
    xs = rng.choice(["values", "xs", "seq", "numbers", "items"])
    op = "<" if strict else "<="
    style = rng.randrange(3)
    if style == 0:
        body = f"return all(a {op} b for a, b in zip({xs}, {xs}[1:]))"
    elif style == 1:
        body = _lines(f"for i in range(1, len({xs})):", f"    if not {xs}[i - 1] {op} {xs}[i]:",
                      "        return False", "return True")
    else:
        body = (f"return {xs} == sorted(set({xs}))" if strict else f"return {xs} == sorted({xs})")
    how = "strictly increasing" if strict else "sorted in non-decreasing order"
    summary = rng.choice([f"Return True if {xs} is {how}.", f"Check whether {xs} is {how}."])
    name = rng.choice(["is_strictly_increasing", "strictly_ascending"] if strict else
                      ["is_sorted", "in_order", "is_non_decreasing", "sorted_already"])

    def draw(r: random.Random) -> tuple:
        v = _ints(r, 0, 9, 0, 6)
        return (sorted(v) if r.random() < 0.5 else v,)

    return _Draft(name, [(xs, "list[int]")], "bool", summary, body,
                  lambda v: all(p < q if strict else p <= q for p, q in zip(v, v[1:])), draw)


@_op("sorting")
def _median(rng: random.Random) -> _Draft:
    xs = rng.choice(["values", "samples", "numbers", "data", "scores"])
    s = rng.choice(["ordered", "s", "ranked"])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"{s} = sorted({xs})", f"n = len({s})",
                      f"return ({s}[(n - 1) // 2] + {s}[n // 2]) / 2")
    else:
        body = _lines(f"{s} = sorted({xs})", f"mid = len({s}) // 2", f"if len({s}) % 2:",
                      f"    return float({s}[mid])", f"return ({s}[mid - 1] + {s}[mid]) / 2")
    summary = rng.choice([f"Return the median of the non-empty list {xs} as a float.",
                          f"Compute the middle value of {xs}; for even lengths average the two "
                          "middle values."])
    name = _name(rng, ["median", "middle"], ["of", "value", xs])

    def ref(v: list[int]) -> float:
        o = sorted(v)
        return (o[(len(o) - 1) // 2] + o[len(o) // 2]) / 2

    return _Draft(name, [(xs, "list[int]")], "float", summary, body, ref,
                  lambda r: (_ints(r, -10, 40, 1, 7),))


@_op("sorting")
def _argsort(rng: random.Random) -> _Draft:
    xs = rng.choice(["values", "scores", "xs", "weights"])
    style = rng.randrange(3)
    if style == 0:
        body = f"return sorted(range(len({xs})), key=lambda i: {xs}[i])"
    elif style == 1:
        body = f"return [i for _, i in sorted((v, i) for i, v in enumerate({xs}))]"
    else:
        body = f"return sorted(range(len({xs})), key={xs}.__getitem__)"
    summary = rng.choice([f"Return the indices that would sort {xs} ascending (stable on ties).",
                          f"Compute the argsort of {xs}: positions ordered by their values."])
    name = rng.choice(["argsort", "sorted_indices", "rank_order", "order_indices"])
    return _Draft(name, [(xs, "list[int]")], "list[int]", summary, body,
                  lambda v: sorted(range(len(v)), key=lambda i: v[i]),
                  lambda r: (_ints(r, 0, 9, 0, 7),))


# ---------------------------------------------------------------- math


def _is_prime(v: int) -> bool:
    return v >= 2 and all(v % d for d in range(2, math.isqrt(v) + 1))


@_op("math")
def _prime(rng: random.Random) -> _Draft:
    n = rng.choice(["n", "number", "candidate", "value"])
    d = rng.choice(["d", "i", "divisor", "k"])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = _lines(f"if {n} < 2:", "    return False", f"{d} = 2", f"while {d} * {d} <= {n}:",
                      f"    if {n} % {d} == 0:", "        return False", f"    {d} += 1", "return True")
    elif style == 1:
        imports = ("import math",)
        body = _lines(f"if {n} < 2:", "    return False",
                      f"return all({n} % {d} for {d} in range(2, math.isqrt({n}) + 1))")
    else:
        body = _lines(f"if {n} < 2:", "    return False", f"for {d} in range(2, int({n} ** 0.5) + 1):",
                      f"    if {n} % {d} == 0:", "        return False", "return True")
    summary = rng.choice([f"Return True if {n} is a prime number.",
                          f"Check {n} for primality by trial division."])
    name = rng.choice(["is_prime", "prime", "check_prime", "is_prime_number"])
    return _Draft(name, [(n, "int")], "bool", summary, body, _is_prime,
                  lambda r: (r.choice([r.randint(-3, 200), r.choice([2, 3, 5, 7, 11, 13, 97, 101])]),),
                  imports=imports)


@_op("math")
def _gcd_lcm(rng: random.Random) -> _Draft:
    lcm = rng.random() < 0.5
    a, b = rng.choice([("a", "b"), ("x", "y"), ("m", "n"), ("p", "q")])
    style = rng.randrange(2)
    imports: tuple[str, ...] = ()
    if lcm:
        if style == 0:
            imports = ("import math",)
            body = f"return {a} * {b} // math.gcd({a}, {b})"
        else:
            body = _lines(f"multiple = max({a}, {b})", f"while multiple % {a} or multiple % {b}:",
                          f"    multiple += max({a}, {b})", "return multiple")
        summary = rng.choice([f"Return the least common multiple of the positive integers {a} and {b}.",
                              f"Compute lcm({a}, {b})."])
        name = rng.choice(["lcm", "least_common_multiple", "smallest_common_multiple"])
        ref: Callable[[int, int], int] = lambda p, q: p * q // math.gcd(p, q)  # noqa: E731
    else:
        if style == 0:
            body = _lines(f"while {b}:", f"    {a}, {b} = {b}, {a} % {b}", f"return {a}")
        else:
            imports = ("import math",)
            body = f"return math.gcd({a}, {b})"
        summary = rng.choice([f"Return the greatest common divisor of {a} and {b}.",
                              f"Compute gcd({a}, {b}) iteratively."])
        name = rng.choice(["gcd", "greatest_divisor", "common_divisor", "gcd_iter"])
        ref = math.gcd
    return _Draft(name, [(a, "int"), (b, "int")], "int", summary, body, ref,
                  lambda r: (r.randint(1, 40) * r.choice([1, 3]), r.randint(1, 36)), imports=imports)


@_op("math")
def _divisors(rng: random.Random) -> _Draft:
    mode = rng.choice(["count", "sum_proper", "list"])
    n = rng.choice(["n", "number", "value", "num"])
    d = rng.choice(["d", "i", "k", "divisor"])
    style = rng.randrange(2)
    if mode == "count":
        body = (f"return sum(1 for {d} in range(1, {n} + 1) if {n} % {d} == 0)" if style == 0 else
                _lines("count = 0", f"for {d} in range(1, {n} + 1):", f"    if {n} % {d} == 0:",
                       "        count += 1", "return count"))
        summary, ret = f"Return how many positive divisors {n} has.", "int"
        ref: Callable[[int], Any] = lambda v: sum(1 for x in range(1, v + 1) if v % x == 0)  # noqa
        name = rng.choice(["count_divisors", "divisor_count", "num_divisors", "tau"])
    elif mode == "sum_proper":
        body = (f"return sum({d} for {d} in range(1, {n}) if {n} % {d} == 0)" if style == 0 else
                _lines("total = 0", f"for {d} in range(1, {n} // 2 + 1):", f"    if {n} % {d} == 0:",
                       f"        total += {d}", "return total"))
        summary, ret = f"Return the sum of the proper divisors of {n} (divisors less than {n}).", "int"
        ref = lambda v: sum(x for x in range(1, v) if v % x == 0)  # noqa: E731
        name = rng.choice(["aliquot_sum", "sum_proper_divisors", "proper_divisor_sum"])
    else:
        body = (f"return [{d} for {d} in range(1, {n} + 1) if {n} % {d} == 0]" if style == 0 else
                _lines("found = []", f"for {d} in range(1, {n} + 1):", f"    if {n} % {d} == 0:",
                       f"        found.append({d})", "return found"))
        summary, ret = f"Return the positive divisors of {n} in increasing order.", "list[int]"
        ref = lambda v: [x for x in range(1, v + 1) if v % x == 0]  # noqa: E731
        name = rng.choice(["divisors", "list_divisors", "factors_of", "all_divisors"])
    return _Draft(name, [(n, "int")], ret, summary, body, ref, lambda r: (r.randint(1, 120),))


@_op("math")
def _power_sum(rng: random.Random) -> _Draft:
    p = rng.choice([1, 2, 3])
    n = rng.choice(["n", "count", "upto", "limit"])
    i = rng.choice(["i", "k", "j"])
    style = rng.randrange(3)
    pw = "" if p == 1 else f" ** {p}"
    formula = {1: f"{n} * ({n} + 1) // 2", 2: f"{n} * ({n} + 1) * (2 * {n} + 1) // 6",
               3: f"({n} * ({n} + 1) // 2) ** 2"}[p]
    if style == 0:
        body = f"return {formula}"
    elif style == 1:
        body = f"return sum({i}{pw} for {i} in range(1, {n} + 1))"
    else:
        body = _lines("total = 0", f"for {i} in range(1, {n} + 1):", f"    total += {i}{pw}",
                      "return total")
    what = {1: "integers", 2: "squares", 3: "cubes"}[p]
    summary = rng.choice([f"Return the sum of the first {n} positive {what}.",
                          f"Compute 1{pw.replace(' ', '')} + 2{pw.replace(' ', '')} + ... + "
                          f"{n}{pw.replace(' ', '')}."])
    name = rng.choice({1: ["triangular", "sum_first_n", "triangle_number"],
                       2: ["sum_of_squares", "square_pyramidal", "squares_total"],
                       3: ["sum_of_cubes", "cubes_total", "cube_sum"]}[p])
    return _Draft(name, [(n, "int")], "int", summary, body,
                  lambda v: sum(x ** p for x in range(1, v + 1)), lambda r: (r.randint(0, 60),))


@_op("math")
def _collatz(rng: random.Random) -> _Draft:
    n = rng.choice(["n", "start", "value", "x"])
    steps = rng.choice(["steps", "count", "moves"])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"{steps} = 0", f"while {n} != 1:",
                      f"    {n} = {n} // 2 if {n} % 2 == 0 else 3 * {n} + 1", f"    {steps} += 1",
                      f"return {steps}")
    else:
        body = _lines(f"{steps} = 0", f"while {n} > 1:", f"    if {n} % 2:", f"        {n} = 3 * {n} + 1",
                      "    else:", f"        {n} //= 2", f"    {steps} += 1", f"return {steps}")
    summary = rng.choice([f"Return the number of Collatz steps needed to bring {n} down to 1.",
                          f"Count iterations of n -> n/2 (even) or 3n+1 (odd) from {n} until 1."])
    name = rng.choice(["collatz_steps", "collatz_length", "hailstone_steps", "steps_to_one"])

    def ref(v: int) -> int:
        c = 0
        while v != 1:
            v, c = (v // 2 if v % 2 == 0 else 3 * v + 1), c + 1
        return c

    return _Draft(name, [(n, "int")], "int", summary, body, ref, lambda r: (r.randint(1, 200),))


@_op("math")
def _isqrt(rng: random.Random) -> _Draft:
    n = rng.choice(["n", "value", "area", "x"])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        imports = ("import math",)
        body = f"return math.isqrt({n})"
    elif style == 1:
        body = _lines("root = 0", f"while (root + 1) * (root + 1) <= {n}:", "    root += 1",
                      "return root")
    else:
        body = _lines(f"lo, hi = 0, {n}", "while lo < hi:", "    mid = (lo + hi + 1) // 2",
                      f"    if mid * mid <= {n}:", "        lo = mid", "    else:",
                      "        hi = mid - 1",
                      "return lo")
    summary = rng.choice([f"Return the integer square root of {n}: the largest r with r * r <= {n}.",
                          f"Compute floor(sqrt({n})) exactly for a non-negative integer."])
    name = rng.choice(["isqrt", "int_sqrt", "floor_sqrt", "integer_root"])
    return _Draft(name, [(n, "int")], "int", summary, body, math.isqrt,
                  lambda r: (r.choice([r.randint(0, 3000), r.randint(0, 50) ** 2]),), imports=imports)


@_op("math")
def _digits_reversed(rng: random.Random) -> _Draft:
    check = rng.random() < 0.4
    n = rng.choice(["n", "number", "value", "num"])
    style = rng.randrange(2)
    if style == 0:
        core = f"int(str({n})[::-1])"
        body = f"return str({n}) == str({n})[::-1]" if check else f"return {core}"
    else:
        body = _lines("rev = 0", f"rest = {n}", "while rest:", "    rev = rev * 10 + rest % 10",
                      "    rest //= 10", f"return rev == {n}" if check else "return rev")
    if check:
        summary = rng.choice([f"Return True if the decimal digits of {n} read the same backwards.",
                              f"Check whether the non-negative integer {n} is a palindrome."])
        name = rng.choice(["is_palindromic_number", "number_is_palindrome", "digit_palindrome"])
        ref: Callable[[int], Any] = lambda v: str(v) == str(v)[::-1]  # noqa: E731
    else:
        summary = rng.choice([f"Return {n} with its decimal digits reversed (leading zeros drop).",
                              f"Reverse the digits of the non-negative integer {n}."])
        name = rng.choice(["reverse_digits", "reversed_number", "flip_digits", "mirror_number"])
        ref = lambda v: int(str(v)[::-1])  # noqa: E731

    def draw(r: random.Random) -> tuple:
        if check and r.random() < 0.5:
            h = str(r.randint(1, 999))
            return (int(h + r.choice(["", str(r.randint(0, 9))]) + h[::-1]),)
        return (r.randint(0, 99999),)

    return _Draft(name, [(n, "int")], "bool" if check else "int", summary, body, ref, draw)


@_op("math")
def _popcount(rng: random.Random) -> _Draft:
    n = rng.choice(["n", "mask", "bits", "x", "flags"])
    style = rng.randrange(3)
    if style == 0:
        body = f'return bin({n}).count("1")'
    elif style == 1:
        body = _lines("count = 0", f"while {n}:", f"    count += {n} & 1", f"    {n} >>= 1",
                      "return count")
    else:
        body = _lines("count = 0", f"while {n}:", f"    {n} &= {n} - 1", "    count += 1", "return count")
    summary = rng.choice([f"Return the number of 1 bits in the binary form of {n} (>= 0).",
                          f"Count the set bits of the non-negative integer {n}."])
    name = rng.choice(["popcount", "count_set_bits", "bit_count", "hamming_weight", "ones_in"])
    return _Draft(name, [(n, "int")], "int", summary, body, lambda v: bin(v).count("1"),
                  lambda r: (r.randint(0, 5000),))


# ---------------------------------------------------------------- conditionals

_LABEL_WORDS = ["Fizz", "Buzz", "Foo", "Bar", "Ping", "Pong", "Zip", "Zap", "Tick", "Tock"]


@_op("conditionals")
def _fizzbuzz(rng: random.Random) -> _Draft:
    a, b = rng.sample([2, 3, 4, 5, 7], 2)
    w1, w2 = rng.sample(_LABEL_WORDS, 2)
    n = rng.choice(["n", "number", "i", "value"])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if {n} % {a} == 0 and {n} % {b} == 0:", f'    return "{w1}{w2}"',
                      f"if {n} % {a} == 0:", f'    return "{w1}"', f"if {n} % {b} == 0:",
                      f'    return "{w2}"', f"return str({n})")
    else:
        out = rng.choice(["label", "word", "out"])
        body = _lines(f'{out} = ""', f"if {n} % {a} == 0:", f'    {out} += "{w1}"',
                      f"if {n} % {b} == 0:", f'    {out} += "{w2}"', f"return {out} or str({n})")
    summary = rng.choice([f'Return "{w1}" for multiples of {a}, "{w2}" for multiples of {b}, '
                          f'"{w1}{w2}" for both, else {n} as a string.',
                          f"FizzBuzz variant with {a} -> {w1} and {b} -> {w2}."])
    name = rng.choice([f"{w1.lower()}_{w2.lower()}", "fizzbuzz_label", "label_number", "say"])
    ref = lambda v: ((w1 if v % a == 0 else "") + (w2 if v % b == 0 else "")) or str(v)  # noqa
    return _Draft(name, [(n, "int")], "str", summary, body, ref, lambda r: (r.randint(1, 100),))


_GRADE_LABELS = [["A", "B", "C", "D", "F"], ["excellent", "good", "fair", "poor", "failing"],
                 ["gold", "silver", "bronze", "copper", "none"], ["high", "upper", "middle",
                                                                  "lower", "bottom"]]


@_op("conditionals")
def _grade(rng: random.Random) -> _Draft:
    tiers = rng.randint(3, 5)
    cuts = sorted(rng.sample(range(30, 96, 5), tiers - 1), reverse=True)
    labels = rng.choice(_GRADE_LABELS)[:tiers - 1] + [rng.choice(_GRADE_LABELS)[-1]]
    labels[-1] = labels[-1] if labels[-1] not in labels[:-1] else "other"
    score = rng.choice(["score", "points", "mark", "percent"])
    style = rng.randrange(2)
    if style == 0:
        lines = []
        for i, (cut, lab) in enumerate(zip(cuts, labels)):
            lines += [f"{'if' if i == 0 else 'elif'} {score} >= {cut}:", f'    return "{lab}"']
        body = _lines(*lines, f'return "{labels[-1]}"')
    else:
        pairs = ", ".join(f'({c}, "{lab}")' for c, lab in zip(cuts, labels))
        body = _lines(f"for cutoff, label in ({pairs}):", f"    if {score} >= cutoff:",
                      "        return label", f'return "{labels[-1]}"')
    summary = rng.choice([f"Map {score} (0-100) to a grade label using cut-offs {cuts}.",
                          f"Return the tier name for {score}: the label of the first cut-off in "
                          f"{cuts} that it reaches, else \"{labels[-1]}\"."])
    name = _name(rng, ["grade", "tier", "rank", "classify"], [score, "label", "result", "level"])

    def ref(v: int) -> str:
        return next((lab for c, lab in zip(cuts, labels) if v >= c), labels[-1])

    return _Draft(name, [(score, "int")], "str", summary, body, ref, lambda r: (r.randint(0, 100),))


@_op("conditionals")
def _compare_label(rng: random.Random) -> _Draft:
    t = rng.choice([0, 0, rng.randint(-20, 50)])
    lo, eq, hi = rng.choice([("negative", "zero", "positive")] if t == 0 else [
        ("below", "at", "above"), ("low", "exact", "high"), ("under", "match", "over"),
        ("cold", "target", "hot")])
    x = rng.choice(["x", "value", "reading", "n", "temperature"])
    style = rng.randrange(3)
    if style == 0:
        body = _lines(f"if {x} < {t}:", f'    return "{lo}"', f"elif {x} == {t}:", f'    return "{eq}"',
                      "else:", f'    return "{hi}"')
    elif style == 1:
        body = f'return "{lo}" if {x} < {t} else "{eq}" if {x} == {t} else "{hi}"'
    else:
        body = _lines(f'labels = {{-1: "{lo}", 0: "{eq}", 1: "{hi}"}}',
                      f"return labels[({x} > {t}) - ({x} < {t})]")
    summary = rng.choice([f'Return "{lo}", "{eq}" or "{hi}" depending on how {x} compares to {t}.',
                          f'Classify {x} relative to {t} as "{lo}", "{eq}" or "{hi}".'])
    name = _name(rng, ["classify", "describe", "label", "compare"], [x, "sign", "level", "value"])
    return _Draft(name, [(x, "int")], "str", summary, body,
                  lambda v: lo if v < t else eq if v == t else hi,
                  lambda r: (r.choice([t, r.randint(t - 30, t + 30)]),))


@_op("conditionals")
def _leap_year(rng: random.Random) -> _Draft:
    y = rng.choice(["year", "y", "yr"])
    style = rng.randrange(3)
    imports: tuple[str, ...] = ()
    if style == 0:
        body = _lines(f"if {y} % 400 == 0:", "    return True", f"if {y} % 100 == 0:", "    return False",
                      f"return {y} % 4 == 0")
    elif style == 1:
        body = f"return {y} % 4 == 0 and ({y} % 100 != 0 or {y} % 400 == 0)"
    else:
        imports = ("import calendar",)
        body = f"return calendar.isleap({y})"
    summary = rng.choice([f"Return True if {y} is a leap year in the Gregorian calendar.",
                          f"Check the Gregorian leap-year rule for {y}."])
    name = rng.choice(["is_leap_year", "is_leap", "leap_year", "has_feb_29"])
    return _Draft(name, [(y, "int")], "bool", summary, body,
                  lambda v: v % 4 == 0 and (v % 100 != 0 or v % 400 == 0),
                  lambda r: (r.choice([r.randint(1800, 2400), r.randint(18, 24) * 100,
                                       r.randint(450, 600) * 4]),), imports=imports)


@_op("conditionals")
def _tiered_cost(rng: random.Random) -> _Draft:
    w1 = rng.randint(1, 5)
    w2 = w1 + rng.randint(2, 10)
    c1 = rng.randint(2, 9)
    c2 = c1 + rng.randint(1, 10)
    extra = rng.randint(1, 4)
    w = rng.choice(["weight", "kg", "size", "units", "minutes"])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if {w} <= {w1}:", f"    return {c1}", f"if {w} <= {w2}:", f"    return {c2}",
                      f"return {c2} + {extra} * ({w} - {w2})")
    else:
        body = _lines(f"if {w} <= {w1}:", f"    cost = {c1}", f"elif {w} <= {w2}:", f"    cost = {c2}",
                      "else:", f"    cost = {c2} + ({w} - {w2}) * {extra}", "return cost")
    summary = rng.choice([f"Return the price for {w}: {c1} up to {w1}, {c2} up to {w2}, then "
                          f"{extra} more per unit above {w2}.",
                          f"Compute a tiered fee for {w}: {c1} up to {w1}, {c2} up to {w2}, plus "
                          f"{extra} per unit beyond that."])
    name = _name(rng, ["shipping", "postage", "delivery", "parking", "service"], ["cost", "fee", "price"])
    return _Draft(name, [(w, "int")], "int", summary, body,
                  lambda v: c1 if v <= w1 else c2 if v <= w2 else c2 + extra * (v - w2),
                  lambda r: (r.randint(0, w2 + 10),))


@_op("conditionals")
def _triangle(rng: random.Random) -> _Draft:
    a, b, c = rng.choice([("a", "b", "c"), ("x", "y", "z"), ("side1", "side2", "side3"),
                          ("p", "q", "r")])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"lo, mid, hi = sorted(({a}, {b}, {c}))", "if lo <= 0 or lo + mid <= hi:",
                      '    return "invalid"', "if lo == hi:", '    return "equilateral"',
                      "if lo == mid or mid == hi:", '    return "isosceles"', 'return "scalene"')
    else:
        body = _lines(f"if min({a}, {b}, {c}) <= 0 or {a} + {b} <= {c} or {a} + {c} <= {b} "
                      f"or {b} + {c} <= {a}:", '    return "invalid"',
                      f"distinct = len({{{a}, {b}, {c}}})",
                      'return {1: "equilateral", 2: "isosceles"}.get(distinct, "scalene")')
    summary = rng.choice([f"Classify the triangle with sides {a}, {b}, {c} as equilateral, "
                          "isosceles, scalene or invalid.",
                          f"Return the kind of triangle ({a}, {b}, {c}) makes: \"equilateral\", "
                          "\"isosceles\", \"scalene\", or \"invalid\" if it cannot exist."])
    name = rng.choice(["triangle_type", "classify_triangle", "triangle_kind", "kind_of_triangle"])

    def ref(p: int, q: int, s: int) -> str:
        x, y, z = sorted((p, q, s))
        if x <= 0 or x + y <= z:
            return "invalid"
        return "equilateral" if x == z else "isosceles" if x == y or y == z else "scalene"

    def draw(r: random.Random) -> tuple:
        v = [r.randint(1, 9) for _ in range(3)]
        if r.random() < 0.3:
            v[1] = v[0]
        return tuple(v)

    return _Draft(name, [(a, "int"), (b, "int"), (c, "int")], "str", summary, body, ref, draw)


@_op("conditionals")
def _ticket_price(rng: random.Random) -> _Draft:
    child_age, senior_age = rng.randint(4, 14), rng.randint(60, 70)
    child, adult, senior = rng.randint(0, 8), rng.randint(10, 25), rng.randint(5, 12)
    age = rng.choice(["age", "years", "age_years"])
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if {age} < {child_age}:", f"    return {child}", f"if {age} >= {senior_age}:",
                      f"    return {senior}", f"return {adult}")
    else:
        body = (f"return {child} if {age} < {child_age} else {senior} if {age} >= {senior_age} "
                f"else {adult}")
    summary = rng.choice([f"Return the ticket price for someone aged {age}: {child} under "
                          f"{child_age}, {senior} from {senior_age}, otherwise {adult}.",
                          f"Price an admission ticket by age bracket: under {child_age} pays "
                          f"{child}, {senior_age} and over pays {senior}, everyone else {adult}."])
    name = _name(rng, ["ticket", "admission", "entry", "fare"], ["price", "cost", "for_age"])
    return _Draft(name, [(age, "int")], "int", summary, body,
                  lambda v: child if v < child_age else senior if v >= senior_age else adult,
                  lambda r: (r.randint(0, 90),))


@_op("conditionals")
def _max_of_three(rng: random.Random) -> _Draft:
    biggest = rng.random() < 0.6
    a, b, c = rng.choice([("a", "b", "c"), ("x", "y", "z"), ("first", "second", "third")])
    ge = ">=" if biggest else "<="
    style = rng.randrange(2)
    if style == 0:
        body = _lines(f"if {a} {ge} {b} and {a} {ge} {c}:", f"    return {a}", f"if {b} {ge} {c}:",
                      f"    return {b}", f"return {c}")
    else:
        best = rng.choice(["best", "winner", "pick"])
        body = _lines(f"{best} = {a}", f"if {b} {'>' if biggest else '<'} {best}:", f"    {best} = {b}",
                      f"if {c} {'>' if biggest else '<'} {best}:", f"    {best} = {c}", f"return {best}")
    adj = "largest" if biggest else "smallest"
    summary = rng.choice([f"Return the {adj} of {a}, {b} and {c} without using "
                          f"{'max' if biggest else 'min'}().",
                          f"Pick the {adj} of three integers using comparisons only."])
    name = rng.choice([f"{'max' if biggest else 'min'}_of_three", f"{adj}_of_three",
                       f"{'biggest' if biggest else 'least'}"])
    return _Draft(name, [(a, "int"), (b, "int"), (c, "int")], "int", summary, body,
                  (lambda *v: max(v)) if biggest else (lambda *v: min(v)),
                  lambda r: tuple(r.randint(-20, 20) for _ in range(3)))
