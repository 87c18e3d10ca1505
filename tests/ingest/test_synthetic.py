"""tasks.ingest.synthetic: deterministic, varied, self-checking samples."""

from __future__ import annotations

import ast
import re

import pytest

from chatpipe.tasks.common.sandbox import run_many
from chatpipe.tasks.ingest.synthetic import FAMILIES, Sample, generate


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return list(generate(500, seed=1234))


def test_families():
    assert len(FAMILIES) >= 7
    assert {"arithmetic", "strings", "lists", "dicts", "recursion"} <= set(FAMILIES)


def test_deterministic():
    assert list(generate(60, seed=7)) == list(generate(60, seed=7))
    assert list(generate(10, 7, ["strings"])) == list(generate(10, 7, ["strings"]))


def test_seed_sensitive():
    a, b = list(generate(60, seed=7)), list(generate(60, seed=8))
    assert sum(x.code != y.code for x, y in zip(a, b)) >= 55


def test_every_family_produces_samples():
    for family in FAMILIES:
        got = list(generate(12, seed=3, families=[family]))
        assert len(got) == 12 and {s.family for s in got} == {family}
    assert {s.family for s in generate(3 * len(FAMILIES), seed=3)} == set(FAMILIES)


def test_unknown_family():
    with pytest.raises(ValueError, match="nope"):
        generate(5, seed=0, families=["strings", "nope"])


def test_sample_structure(samples):
    for s in samples:
        assert s.program == s.code + "\n\n" + s.tests + "\n"
        tree = ast.parse(s.code)
        fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef))
        assert fn.name == s.name
        assert s.name not in {a.arg for a in fn.args.args}, s.code
        doc = ast.get_docstring(fn)
        assert doc and s.name + "(" in doc, s.code  # a docstring with an example call
        for line in s.tests.splitlines():
            test = ast.parse(line).body[0]
            assert isinstance(test, ast.Assert)
            call, expected = test.test.left, test.test.comparators[0]
            assert isinstance(call, ast.Call) and call.func.id == s.name
            ast.literal_eval(expected)  # expected values are literals, computed by the generator
        assert len(s.tests.splitlines()) >= 2


def test_variety(samples):
    assert len({s.code for s in samples}) == len(samples)
    assert len({s.name for s in samples}) >= 150
    styles = {k: sum(k in s.code for s in samples) for k in (">>>", "Args:", ":param", "E.g.")}
    assert all(count > 0 for count in styles.values()), styles


def test_near_duplicates_are_rare(samples):
    datasketch = pytest.importorskip("datasketch")
    lsh, kept = datasketch.MinHashLSH(threshold=0.8, num_perm=128), 0
    for i, s in enumerate(samples):
        tokens = re.findall(r"\w+|[^\w\s]", s.code)
        m = datasketch.MinHash(num_perm=128)
        m.update_batch([" ".join(tokens[j:j + 5]).encode() for j in range(len(tokens) - 4)])
        if not lsh.query(m):
            lsh.insert(str(i), m)
            kept += 1
    assert kept / len(samples) > 0.7


def test_samples_pass_in_sandbox(samples):
    outcomes = run_many([s.program for s in samples], timeout_s=5.0)
    failed = [(s.name, o.detail) for s, o in zip(samples, outcomes) if not o.passed]
    assert len(failed) <= 0.05 * len(samples), failed[:10]


def test_corrupted_samples_fail(samples):
    """The tests do not trust the code: a wrong body fails them."""
    picked = samples[:80]
    returns_none = [re.sub(r"\breturn\b.*", "return None", s.code) for s in picked]
    off_by_one = [re.sub(r"\breturn (.+)", r"return (\1) + 1", s.code) if "-> int:" in s.code
                  else None for s in picked]
    programs = [code + "\n\n" + s.tests + "\n" for code, s in zip(returns_none, picked)]
    programs += [code + "\n\n" + s.tests + "\n" for code, s in zip(off_by_one, picked) if code]
    assert len(programs) >= 95
    outcomes = run_many(programs, timeout_s=5.0)
    assert not [p for p, o in zip(programs, outcomes) if o.passed]
