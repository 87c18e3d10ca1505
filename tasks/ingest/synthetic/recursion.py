"""The ``recursion`` family: functions written recursively (factorials, Fibonacci-like
sequences, nested lists, powers, gcd, base conversion, strings, binary search).

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from typing import Any

from chatpipe.tasks.ingest.synthetic.draft import _WORDS, _Draft, _lines, _op


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
