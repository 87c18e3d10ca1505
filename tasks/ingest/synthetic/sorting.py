"""The ``sorting`` family: sorting algorithms written out, words sorted by a key, top-k,
merging sorted lists, sortedness checks, medians and argsort.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import random

from chatpipe.tasks.ingest.synthetic.draft import _WORDS, _Draft, _ints, _lines, _name, _op


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
