"""`chatpipe eval` (tasks/evals/evaluate.py) on the test suite's trained tiny model: real checkpoint, real
documents, real sandbox, real MLflow."""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatpipe.tasks.chat.turns import CHAT_PROMPTS, turn_problem
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.evals import evaluate
from chatpipe.tasks.train import checkpoint

from conftest import TINY, test_params

EVAL = [*TINY, "eval.humaneval.problems=8", "eval.humaneval.n_samples=3", "eval.humaneval.k=[1,3]",
        "eval.humaneval.max_new_tokens=24", "eval.humaneval.timeout_s=2.0", "eval.chat_max_tokens=16"]


def eval_project(root: Path, built, trained) -> Layout:
    """A project holding the built fixture's documents and tokenizer and the trained fixture's checkpoints."""
    (root / "data").mkdir(parents=True)
    (root / "artifacts").mkdir()
    (root / "data" / "documents").symlink_to(built[0].documents.resolve())
    (root / "artifacts" / "tokenizer").symlink_to(built[0].tokenizer.resolve())
    (root / "checkpoints").symlink_to(trained[0].checkpoints.resolve())
    return Layout(root)


def run_eval(layout: Layout, *overrides: str):
    with contextlib.chdir(layout.root):
        return evaluate.run(test_params(*EVAL, *overrides), layout)


@pytest.fixture(scope="module")
def evaluated(built, trained, tmp_path_factory):
    layout = eval_project(tmp_path_factory.mktemp("eval"), built, trained)
    return layout, run_eval(layout)


def test_metrics_have_the_contract_keys_and_sane_values(evaluated, built):
    layout, result = evaluated
    m = json.loads(layout.metrics("eval").read_text())
    assert m == json.loads(json.dumps(result.metrics))
    for key in ("val_loss", "val_ppl", "val_bpb", "per_source", "turn_rate", "chat", "humaneval", "checkpoint",
                "seconds"):
        assert key in m, key
    assert 0 < m["val_loss"] < 10 and m["val_bpb"] > 0
    assert math.isclose(m["val_ppl"], math.exp(m["val_loss"]), rel_tol=1e-4)
    assert Path(m["checkpoint"]) == checkpoint.latest(layout.checkpoints / "full")

    # uncapped, each source's tokens and bytes are exactly its validation split as the shards counted it
    shard_sources = built[2]["shard"].metrics["sources"]
    assert set(m["per_source"]) == {s for s, c in shard_sources.items() if c["val_documents"]}
    for src, s in m["per_source"].items():
        assert (s["tokens"], s["bytes"], s["documents"]) == (shard_sources[src]["val_tokens"],
                                                               shard_sources[src]["val_bytes"],
                                                               shard_sources[src]["val_documents"])
        assert math.isclose(s["ppl"], math.exp(s["loss"]), rel_tol=1e-4) and s["bpb"] > 0
    assert sum(s["tokens"] for s in m["per_source"].values()) == m["val_tokens"]
    nll = sum(s["loss"] * s["tokens"] for s in m["per_source"].values())
    assert math.isclose(m["val_loss"], nll / m["val_tokens"], rel_tol=1e-4)
    assert math.isclose(m["val_bpb"], nll / math.log(2) / m["val_bytes"], rel_tol=1e-4)
    # assistant-turn bits per byte: on the chat sources only, over the assistant's text
    answers = {src for src, s in m["per_source"].items() if "assistant_bpb" in s}
    assert answers == {"chitchat"} and 0 < m["val_assistant_bpb"] == pytest.approx(
        m["per_source"]["chitchat"]["assistant_bpb"], rel=1e-3)

    assert len(m["chat"]) == len(CHAT_PROMPTS) == 12
    assert m["turn_rate"] == pytest.approx(sum(c["problem"] is None for c in m["chat"]) / 12, abs=1e-4)
    for c in m["chat"]:
        assert set(c) >= {"prompt", "completion", "stopped", "problem"} and c["tokens"] <= 16
        assert c["problem"] == turn_problem(c)  # the gate's definition

    he = m["humaneval"]
    assert (he["problems"], he["samples"], he["completions"]) == (8, 3, 8 * 4)
    assert sum(he["statuses"].values()) == 32 and set(he["statuses"]) == {"passed", "failed", "timeout", "killed",
                                                                         "error"}
    assert set(he["pass@k"]) == {"1", "3"} and 0 <= he["pass@1_greedy"] <= 1
    assert he["truncated_prompts"] == 8  # block 64 - 24 new tokens: every HumanEval prompt is longer than 40
    assert "eval: val loss" in result.summary and "HumanEval pass@1" in result.summary
    assert result.mlflow_run_id


