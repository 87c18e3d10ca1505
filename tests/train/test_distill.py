"""Logit distillation (tasks/train/distill.py): the loss, the `distill` training phase, and that it helps."""
import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import checkpoint, loop
from chatpipe.tasks.train.distill import kd_loss

from conftest import TINY, linked, test_params

# A teacher worth learning from: the TINY model trained 200 steps (val loss ~4.3 against ~5.3 for a
# 100-step student), then students of 100 steps from scratch.
TEACHER = [*TINY, "pilot.steps=200", "train.schedule.warmup_steps=10", "train.validation.every=200",
           "train.sample.every=1000", "train.checkpoint.every=200", "train.validation.batches=8"]
STUDENT = [*TEACHER, "distill.enabled=true", "distill.teacher=pilot", "distill.steps=100", "distill.init=scratch",
           "distill.temperature=1.0", "train.validation.every=100", "train.checkpoint.every=50"]


def test_kd_loss_is_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    y[0, 0] = -1
    keep = y.flatten() != -1
    T = 2.0
    p = F.softmax(t.flatten(0, 1)[keep] / T, -1)
    kl = (p * (p.log() - F.log_softmax(s.flatten(0, 1)[keep] / T, -1))).sum(-1).mean()
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten(), ignore_index=-1)
    loss, parts = kd_loss(s, t, y, alpha=0.3, temperature=T)
    assert torch.allclose(loss, 0.3 * ce + 0.7 * T * T * kl) and torch.allclose(parts["kd"], kl)
    assert torch.allclose(kd_loss(s, t, y, 1.0, T)[0], ce)                 # alpha 1: no distillation
    assert kd_loss(s, s, y, 0.0, T)[0].abs() < 1e-6                         # a student equal to its teacher
    assert torch.allclose(kd_loss(s, t, y, 0.0, T, top_k=11)[0], kd_loss(s, t, y, 0.0, T)[0])  # k = V: all


def test_top_k_keeps_the_teachers_most_likely_tokens():
    torch.manual_seed(1)
    s, t, y = torch.randn(1, 3, 50), torch.randn(1, 3, 50), torch.randint(0, 50, (1, 3))
    _, parts = kd_loss(s, t, y, 0.0, 1.0, top_k=4)
    top, index = t[0].topk(4, -1)
    p = F.softmax(top, -1)
    expected = (p * (p.log() - F.log_softmax(s[0], -1).gather(-1, index))).sum(-1).mean()
    assert torch.allclose(parts["kd"], expected)
    student = s.clone().requires_grad_()
    kd_loss(student, t.requires_grad_(), y, 0.0, 1.0, top_k=4)[0].backward()
    assert student.grad.abs().sum() > 0 and t.grad is None                   # the teacher gets no gradient


@pytest.fixture(scope="module")
def teacher(built, tmp_path_factory):
    """A project with a 200-step pilot: the teacher of the tests below (read-only)."""
    layout, _, _ = built
    root = linked(tmp_path_factory.mktemp("teacher"), layout)
    with contextlib.chdir(root):
        loop.run(test_params(*TEACHER), Layout(root), "pilot")
    return root


def student(root, *extra):
    with contextlib.chdir(root):
        return loop.run(test_params(*STUDENT, *extra), Layout(root), "distill", replace_stale=True)


@pytest.mark.integration
def test_distillation_beats_the_same_student_without_it(teacher, tmp_path):
    """Equal steps, same data, same init: alpha 0.5 (with the teacher) against alpha 1 (data only)."""
    import mlflow

    kd = student(teacher, "distill.alpha=0.5")
    plain = student(teacher, "distill.alpha=1.0")
    margin = plain.metrics["final_val_loss"] - kd.metrics["final_val_loss"]
    print(f"val loss after 100 steps: KD {kd.metrics['final_val_loss']:.4f}, no KD "
          f"{plain.metrics['final_val_loss']:.4f}, margin {margin:.4f}")
    assert margin > 0.03                                      # measured: 0.12 (docs/LOG.md)
    curve = json.loads((teacher / "metrics" / "distill.json").read_text())
    assert curve["phase"] == "distill" and curve["teacher"]["phase"] == "pilot"
    run = mlflow.MlflowClient(kd.metrics["tracking_uri"]).get_run(kd.metrics["mlflow_run_id"])
    history = mlflow.MlflowClient(kd.metrics["tracking_uri"]).get_metric_history(run.info.run_id, "ce")
    assert len(history) == 100 and history[-1].value < history[0].value - 1   # the student's CE falls under KD
    assert run.data.metrics["kd"] > 0 and run.data.tags["chatpipe.phase"] == "distill"


