"""The phase table (tasks/train/phases.py) and the train sections' load-time rules (tasks/common/config.py)."""
from __future__ import annotations

import pytest

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.pipeline import PIPELINE
from chatpipe.tasks.train.phases import LINE, PHASES, peak

from conftest import test_params


def test_every_training_stage_has_a_row_and_reads_it():
    assert list(PHASES) == [s.name for s in PIPELINE.values() if s.cli == "train"]
    assert LINE == ("pilot", "full", "sft")  # distill trains a new model (its student)
    params = test_params("model.init=hf:/models/x", "full.init=scratch")
    assert {name: p.start(params) for name, p in PHASES.items()} == \
        {"pilot": "import", "full": "import", "sft": "full", "distill": "teacher"}
    assert [p.steps(params) for p in PHASES.values()] == [1200, 800, 6, 400]  # the tiny overlay's, sft's from conftest
    assert [p.enabled(params) for p in PHASES.values()] == [True, True, False, False]


def test_a_phase_recipe_keeps_the_floor_ratio():
    train = test_params("train.optimizer.lr=1e-3", "train.schedule.lr_min=1e-4").train
    assert peak(train, None) is train
    sft = peak(train, 5e-4, warmup_steps=7)
    assert (sft.optimizer.lr, sft.schedule.lr_min, sft.schedule.warmup_steps) == (5e-4, 5e-4 * 1e-4 / 1e-3, 7)
    assert sft.optimizer.beta2 == train.optimizer.beta2 and sft.checkpoint == train.checkpoint


@pytest.mark.parametrize("override, message", [
    ("train.lr=1e-3", "train.lr: moved to train.optimizer.lr"),
    ("train.optimizer=muon", "train.optimizer: moved to train.optimizer.name"),
    ("train.pilot_steps=10", "train.pilot_steps: moved to pilot.steps"),
    ("train.full_init=scratch", "train.full_init: moved to full.init"),
    ("train.eval_every=10", "train.eval_every: moved to train.validation.every"),
    ("train.keep_checkpoints=1", "train.keep_checkpoints: moved to train.checkpoint.keep"),
    ("train.warmup_steps=1", "train.warmup_steps: moved to train.schedule.warmup_steps"),
])
def test_an_old_key_names_its_new_place(override, message):
    with pytest.raises(ConfigError) as e:
        load_params(overrides=[override], base=PROJECT_ROOT / "params.yaml")
    assert str(e.value) == f"params: {message}"


def test_an_old_key_in_a_file_too(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  lr: 1.0e-3\n  sample_every: 100\n")
    with pytest.raises(ConfigError, match=r"^params: train.lr: moved to train.optimizer.lr; "
                                          r"train.sample_every: moved to train.sample.every$"):
        load_params([old], base=PROJECT_ROOT / "params.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["train.batch_size=6", "train.grad_accum=4"], "train.batch_size: not divisible by train.grad_accum"),
    (["train.kernels=triton", "train.device=cpu"], "train.kernels: triton kernels run on CUDA"),
    (["train.device=vulkan", "train.weights=bf16"], "train.weights: bf16 weights on train.device=vulkan: "),
    (["train.device=vulkan", "train.activation_checkpointing=true"], "train.activation_checkpointing: "),
    (["train.device=vulkan", "train.compile=true"], "train.compile: torch.compile on train.device=vulkan"),
    (["train.device=vulkan", "train.optimizer.name=muon"], "train.optimizer.name: an optimizer other than adamw"),
    (["train.parallel=fsdp", "train.optimizer.name=muon"], "train.optimizer.name: muon orthogonalizes"),
])
def test_a_bad_combination_is_refused_when_params_load(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_params(overrides=overrides, base=PROJECT_ROOT / "params.yaml")
    assert str(e.value).startswith(f"params: {message}") and "\n" not in str(e.value), str(e.value)


def test_auto_waits_for_the_device_it_picks():
    train = test_params("train.kernels=triton", "train.device=auto").train  # auto may be cuda
    assert train.refusal("cuda") is None and train.refusal("cpu").startswith("train.kernels: ")
