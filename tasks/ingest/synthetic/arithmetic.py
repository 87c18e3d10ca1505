"""The ``arithmetic`` family: integer expressions -- affine maps, sums of multiples, digit
sums, quadratics, ceiling division, clamping, absolute differences.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import random

from chatpipe.tasks.ingest.synthetic.draft import _NUM_WORDS, _Draft, _lines, _name, _op, _signed


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
