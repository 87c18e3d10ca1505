"""The training engine on the real shards of the `built` fixture, with a tiny model on the CPU."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import checkpoint, loop, resume
from chatpipe.tasks.train.optim import Optimizers, lr_multiplier
from chatpipe.tasks.train.pretrained import model_config

from conftest import TINY, TINY_OVERLAY, kill_when, linked, test_params

CHATPIPE = str(Path(sys.executable).parent / "chatpipe")


@pytest.fixture
def project(tmp_path, built):
    return linked(tmp_path / "project", built[0])


def curve(root: Path, phase: str = "pilot") -> list[list[str]]:
    with open(root / "metrics" / f"{phase}_curve.csv") as f:
        return list(csv.reader(f))[1:]


def cli_train(root: Path, *extra: str, wait: bool = True, phase: str = "pilot"):
    """`chatpipe train --phase <phase>` in `root` with the tiny test params; wait=False: the running process."""
    args = [CHATPIPE, "train", "--phase", phase, "-C", str(root), "-p", TINY_OVERLAY]
    for o in [*TINY_CLI, *extra]:
        args += ["-S", o]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


# the CLI runs from the project dir with tiny.yaml; the same tiny-test data overrides as the fixture
from conftest import TEST_OVERRIDES  # noqa: E402

TINY_CLI = [*TEST_OVERRIDES, *TINY]


def test_lr_schedule():
    cfg = test_params("train.schedule.warmup_steps=10", "train.optimizer.lr=1e-3", "train.schedule.lr_min=1e-4").train
    assert lr_multiplier(0, cfg, 110) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg, 110) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg, 110) == pytest.approx(1.0)        # cosine starts at the peak
    assert lr_multiplier(59, cfg, 110) == pytest.approx(0.55, abs=0.02)  # halfway: (1 + 0.1) / 2
    assert lr_multiplier(109, cfg, 110) == pytest.approx(0.1)       # the last step reaches lr_min
    assert all(lr_multiplier(s, cfg, 110) >= lr_multiplier(s + 1, cfg, 110) for s in range(10, 109))


def _tiny_model(**kw):
    from chatpipe.model.presets import preset
    return Transformer(preset("chat-7m", vocab_size=96, n_layer=2, n_embd=32, n_head=4, block_size=16, **kw))


@pytest.mark.parametrize("tied", [True, False])
def test_adamw_groups_decay_matrices_only(tied):
    model = _tiny_model(tie_embeddings=tied)
    (opt,) = Optimizers(model, test_params("train.optimizer.name=adamw").train).all
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))   # each parameter exactly once


def test_muon_takes_hidden_matrices_adamw_the_rest():
    model = _tiny_model()
    muon, adamw = Optimizers(model, test_params("train.optimizer.name=muon").train).all
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding)).weight
    assert id(embedding) not in in_muon
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert len(in_muon) == 2 * 4 + 2 * 3    # per layer: q, k, v, o and the three SwiGLU matrices
    everything = in_muon | {id(p) for g in adamw.param_groups for p in g["params"]}
    assert len(everything) == len(list(model.parameters()))


def test_train_writes_checkpoints_metrics_and_mlflow(project):
    params = test_params(*TINY)
    result = loop.run(params, Layout(project), "pilot")
    m = json.loads((project / "metrics" / "pilot.json").read_text())
    assert m["steps"] == 12 and m["final_val_loss"] is not None and len(m["samples"]) == 3
    assert [p.name for p in checkpoint.all_steps(project / "checkpoints" / "pilot")] == ["step-000008", "step-000012"]
    assert all(checkpoint.verify(p) for p in checkpoint.all_steps(project / "checkpoints" / "pilot"))
    rows = curve(project)
    assert [int(r[0]) for r in rows] == list(range(1, 13))
    assert float(rows[-1][1]) < float(rows[0][1])                     # it learns
    assert result.summary.startswith("train pilot: 12 steps on cpu")

    from mlflow.tracking import MlflowClient
    client = MlflowClient(m["tracking_uri"])
    run = client.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.optimizer.name"] == "adamw"
    assert [x.step for x in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 13))
    assert {x.step for x in client.get_metric_history(run.info.run_id, "val_loss")} == {6, 12}
    assert "moe_aux_loss" not in run.data.metrics  # a dense model's is always 0: not logged every step
    assert "samples/pilot-step-000012.txt" in [a.path for a in client.list_artifacts(run.info.run_id, "samples")]


def test_full_phase_starts_from_the_pilot(project, built):
    params = test_params(*TINY)
    loop.run(params, Layout(project), "pilot")
    full = loop.run(params, Layout(project), "full")
    assert full.metrics["init"].endswith("pilot/step-000012")
    pilot_last = float(curve(project, "pilot")[-1][1])
    assert float(curve(project, "full")[0][1]) < pilot_last + 0.5     # not back at the random-init loss
    with pytest.raises(Exception, match="full.init=scratch"):
        loop.run(params, Layout(linked(project.parent / "elsewhere", built[0])), "full")


def test_nan_stops_and_keeps_the_last_good_checkpoint(project, monkeypatch):
    real_forward, calls = Transformer.forward, {"n": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == 6:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", forward)
    result = loop.run(test_params(*TINY), Layout(project), "pilot")
    assert not result.ok   # a verdict, not a crash: the CLI exits 2 on it, the flow does not retry it
    assert re.fullmatch(r"train pilot: step 6: loss is nan; training stopped\. Last good checkpoint: .*step-000004",
                        result.summary)
    assert [p.name for p in checkpoint.all_steps(project / "checkpoints" / "pilot")] == ["step-000004"]
    # what the gate reads: the curve up to the NaN step, and metrics that stay valid JSON
    assert curve(project)[-1][:2] == ["6", "nan"] and len(curve(project)) == 6
    metrics = json.loads((project / "metrics" / "pilot.json").read_text(), parse_constant=pytest.fail)
    assert metrics["stopped"] == result.summary.removeprefix("train pilot: ") and metrics["final_loss"] is None


def test_checkpoint_from_other_inputs_is_refused_or_replaced(project):
    loop.run(test_params(*TINY, "pilot.steps=4"), Layout(project), "pilot")
    longer = loop.run(test_params(*TINY, "pilot.steps=6"), Layout(project), "pilot")
    assert longer.metrics["resumed_at"] == 4                         # more steps, same inputs: resume
    changed = test_params(*TINY, "pilot.steps=8", "model.n_layer=3", "train.optimizer.lr=1e-3")
    with pytest.raises(ConfigError, match=r"step-000006: trained with different inputs: model \(n_layer\); "
                                          r"recipe \(optimizer\.lr\)\. Re-run with --replace-stale"):
        loop.run(changed, Layout(project), "pilot")
    fresh = loop.run(changed, Layout(project), "pilot", replace_stale=True)
    assert fresh.metrics["resumed_at"] is None and fresh.metrics["steps"] == 8
    assert [p.name.split("-")[0] for p in (project / "checkpoints").glob("pilot.replaced-*")] == ["pilot.replaced"]


def test_checkpoint_from_other_code_is_refused(project, monkeypatch):
    """Code is an input: a run of the edited training step does not resume the old step's checkpoint."""
    loop.run(test_params(*TINY, "pilot.steps=4"), Layout(project), "pilot")
    monkeypatch.setattr(resume, "code_hash", lambda folders, root: "another version of tasks/train")
    with pytest.raises(ConfigError, match=r"step-000004: trained with different inputs: code\. Re-run"):
        loop.run(test_params(*TINY, "pilot.steps=6"), Layout(project), "pilot")


