"""The health gate on synthetic pilot metrics: no training, every check failing on its own."""
import contextlib
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import gate

from conftest import test_params

CHECKS = ["finite", "train_loss", "val_loss", "loss_spikes", "grad_norm_p99", "still_improving", "turn_structure"]
STEPS, WINDOW = 200, 20
CLEAN = {"prompt": "<|user|> Hi!\n<|assistant|>", "completion": " Hello! How can I help?\n", "tokens": 8,
         "stopped": True}


@pytest.fixture(scope="module")
def params():
    return test_params(f"gate.window={WINDOW}")


def healthy(steps: int = STEPS) -> dict:
    """A decaying loss with a little noise, a settling grad norm, val every 50 steps, clean samples."""
    rng = np.random.default_rng(0)
    t = np.arange(1, steps + 1)
    loss = 2.5 + 3.0 * np.exp(-t / 100) + rng.uniform(-0.01, 0.01, steps)
    grad = 0.5 + 2.0 * np.exp(-t / 30) + rng.uniform(0, 0.05, steps)
    lr = np.full(steps, 1e-3)
    val_steps = [s for s in range(50, steps + 1, 50)]
    return {"curve": np.stack([t, loss, lr, grad], axis=1),
            "val": [[s, float(loss[s - 1]) + 0.1] for s in val_steps],
            "samples": [dict(CLEAN) for _ in range(3)]}