def test_ternary_student_from_the_teacher_resumes_and_records_its_teacher(teacher, tmp_path):
    ternary = ["distill.init=teacher", "distill.student.quant=ternary", "distill.steps=20",
               "train.checkpoint.every=10", "train.validation.every=10"]
    first = student(teacher, *ternary[:-2], "distill.steps=10", "train.checkpoint.every=10", "train.validation.every=10")
    assert first.metrics["init"].endswith("pilot/step-000200") and first.metrics["model"]["quant"] == "ternary"
    resumed = student(teacher, *ternary)
    assert resumed.metrics["resumed_at"] == 10 and resumed.metrics["steps"] == 20
    state = checkpoint.read_state(checkpoint.latest(teacher / "checkpoints" / "distill"))
    assert state["inputs"]["teacher"]["phase"] == "pilot" and len(state["inputs"]["teacher"]["weights_sha256"]) == 64
    with pytest.raises(ConfigError, match="distill.init=teacher needs the student's shape"):
        student(teacher, "distill.init=teacher", "distill.student.n_layer=1")


def test_a_selected_student_starts_as_its_teacher_with_only_its_selection_ternary(teacher):
    """Option C: a student of the teacher's shape is a copy of it whose selected linears (here the MLPs of every
    block but the last) are BitLinears over the teacher's weights; one step at a vanishing lr leaves it so."""
    from chatpipe.model.quant import BitLinear

    result = student(teacher, "distill.init=teacher", "distill.student.quant=ternary", "distill.steps=1",
                     "distill.student.ternary={roles: [w1, w2, w3], skip_last: 1}", "distill.lr=1e-12",
                     "train.checkpoint.every=1", "train.validation.every=1")
    assert result.metrics["model"]["ternary"]["skip_last"] == 1
    model, _ = checkpoint.latest_model(teacher / "checkpoints" / "distill")
    taught, _ = checkpoint.latest_model(teacher / "checkpoints" / "pilot")
    ternary = {name for name, m in model.named_modules() if isinstance(m, BitLinear)}
    assert ternary == {f"blocks.0.mlp.{r}" for r in ("w1", "w2", "w3")}  # TINY: 2 blocks, the last stays float
    for name, p in taught.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, rtol=0, atol=1e-6, msg=name)


def test_disabled_is_a_recorded_no_op_and_a_missing_teacher_is_refused(built, tmp_path):
    layout, _, _ = built
    root = linked(tmp_path / "p", layout)
    with contextlib.chdir(root):
        result = loop.run(test_params(*TINY), Layout(root), "distill")
        assert result.metrics == {"phase": "distill", "enabled": False}
        assert (root / "checkpoints" / "distill").is_dir() and (root / "metrics" / "distill_curve.csv").exists()
        with pytest.raises(InputError, match="no complete checkpoint"):
            loop.run(test_params(*TINY, "distill.enabled=true"), Layout(root), "distill")


def test_a_ternary_model_trains_from_scratch_in_any_phase(built, tmp_path):
    """`model.quant: ternary` without a teacher: quantization-aware training from scratch (the pilot here)."""
    layout, _, _ = built
    root = linked(tmp_path / "p", layout)
    with contextlib.chdir(root):
        result = loop.run(test_params(*TINY, "model.quant=ternary", "pilot.steps=30"), Layout(root), "pilot")
        with pytest.raises(ConfigError, match="quant.*moe"):
            loop.run(test_params(*TINY, "model.quant=ternary", "model.moe={n_experts: 2, top_k: 1}"), Layout(root))
    curve = (root / "metrics" / "pilot_curve.csv").read_text().splitlines()[1:]
    first, last = float(curve[0].split(",")[1]), result.metrics["final_loss"]
    assert last < first - 0.5, (first, last)
    state = checkpoint.read_state(checkpoint.latest(root / "checkpoints" / "pilot"))
    assert state["inputs"]["model"]["quant"] == "ternary"