@pytest.mark.integration
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])  # bf16: make test-slow
def test_sigkill_then_resume_gives_the_same_losses(project, built, precision):
    """Bit for bit, in each precision: a run killed with SIGKILL mid-run and restarted equals one that was never
    killed."""
    other = linked(project.parent / "uninterrupted", built[0])
    steps = ["pilot.steps=20", "train.checkpoint.every=3", "train.checkpoint.keep=2",
             f"train.precision={precision}"]
    cli_train(other, *steps)

    proc = cli_train(project, *steps, wait=False)
    kill_when(proc, project / "checkpoints" / "pilot" / "step-000009")
    assert not (project / "metrics" / "pilot.json").exists()
    resumed = cli_train(project, *steps)
    assert "train pilot: 20 steps" in resumed.stdout
    meta = json.loads((project / "metrics" / "pilot.json").read_text())
    assert meta["resumed_at"] in (9, 12, 15)
    assert curve(project) == curve(other)                         # same strings: same float bits
    assert precision in meta["device"]


@pytest.mark.integration
def test_data_parallel_matches_single_process(project, built):
    """torchrun with 2 gloo ranks = 1 process with the same global batch (and = 2 accumulation steps)."""
    steps = ["pilot.steps=6", "train.checkpoint.every=6", "train.validation.every=6", "train.sample.every=6"]
    single, accum = linked(project.parent / "single", built[0]), linked(project.parent / "accum", built[0])
    cli_train(single, *steps)
    cli_train(accum, *steps, "train.grad_accum=2")
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
            CHATPIPE, "train", "-C", str(project), "-p", TINY_OVERLAY]
    for o in [*TINY_CLI, *steps]:
        args += ["-S", o]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((project / "metrics" / "pilot.json").read_text())["world_size"] == 2
    base = [float(r[1]) for r in curve(single)]
    for root in (project, accum):
        got = [float(r[1]) for r in curve(root)]
        assert got == pytest.approx(base, rel=1e-4), root


