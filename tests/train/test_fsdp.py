"""FSDP2 training (`train.parallel: fsdp`) on CPU: real torchrun processes over gloo with a CPU device mesh,
DCP checkpoints that resume at another number of processes, and what fsdp refuses."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chatpipe.model.presets import preset
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import checkpoint, loop, parallel, sharded

from conftest import TEST_OVERRIDES, TINY, TINY_OVERLAY, linked, test_params

CHATPIPE = str(Path(sys.executable).parent / "chatpipe")
RESHARD = str(Path(__file__).with_name("fsdp_reshard.py"))
FSDP = ["train.parallel=fsdp", "pilot.steps=6", "train.checkpoint.every=3", "train.checkpoint.keep=2",
        "train.validation.every=6", "train.sample.every=6"]
ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args: str, port: int, wait: bool = True):
    """`args` under torchrun with `nproc` gloo processes; wait=False: the running job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train(root: Path, nproc: int, *extra: str, port: int = 29531, wait: bool = True):
    """`chatpipe train` (pilot) in `root` with the tiny test params under torchrun."""
    args = [CHATPIPE, "train", "-C", str(root), "-p", TINY_OVERLAY]
    for o in [*TEST_OVERRIDES, *TINY, *FSDP, *extra]:
        args += ["-S", o]
    return torchrun(nproc, *args, port=port, wait=wait)


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (each in a session of its own, so not its process group) at once."""
    workers = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    for pid in [job.pid, *map(int, workers)]:
        os.kill(pid, signal.SIGKILL)
    job.wait()


def losses(root: Path) -> list[float]:
    with open(root / "metrics" / "pilot_curve.csv") as f:
        return [float(r[1]) for r in list(csv.reader(f))[1:]]


def resumed_from(root: Path, source: Path, step: str) -> Path:
    """A copy of `source`'s project whose pilot checkpoints stop at `step`: a run there resumes from it."""
    shutil.copytree(source, root, symlinks=True, ignore=shutil.ignore_patterns("mlruns", "mlflow.db"))
    for later in checkpoint.all_steps(root / "checkpoints" / "pilot"):
        if later.name > step:
            shutil.rmtree(later)
    shutil.rmtree(root / "metrics")
    return root


