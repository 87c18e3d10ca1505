"""The CUDA paths of training, on a real GPU: skipped without one (CI), run by bench/gpu/run.sh.

What CPU runs cannot show: the model with our Triton kernels (kernels: triton) inside a real bf16 step,
against torch's own ops; and the training loop on CUDA with bf16 autocast and `compile: true`, with and
without the kernels, to a healthy loss, a checkpoint and a resumed phase. The GPU image has none of the
ingest stage's dependencies, so bench/gpu/run.sh points CHATPIPE_GPU_PROJECT at a project whose shards
and tokenizer were built on the CPU; without it the tests use the suite's `built` fixture.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import pytest
import torch

from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.layout import Layout
from tests.conftest import TINY, linked, test_params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture
def project(request, tmp_path) -> Layout:
    """A fresh project root whose shards and tokenizer are read-only links to a built project."""
    given = os.environ.get("CHATPIPE_GPU_PROJECT")
    source = Layout(Path(given)) if given else request.getfixturevalue("built")[0]
    return Layout(linked(tmp_path / "proj", source))


def losses_and_grads(model: Transformer, x, y, dtype):
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        loss = model(x, y)[1]
    loss.backward()
    return loss.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_kernels_in_the_model_match_torch(dtype):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    cfg = preset("chat-7m", vocab_size=4096, n_layer=2)
    ours = Transformer(cfg).cuda()
    theirs = Transformer(cfg).cuda()
    theirs.load_state_dict(ours.state_dict())
    ours.use_kernels("triton")
    x = torch.randint(0, cfg.vocab_size, (8, cfg.block_size), device="cuda")
    y = torch.roll(x, -1, 1)
    loss_k, grads_k = losses_and_grads(ours, x, y, dtype)
    loss_t, grads_t = losses_and_grads(theirs, x, y, dtype)
    tol = 1e-5 if dtype is None else 2e-2  # bf16: eager rounds more often than the kernels (see test_kernels_triton)
    assert abs(loss_k.item() - loss_t.item()) <= tol * max(1.0, abs(loss_t.item()))
    for name, g in grads_t.items():
        scale = g.abs().max().item() or 1.0
        assert (grads_k[name] - g).abs().max().item() <= 50 * tol * scale, name


@pytest.mark.parametrize(("kernels", "mode"), [("torch", "true"), ("triton", "true"), ("torch", "reduce-overhead")])
def test_compiled_bf16_training_on_cuda(project, kernels, mode):
    """A compiled bf16 pilot (CUDA graphs too) learns, its checkpoint loads, and the full run continues from it."""
    from chatpipe.tasks.train import loop

    steps = ["train.device=cuda", f"train.compile={mode}", "train.precision=auto", f"train.kernels={kernels}",
             "pilot.steps=40", "full.steps=10", "train.checkpoint.every=10", "train.validation.every=20"]
    params = test_params(*TINY, *steps)
    with contextlib.chdir(project.root):
        pilot = loop.run(params, project, "pilot")
        full = loop.run(params, project, "full")
    assert pilot.ok and full.ok, (pilot.summary, full.summary)
    assert "bf16 autocast" in pilot.metrics["device"], pilot.metrics["device"]
    losses = [float(row.split(",")[1]) for row in (project.root / "metrics" / "pilot_curve.csv").read_text().split()[1:]]
    assert len(losses) == 40 and all(map(math.isfinite, losses)), losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses  # it learns
    assert Path(full.metrics["init"]).parent.name == "pilot", full.metrics["init"]
    assert full.metrics["steps"] == 10
