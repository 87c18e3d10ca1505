"""The ``math`` family (named ``maths`` so it does not read as, or get imported as, the
standard ``math`` module it uses itself): primes, gcd/lcm, divisors, power sums,
Collatz steps, integer square roots, digit reversal and palindromes, bit counts.

Each op is registered with ``draft._op`` when this module is imported; the generator
picks ops by index, so their order here is part of the output for a given seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from chatpipe.tasks.ingest.synthetic.draft import _Draft, _lines, _op


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