def write_metrics(root: Path, run: dict, phase: str = "pilot") -> None:
    metrics = root / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    curve = run["curve"]
    (metrics / f"{phase}.json").write_text(json.dumps({
        "phase": phase, "steps": len(curve), "final_loss": float(np.mean(curve[-50:, 1])),
        "final_val_loss": run["val"][-1][1] if run["val"] else None, "samples": run["samples"]}))
    for name, header, rows in ((f"{phase}_curve.csv", ["step", "loss", "lr", "grad_norm"],
                                [[int(r[0]), *r[1:]] for r in curve.tolist()]),
                               (f"{phase}_val.csv", ["step", "val_loss"], run["val"])):
        with open(metrics / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def report(root: Path) -> dict:
    return json.loads((root / "metrics" / "gate.json").read_text())


def failure(result) -> str:
    """The summary of a failed gate: a result with ok=False (the CLI exits non-zero on it, the flow stops)."""
    assert not result.ok and not result.metrics["passed"]
    return result.summary


def failed_names(message: str) -> list[str]:
    assert message.startswith("gate failed: ") and " (report: " in message
    body = message[len("gate failed: "):message.index(" (report: ")]
    return [part.split(" ")[0] for part in body.split("; ")]


def test_healthy_run_passes(tmp_path, params):
    write_metrics(tmp_path, healthy())
    result = gate.run(params, Layout(tmp_path))
    saved = report(tmp_path)
    assert saved["passed"] is True and saved["phase"] == "pilot"
    assert [c["name"] for c in saved["checks"]] == CHECKS
    assert all(c["verdict"] == "pass" for c in saved["checks"])
    assert all(set(c) == {"name", "value", "threshold", "verdict", "detail"} for c in saved["checks"])
    assert result.metrics == saved and result.stage == "gate"
    assert result.summary.startswith("gate: passed 7/7 checks (train loss ")
    assert result.summary.endswith(f"→ {tmp_path / 'metrics' / 'gate.json'}")
    assert "\n" not in result.summary
    by_name = {c["name"]: c for c in saved["checks"]}
    assert by_name["finite"]["value"] == 0
    assert by_name["train_loss"]["value"] < 4.0 and by_name["val_loss"]["value"] < 4.0
    assert by_name["turn_structure"]["value"] == 1.0


def test_summary_and_report_path_relative_to_the_project(tmp_path, params):
    write_metrics(tmp_path, healthy())
    with contextlib.chdir(tmp_path):
        result = gate.run(params)
    assert result.summary.endswith(" → metrics/gate.json")
    assert result.outputs == ("metrics/gate.json",)


def _high_train(run):
    run["curve"][:, 1] += 2.0


def _high_val(run):
    for row in run["val"]:
        row[1] += 2.0


def _nan_loss(run):
    run["curve"][189, 1] = math.nan  # inside the last window: only `finite` may notice


def _inf_grad(run):
    run["curve"][150, 3] = math.inf


def _nan_val(run):
    run["val"][1][1] = math.nan


def _spike(run):
    run["curve"][120, 1] *= 4


def _exploding_grad(run):
    run["curve"][150:, 3] = np.linspace(5, 40, STEPS - 150)


def _rising_tail(run):
    run["curve"][-WINDOW:, 1] = run["curve"][-WINDOW, 1] + np.linspace(0, 0.1, WINDOW)


def _never_stops(run):
    for s in run["samples"]:
        s["stopped"] = False


def _user_marker(run):
    run["samples"][0]["completion"] = " Sure.\n<|user|> and me?"
    run["samples"][1]["completion"] = " Fine <|assistant|> thanks"


def _empty_completions(run):
    run["samples"] = [{**CLEAN, "completion": ""}, {**CLEAN, "completion": "  \n"}, dict(CLEAN)]


@pytest.mark.parametrize("breaks, expected", [
    (_high_train, "train_loss"),
    (_high_val, "val_loss"),
    (_nan_loss, "finite"),
    (_inf_grad, "finite"),
    (_nan_val, "finite"),
    (_spike, "loss_spikes"),
    (_exploding_grad, "grad_norm_p99"),
    (_rising_tail, "still_improving"),
    (_never_stops, "turn_structure"),
    (_user_marker, "turn_structure"),
    (_empty_completions, "turn_structure"),
], ids=lambda x: getattr(x, "__name__", x))
def test_each_failure_fails_only_its_check(tmp_path, params, breaks, expected):
    run = healthy()
    breaks(run)
    write_metrics(tmp_path, run)
    message = failure(gate.run(params, Layout(tmp_path)))
    assert "\n" not in message
    assert failed_names(message) == [expected]
    assert message.endswith(f"(report: {tmp_path / 'metrics' / 'gate.json'})")
    saved = report(tmp_path)  # written even though the gate failed
    assert saved["passed"] is False
    assert [c["name"] for c in saved["checks"] if c["verdict"] == "fail"] == [expected]
    assert len(saved["checks"]) == 7


def test_flat_tail_fails_when_improvement_is_required(tmp_path):
    run = healthy()
    run["curve"][-WINDOW:, 1] = 3.0
    write_metrics(tmp_path, run)
    assert gate.run(test_params(f"gate.window={WINDOW}"), Layout(tmp_path)).metrics["passed"]  # 0.0 ≥ 0.0
    message = failure(gate.run(test_params(f"gate.window={WINDOW}", "gate.min_improvement=0.01"), Layout(tmp_path)))
    assert failed_names(message) == ["still_improving"]
    assert "still_improving 0.0 < 0.01" in message


def test_message_names_every_failed_check(tmp_path, params):
    run = healthy()
    run["curve"][:, 1] = 4.61  # flat, so only the level is wrong
    run["curve"][:, 3] = 12.3
    write_metrics(tmp_path, run)
    with contextlib.chdir(tmp_path):
        message = failure(gate.run(params))
    assert message == ("gate failed: train_loss 4.61 ≥ 4.0; grad_norm_p99 12.3 ≥ 5.0 "
                       "(report: metrics/gate.json)")
    # `chatpipe gate` (what DVC runs) exits non-zero with that line, and nothing else on stderr
    cli = subprocess.run([str(Path(sys.executable).parent / "chatpipe"), "gate", "-C", str(tmp_path), "-S",
                          "tracking.uri=sqlite:///" + str(tmp_path / "mlflow.db")], capture_output=True, text=True)
    assert (cli.returncode, cli.stdout, cli.stderr) == (2, "", f"chatpipe: error: {message}\n")
    checks = {c["name"]: c for c in report(tmp_path)["checks"]}
    assert checks["train_loss"]["value"] == pytest.approx(4.61)
    assert checks["grad_norm_p99"] == {**checks["grad_norm_p99"], "value": pytest.approx(12.3), "threshold": 5.0,
                                       "verdict": "fail"}


def test_non_finite_values_are_null_in_the_report(tmp_path, params):
    run = healthy()
    run["curve"][-WINDOW:, 1] = math.nan  # no finite loss in the window at all
    write_metrics(tmp_path, run)
    message = failure(gate.run(params, Layout(tmp_path)))
    assert {"finite", "train_loss", "still_improving"} <= set(failed_names(message))
    text = (tmp_path / "metrics" / "gate.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"gate.json holds {c}, not valid JSON"))
    checks = {c["name"]: c for c in strict["checks"]}
    assert checks["finite"]["value"] == WINDOW
    assert checks["train_loss"]["value"] is None


def test_window_is_capped_by_the_number_of_steps(tmp_path):
    run = healthy(steps=60)
    run["curve"][:, 1] -= 1.5
    run["val"] = [[s, v - 1.5] for s, v in run["val"]]
    write_metrics(tmp_path, run)
    result = gate.run(test_params("gate.window=100"), Layout(tmp_path))
    spikes = next(c for c in result.metrics["checks"] if c["name"] == "loss_spikes")
    assert spikes["verdict"] == "pass" and spikes["value"] is None  # nothing after the first window


def test_val_loss_falls_back_to_the_last_evaluation(tmp_path, params):
    run = healthy()
    run["val"] = [[100, 3.2]]  # none in the last window
    write_metrics(tmp_path, run)
    checks = {c["name"]: c for c in gate.run(params, Layout(tmp_path)).metrics["checks"]}
    assert checks["val_loss"]["value"] == pytest.approx(3.2)


def test_full_phase_reads_its_own_metrics(tmp_path, params):
    write_metrics(tmp_path, healthy(), phase="full")
    assert gate.run(params, Layout(tmp_path), phase="full").metrics["phase"] == "full"


def test_missing_metrics_is_an_input_error(tmp_path, params):
    with contextlib.chdir(tmp_path), pytest.raises(InputError) as info:
        gate.run(params)
    assert str(info.value) == "metrics/pilot.json: no pilot metrics; run `chatpipe train --phase pilot` first"
    assert not (tmp_path / "metrics" / "gate.json").exists()


def test_missing_or_bad_curve_is_an_input_error(tmp_path, params):
    write_metrics(tmp_path, healthy())
    curve = tmp_path / "metrics" / "pilot_curve.csv"
    curve.write_text("step,loss,lr,grad_norm\n1,abc,0.1,1.0\n")
    with pytest.raises(InputError, match=r"pilot_curve\.csv:2: expected numbers"):
        gate.run(params, Layout(tmp_path))
    curve.unlink()
    with pytest.raises(InputError, match=r"pilot_curve\.csv: no pilot curve; run `chatpipe train --phase pilot`"):
        gate.run(params, Layout(tmp_path))


def test_unknown_phase_is_a_config_error(tmp_path, params):
    with pytest.raises(ConfigError, match="unknown phase"):
        gate.run(params, Layout(tmp_path), phase="warmup")
