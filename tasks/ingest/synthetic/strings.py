"""The ``strings`` family: character classes, word order, acronyms, run-length encoding,
palindromes, Caesar shifts and longest/shortest words over generated text.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import itertools
import random

from chatpipe.tasks.ingest.synthetic.draft import _WORDS, _Draft, _lines, _name, _op, _text

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
