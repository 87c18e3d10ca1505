"""The ``dicts`` family: word counts, key/value swaps, grouping, merging, filtering, the key
of the largest/smallest value and order totals over small dictionaries.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import random
from collections import Counter

from chatpipe.tasks.ingest.synthetic.draft import _WORDS, _Draft, _lines, _name, _op, _sentence


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
