"""The ``lists`` family: filtering, counting or summing by a predicate, running totals,
differences, chunking, dedup, rotation, dot products and ranges over lists of integers.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import itertools
import random

from chatpipe.tasks.ingest.synthetic.draft import _NUM_WORDS, _Draft, _ints, _lines, _name, _op

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
