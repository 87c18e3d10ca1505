"""Chat fine-tuning: the weighted loss is normalised over the whole optimizer step, and the sft phase runs
from the full model's weights on packed conversations."""
from __future__ import annotations

import contextlib

import pytest
import torch

from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.tokens.reader import require_supervised
from chatpipe.tasks.train import sft
from chatpipe.tasks.train.backends.offload import StepContext
from chatpipe.tasks.train.distributed import Ranks
from chatpipe.tasks.train.step import forward_backward
from tests.conftest import test_params


class Batches:
    """The batches a reader would give, fixed: (x, y, w) per call."""

    def __init__(self, batches):
        self.batches = list(batches)

    def next_batch(self, weights: bool = False):
        return self.batches.pop(0)

    def check_supervised(self, w):
        require_supervised(w, "a fixed batch")


def step_gradients(model, batches, accum: int, objective=sft.weighted):
    model.zero_grad()
    cfg = test_params().train.model_copy(update={"grad_accum": accum})
    context = StepContext(model, model, None, objective, cfg, Batches(batches), Ranks(), torch.device("cpu"),
                          contextlib.nullcontext, weighted=True)
    loss, _ = forward_backward(context)
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_grad_accum_equals_one_batch_with_uneven_masks():
    """A micro-batch with 5% supervised tokens beside one with 90%: two micro-steps take the one-batch step."""
    torch.manual_seed(0)
    model = Transformer(preset("chat-7m", vocab_size=97, n_layer=2, n_embd=32, n_head=4, block_size=40))
    x, y = torch.randint(0, 97, (2, 40)), torch.randint(0, 97, (2, 40))
    w = torch.zeros(2, 40)
    w[0, :2] = 1.0    # 5%
    w[1, :36] = 1.0   # 90%
    one_loss, one = step_gradients(model, [(x, y, w)], accum=1)
    two_loss, two = step_gradients(model, [(x[:1], y[:1], w[:1]), (x[1:], y[1:], w[1:])], accum=2)
    assert abs(one_loss - two_loss) < 1e-5
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

    # The trap: each micro-batch's own mean, averaged (the step scales by 1 / Σw = 1 / 38 here).
    _, naive = step_gradients(model, [(x[:1], y[:1], w[:1]), (x[1:], y[1:], w[1:])], accum=2,
                              objective=lambda m, x, y, w: (sft.weighted(m, x, y, w)[0] / w.sum() * 38 / 2, {}))
    assert max((a - b).abs().max().item() for a, b in zip(one, naive)) > 1e-3  # the test can tell them apart


def test_a_batch_without_a_supervised_token_is_an_error_not_a_loss_of_zero():
    import pytest

    from chatpipe.tasks.common.errors import InputError

    model = Transformer(preset("chat-7m", vocab_size=97, n_layer=1, n_embd=32, n_head=4, block_size=8))
    x = torch.randint(0, 97, (1, 8))
    with pytest.raises(InputError, match="no supervised token"):
        step_gradients(model, [(x, x, torch.zeros(1, 8))], accum=1)


def sft_project(root, built, trained):
    """A project with the built data, the trained full model's checkpoints and the packed rows."""
    import shutil

    from chatpipe.tasks.common.layout import Layout
    from chatpipe.tasks.tokens import pack
    from tests.conftest import TINY, linked

    root = linked(root, built[0])
    (root / "data" / "documents").symlink_to(built[0].documents.resolve())
    shutil.copytree(trained[0].checkpoints / "full", root / "checkpoints" / "full")
    with contextlib.chdir(root):
        assert pack.run(test_params(*TINY, "sft.enabled=true"), Layout(root)).ok
    return root


def test_the_sft_phase_starts_from_the_full_model(built, trained, tmp_path):
    from pathlib import Path

    from chatpipe.tasks.common.layout import Layout
    from chatpipe.tasks.train import loop
    from tests.conftest import TINY

    root = sft_project(tmp_path / "proj", built, trained)
    with contextlib.chdir(root):
        result = loop.run(test_params(*TINY, "sft.enabled=true", "sft.steps=8"), Layout(root), "sft")
    assert result.ok, result.summary
    assert Path(result.metrics["init"]).parent == trained[0].checkpoints.resolve() / "full" or \
        Path(result.metrics["init"]).parent.name == "full"
    assert result.metrics["steps"] == 8 and result.metrics["final_val_loss"] > 0
    off = loop.run(test_params(*TINY, "sft.enabled=false"), Layout(root), "sft")
    assert off.ok and "skipped" in off.summary


@pytest.mark.integration
@pytest.mark.slow  # resume after SIGKILL stays in make test through the training loop's own test (test_train.py)
def test_sft_resumes_bit_exact_after_sigkill(built, trained, tmp_path):
    from tests.conftest import kill_when
    from tests.train.test_train import cli_train, curve

    steps = ["sft.enabled=true", "sft.steps=20", "train.checkpoint.every=3", "train.checkpoint.keep=2"]

    def train(root, wait=True):
        return cli_train(root, *steps, wait=wait, phase="sft")

    other, killed = (sft_project(tmp_path / name, built, trained) for name in ("uninterrupted", "killed"))
    train(other)
    proc = train(killed, wait=False)
    kill_when(proc, killed / "checkpoints" / "sft" / "step-000009")
    assert "train sft: 20 steps" in train(killed).stdout
    assert curve(killed, "sft") == curve(other, "sft")  # same strings: same float bits


@pytest.mark.integration
@pytest.mark.slow  # 1 min; data parallelism stays in make test through the training loop's own test (test_train.py)
def test_sft_data_parallel_matches_one_process(built, trained, tmp_path):
    """torchrun with 2 gloo ranks = 1 process with the same global batch = 2 accumulation steps: the loss is
    normalised by the supervised weight of the whole step, across ranks too."""
    import os
    import subprocess
    import sys

    import pytest

    from tests.train.test_train import CHATPIPE, TINY_CLI, TINY_OVERLAY, curve

    steps = ["sft.enabled=true", "sft.steps=6", "train.checkpoint.every=6", "train.validation.every=6"]

    def train(root, *extra, launcher=()):
        args = [*launcher, CHATPIPE, "train", "--phase", "sft", "-C", str(root), "-p", TINY_OVERLAY]
        for o in [*TINY_CLI, *steps, *extra]:
            args += ["-S", o]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]

    single, accum, ranks = (sft_project(tmp_path / n, built, trained) for n in ("single", "accum", "ranks"))
    train(single)
    train(accum, "train.grad_accum=2")
    train(ranks, launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29519"))
    base = [float(r[1]) for r in curve(single, "sft")]
    for root in (accum, ranks):
        assert [float(r[1]) for r in curve(root, "sft")] == pytest.approx(base, rel=1e-4), root
