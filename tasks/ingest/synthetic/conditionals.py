"""The ``conditionals`` family: branching on values -- FizzBuzz variants, grades,
comparisons, leap years, tiered costs, triangle kinds, ticket prices, max/min of three.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import random

from chatpipe.tasks.ingest.synthetic.draft import _Draft, _lines, _name, _op

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