def test_tied_embeddings_survive_a_checkpoint(project):
    params = test_params(*TINY, "model.tie_embeddings=true", "pilot.steps=4")
    loop.run(params, Layout(project), "pilot")
    path = checkpoint.latest(project / "checkpoints" / "pilot")
    model = Transformer(model_config(params, json.loads((project / "data/shards/manifest.json").read_text())["vocab_size"]))
    checkpoint.load_weights(model, path)
    assert model.lm_head.weight is model.tok_emb.weight
    assert not torch.equal(model.tok_emb.weight, Transformer(model.config).tok_emb.weight)   # really loaded


def test_model_info_cli():
    proc = subprocess.run([CHATPIPE, "model-info", "qwen3-hybrid"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "78" in proc.stdout and "active" in proc.stdout.lower()
    bad = subprocess.run([CHATPIPE, "model-info", "gpt-5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown preset 'gpt-5'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_compiled_training_matches_eager(project, built):
    eager = linked(project.parent / "eager", built[0])
    loop.run(test_params(*TINY, "pilot.steps=4"), Layout(eager), "pilot")
    loop.run(test_params(*TINY, "pilot.steps=4", "train.compile=true"), Layout(project), "pilot")
    a = [float(r[1]) for r in curve(eager)]
    b = [float(r[1]) for r in curve(project)]
    assert b == pytest.approx(a, rel=1e-3)


def test_triton_kernels_are_refused_off_cuda(built, tmp_path):
    import contextlib

    layout, _, _ = built
    root = linked(tmp_path / "p", layout)
    with contextlib.chdir(root), pytest.raises(ConfigError, match="train.kernels: triton kernels run on CUDA"):
        loop.run(test_params(*TINY, "train.kernels=triton"), Layout(root), "pilot")  # when params load
    if not torch.cuda.is_available():  # auto: when the trainer is built on the device it picked, before any step
        with contextlib.chdir(root), pytest.raises(ConfigError, match="^params: train.kernels: triton kernels run"):
            loop.run(test_params(*TINY, "train.kernels=triton", "train.device=auto"), Layout(root), "pilot")
        assert not (root / "checkpoints" / "pilot").exists()
