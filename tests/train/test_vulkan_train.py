"""`train.device: vulkan` through the real training stage on Mesa's lavapipe: the same losses as CPU, and
checkpoints that do not remember where they were trained (Vulkan → CPU, CPU → Vulkan, then served)."""
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import checkpoint, loop
from chatpipe.tasks.train.backends import devices

from conftest import TEST_OVERRIDES, TINY, linked, test_params

vulkan_step = pytest.importorskip("chatpipe.tasks.train.backends.vulkan")
pytestmark = pytest.mark.skipif(not vulkan_step.available(),
                                reason="no Vulkan device (apt mesa-vulkan-drivers) or IREE not installed")

STEPS = [*TINY, "pilot.steps=8", "train.checkpoint.every=4", "train.validation.every=4", "train.sample.every=8",
         "train.checkpoint.keep=4", "distill.enabled=false",
         "train.precision=fp32"]  # Vulkan's step is fp32: the CPU runs it is compared with are too


def run(root: Path, device: str, *extra) -> dict:
    with contextlib.chdir(root):
        return loop.run(test_params(*STEPS, f"train.device={device}", *extra), Layout(root), "pilot").metrics


def losses(root: Path) -> list[float]:
    return [float(line.split(",")[1]) for line in (root / "metrics" / "pilot_curve.csv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def runs(built, tmp_path_factory):
    """The same 8 steps on CPU and on Vulkan, checkpoints at 4 and 8."""
    layout, _, _ = built
    roots = {d: linked(tmp_path_factory.mktemp(d), layout) for d in ("cpu", "vulkan")}
    return {d: (root, run(root, d)) for d, root in roots.items()}


@pytest.mark.integration
def test_vulkan_trains_with_the_cpu_losses(runs):
    (cpu, _), (vk, metrics) = runs["cpu"], runs["vulkan"]
    assert metrics["device"] == "vulkan (requested), fp32 (requested)" and metrics["steps"] == 8
    diff = max(abs(a - b) for a, b in zip(losses(cpu), losses(vk)))
    assert diff < 1e-4, diff          # fp32 on both sides; measured ~1e-6
    assert abs(metrics["final_val_loss"] - runs["cpu"][1]["final_val_loss"]) < 1e-4


@pytest.mark.integration
def test_checkpoints_move_between_vulkan_and_cpu(runs, built, tmp_path):
    """Step 4 from one device, steps 5-8 on the other: the same curve as 8 steps on either."""
    layout, _, _ = built
    for first, then in (("vulkan", "cpu"), ("cpu", "vulkan")):
        root = linked(tmp_path / f"{first}-{then}", layout)
        shutil.copytree(runs[first][0] / "checkpoints" / "pilot" / "step-000004", root / "checkpoints" / "pilot" / "step-000004")
        metrics = run(root, then)
        assert metrics["resumed_at"] == 4
        tail = losses(root)[4:]
        diff = max(abs(a - b) for a, b in zip(tail, losses(runs["cpu"][0])[4:]))
        assert len(tail) == 4 and diff < 1e-4, (first, then, diff)


@pytest.mark.integration
def test_a_vulkan_checkpoint_serves_anywhere(runs, tmp_path):
    root = runs["vulkan"][0]
    model, _ = checkpoint.latest_model(root / "checkpoints" / "pilot", tokenizer_dir=root / "artifacts" / "tokenizer")
    out = bundle.load(bundle.write(tmp_path / "from-vulkan", model, root / "artifacts" / "tokenizer", "# card\n"))
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    assert torch.equal(out.model(x)[0], model(x)[0])
    state = checkpoint.read_state(checkpoint.latest(root / "checkpoints" / "pilot"))
    assert state["inputs"]["model"] == model.config.to_dict()


@pytest.mark.integration
def test_the_cli_trains_on_vulkan_and_auto_passes_over_lavapipe(runs, built, tmp_path):
    layout, _, _ = built
    root = linked(tmp_path / "cli", layout)
    args = [str(Path(sys.executable).parent / "chatpipe"), "train", "--phase", "pilot",
            "-p", str(PROJECT_ROOT / "configs" / "tiny.yaml")]
    for setting in (*TEST_OVERRIDES, *STEPS, "train.device=vulkan", "pilot.steps=4"):
        args += ["-S", setting]
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train pilot: 4 steps on vulkan (requested)" in proc.stdout + proc.stderr
    device, why = devices.pick("auto")  # what `auto` takes here: each kind of machine has its own answer
    if torch.cuda.is_available():
        assert (device.name, why) == ("cuda", "auto: cuda")
    elif "llvmpipe" in vulkan_step.device_name() or "SwiftShader" in vulkan_step.device_name():
        assert device.name == "cpu" and "vulkan: only a software renderer (" in why, why
    else:  # a hardware Vulkan device
        assert (device.name, why) == ("vulkan", "auto: vulkan (cuda: no CUDA GPU)")


def test_what_vulkan_cannot_run_is_refused_before_any_work(built, tmp_path):
    from chatpipe.tasks.common.errors import ConfigError

    layout, _, _ = built
    root = linked(tmp_path / "p", layout)
    with pytest.raises(ConfigError, match=r"^params: train.grad_accum: grad_accum > 1 on train.device=vulkan: "):
        run(root, "vulkan", "train.grad_accum=2")  # what params decide: when they load
    with pytest.raises(ConfigError, match="vulkan does not support MoE layers"):
        run(root, "vulkan", "model.moe={n_experts: 2, top_k: 1}")  # what the model's shape decides: at build
    with pytest.raises(ConfigError, match="vulkan does not train the sft phase"):  # the phase's row
        loop.run(test_params(*STEPS, "train.device=vulkan", "sft.enabled=true"), Layout(root), "sft")