def same_state(a: Path, b: Path, tmp: Path) -> None:
    """The model and optimizer state of two DCP checkpoints, gathered whole, are equal bit for bit."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    states = []
    for i, path in enumerate((a, b)):
        dcp_to_torch_save(path, tmp / f"{i}.pt")
        states.append(torch.load(tmp / f"{i}.pt", weights_only=False))
    x, y = states
    assert x["model"].keys() == y["model"].keys() and x["optim"]["state"].keys() == y["optim"]["state"].keys()
    for name in x["model"]:
        assert torch.equal(x["model"][name], y["model"][name]), name
    for name, moments in x["optim"]["state"].items():
        assert moments.keys() == y["optim"]["state"][name].keys() and moments["exp_avg"].abs().sum() > 0
        for k, v in moments.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(y["optim"]["state"][name][k])), (name, k)
    assert [g["lr"] for g in x["optim"]["param_groups"]] == [g["lr"] for g in y["optim"]["param_groups"]]


@pytest.fixture
def project(tmp_path, built):
    return linked(tmp_path / "project", built[0])


@pytest.mark.integration
def test_two_fsdp_processes_train_as_one_and_as_ddp_and_write_a_dcp_checkpoint(project, built):
    """2 fsdp ranks = 1 process with the same global batch (the losses, within float tolerance) = 2 ddp ranks (the
    weights too: AdamW turns the last bits of a near-zero gradient into a whole step, so 2 ranks' weights differ
    from 1 process's by ~lr where a gradient is ~0, and ddp's just as fsdp's); the checkpoint is DCP files from
    both ranks, verified, and reads into a plain model in this process as eval, publish and serve read it."""
    single, ddp = linked(project.parent / "single", built[0]), linked(project.parent / "ddp", built[0])
    loop.run(test_params(*TINY, *FSDP[1:]), Layout(single), "pilot")
    train(ddp, 2, "train.parallel=ddp", port=29530)
    train(project, 2)
    meta = json.loads((project / "metrics" / "pilot.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 6
    assert losses(project) == pytest.approx(losses(single), rel=1e-4)
    assert losses(project) == pytest.approx(losses(ddp), rel=1e-5)

    path = checkpoint.latest(project / "checkpoints" / "pilot")
    assert path.name == "step-000006" and sharded.is_sharded(path) and checkpoint.verify(path)
    assert {"__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt"} <= set(json.loads((path / "checksums.json").read_text()))
    model, state = checkpoint.latest_model(project / "checkpoints" / "pilot")
    replicated, _ = checkpoint.latest_model(ddp / "checkpoints" / "pilot")
    for (name, a), b in zip(model.state_dict().items(), replicated.state_dict().values()):
        # The two sum gradients in another order (reduce-scatter, all-reduce), and AdamW turns the last bits of a
        # near-zero gradient into part of a step: up to 2.3e-5 apart after 6 steps on this AMX CPU (1e-6 held on
        # the machine this was written on); a wrong gradient or update moves weights by ~lr (3e-3) instead.
        assert torch.allclose(a, b, rtol=0, atol=1e-4), (name, (a - b).abs().max().item())
    assert state["inputs"]["recipe"]["parallel"] == "fsdp"

    (path / "__1_0.distcp").write_bytes(b"torn")  # a corrupt shard: the checkpoint is skipped
    assert checkpoint.latest(project / "checkpoints" / "pilot").name == "step-000003"


@pytest.mark.parametrize("setting, param", [
    (["train.optimizer.name=muon"], "train.optimizer.name"),
    (["train.lora={rank: 4, alpha: 8, dropout: 0.0, targets: [wq]}"], "train.lora"),
])
def test_what_fsdp_cannot_train_is_refused_in_one_line(setting, param):
    with pytest.raises(ConfigError, match=rf"^params: {param}: [^\n]*train.parallel=fsdp[^\n]+$"):
        test_params(*TINY, "train.parallel=fsdp", *setting)  # refused when params load
    with pytest.raises(ConfigError, match=r"^params: train.parallel: fsdp on train.device=vulkan: [^\n]+$"):
        test_params(*TINY, "train.parallel=fsdp", "train.device=vulkan")
    with pytest.raises(ConfigError, match=r"^params: model.quant: not supported"):  # once the shape is known
        parallel.check(test_params(*TINY, "train.parallel=fsdp").train, preset("chat-7m", quant="ternary"))
    parallel.check(test_params(*TINY, *setting).train, preset("chat-7m"))  # ddp: not fsdp's call


@pytest.mark.slow
def test_checkpoints_reshard_2_to_1_and_1_to_2(project, built, tmp_path):
    """A 2-process checkpoint resumes in 1 process and a 1-process one in 2: the same model and optimizer state
    (loaded at the other world size and saved again, bit for bit) and the same losses onward (within float
    tolerance: the reductions add in another order), the reader carrying on from the same global position."""
    two = project
    train(two, 2)
    one = linked(tmp_path / "one", built[0])
    train(one, 1, port=29532)
    assert losses(one) == pytest.approx(losses(two), rel=1e-4)
    for source, nproc in ((two, 1), (one, 2)):
        step3 = source / "checkpoints" / "pilot" / "step-000003"
        again = tmp_path / f"again-{nproc}" / "step-000003"
        torchrun(nproc, RESHARD, str(step3), str(again), port=29533)
        same_state(step3, again, tmp_path)
        resumed = resumed_from(tmp_path / f"resumed-in-{nproc}", source, "step-000003")
        train(resumed, nproc, port=29534)
        assert json.loads((resumed / "metrics" / "pilot.json").read_text())["resumed_at"] == 3
        assert losses(resumed) == pytest.approx(losses(source), rel=1e-4)


@pytest.mark.slow
def test_sigkill_of_the_fsdp_job_then_resume_gives_the_same_losses(project, built):
    """Bit for bit: both ranks killed mid-run (SIGKILL to the whole torchrun job) and restarted equal a run that
    was never killed."""
    steps = ["pilot.steps=12", "train.validation.every=12", "train.sample.every=12"]
    other = linked(project.parent / "uninterrupted", built[0])
    train(other, 2, *steps)
    job = train(project, 2, *steps, wait=False)
    deadline = time.time() + 300
    while not (project / "checkpoints" / "pilot" / "step-000006").exists() and job.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    kill_job(job)
    assert job.returncode == -signal.SIGKILL and not (project / "metrics" / "pilot.json").exists()
    train(project, 2, *steps)
    assert json.loads((project / "metrics" / "pilot.json").read_text())["resumed_at"] in (6, 9)
    assert losses(project) == losses(other)


@pytest.mark.slow
def test_moe_experts_shard_and_train(project):
    """qwen3-hybrid-mini's family (MoE every layer, 16 experts top-2), made tiny, trains under 2 fsdp ranks, with
    activation checkpointing (each block's recompute all-gathers its weights again)."""
    train(project, 2, "model.preset=qwen3-hybrid-mini", "model.n_layer=2", "model.block_size=64",
          "train.activation_checkpointing=true")
    rows = losses(project)
    assert len(rows) == 6 and rows[-1] < rows[0]
    model, _ = checkpoint.latest_model(project / "checkpoints" / "pilot")
    assert model.config.moe.n_experts == 16


def test_model_info_reports_memory_per_gpu_under_fsdp():
    proc = subprocess.run([CHATPIPE, "model-info", "nano-1b", "--gpus", "8", "--parallel", "fsdp"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "per GPU of 8 (fsdp)" in proc.stdout and "gathered" in proc.stdout
    bad = subprocess.run([CHATPIPE, "model-info", "nano-1b", "--parallel", "zero3"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "chatpipe: error: --parallel must be ddp or fsdp, got 'zero3'"


def test_a_save_without_every_optimizer_moment_is_refused(tmp_path):
    """DCP would save it without a word: here an optimizer over one parameter of a fully_shard-ed model."""
    import torch.distributed as dist

    from chatpipe.model.transformer import Transformer
    from chatpipe.tasks.train.distributed import Ranks

    ranks = Ranks()
    ranks.start("cpu", group=True)  # a group of one in this process, as `chatpipe train` alone makes
    try:
        model = Transformer(preset("chat-7m", n_layer=1, n_embd=32, n_head=2, vocab_size=64, block_size=16))
        parallel.MODES["fsdp"].wrap(model, test_params().train, ranks, torch.device("cpu"), None)
        lonely = torch.optim.AdamW(list(model.parameters())[:1])
        with pytest.raises(RuntimeError, match=r"without moments for 11 of 12 trained parameters"):
            sharded.write(tmp_path, model, [lonely], main=True)
    finally:
        dist.destroy_process_group()