def test_reports_are_written(evaluated):
    layout, _ = evaluated
    reports = layout.root / "reports"
    text = (reports / "eval.md").read_text()
    for fragment in ("| validation loss |", "## Validation by source", "| stdlib |", "## Chat",
                     "Hi! How are you doing today?", "## HumanEval", "| timeout |", "## Time"):
        assert fragment in text, fragment
    samples = [json.loads(line) for line in (reports / "humaneval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 * 3 and all(set(s) == {"task_id", "completion"} for s in samples)
    assert [s["task_id"] for s in samples[:4]] == ["HumanEval/0"] * 3 + ["HumanEval/1"]
    results = [json.loads(line) for line in (reports / "humaneval_results.jsonl").read_text().splitlines()]
    assert len(results) == 8 * 4 and sum(r["greedy"] for r in results) == 8
    assert all(r["status"] in ("passed", "failed", "timeout", "killed", "error") for r in results)
    assert not [p for p in reports.iterdir() if p.name.startswith(".")]  # no temp files left


def test_greedy_numbers_are_deterministic(evaluated, built, trained, tmp_path):
    layout, first = evaluated
    again = run_eval(eval_project(tmp_path / "again", built, trained))
    a, b = first.metrics, again.metrics
    assert (a["val_loss"], a["per_source"]) == (b["val_loss"], b["per_source"])
    assert a["chat"] == b["chat"]  # seeded sampling
    assert a["humaneval"]["pass@1_greedy"] == b["humaneval"]["pass@1_greedy"]
    assert a["humaneval"]["pass@k"] == b["humaneval"]["pass@k"]
    results = [root / "reports" / "humaneval_results.jsonl" for root in (layout.root, tmp_path / "again")]
    assert results[0].read_text() == results[1].read_text()


def test_val_max_tokens_caps_each_source(evaluated, trained):
    layout, result = evaluated
    params = test_params(*EVAL)
    model, _, fmt, device = evaluate.load_model(params, layout)
    capped = evaluate.validation(model, fmt, layout.documents, params.shard.val_fraction, 300, device)
    for src, s in capped["per_source"].items():
        full = result.metrics["per_source"][src]
        assert s["tokens"] == min(300, full["tokens"])
        assert 0 < s["bytes"] <= full["bytes"] and (s["bytes"] < full["bytes"]) == (full["tokens"] > 300)
    assert capped["overall"]["tokens"] == sum(s["tokens"] for s in capped["per_source"].values())


def test_humaneval_disabled(evaluated, built, trained, tmp_path):
    result = run_eval(eval_project(tmp_path / "p", built, trained), "eval.humaneval.enabled=false",
                      "eval.val_max_tokens=200")
    assert result.metrics["humaneval"] is None and "HumanEval" not in result.summary
    assert (tmp_path / "p" / "reports" / "humaneval_samples.jsonl").read_text() == ""  # no stale samples
    assert "Not run" in (tmp_path / "p" / "reports" / "eval.md").read_text()


def test_missing_checkpoint_is_one_line_error(tmp_path):
    layout = Layout(tmp_path)
    with pytest.raises(InputError, match=r"checkpoints/pilot: no complete checkpoint; train first") as e:
        run_eval(layout, "eval.phase=pilot")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "reports").exists()


def test_cli_reports_a_bad_k_in_one_line(built, trained, tmp_path):
    root = eval_project(tmp_path / "p", built, trained).root
    proc = subprocess.run([str(Path(sys.executable).parent / "chatpipe"), "eval", "-C", str(root),
                           *[a for o in [*EVAL, "sft.enabled=false"] for a in ("-S", o)], "-S", "eval.humaneval.k=[1,5]"],
                          capture_output=True, text=True, timeout=120, check=False, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("chatpipe: error:")]
    assert errors == ["chatpipe: error: eval.humaneval.k: [5] exceed n_samples (3); pass@k needs k <= n"]
    assert not (root / "metrics").exists()
