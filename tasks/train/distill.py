"""Logit distillation: the `distill` training phase, where a student learns from a teacher's logits.

The teacher is one of our own checkpoints (by default the sft run's), or with `distill.teacher: init` model.init's
pretrained checkpoint as it is (Option C: its ternarized copy heals by distillation from its float self); either way
it shares the tokenizer and its next-token distribution is over the same vocabulary as the student's. The student is the model
section with `distill.student` on top (e.g. `quant: ternary`, or a smaller shape); it starts from the
teacher's weights (`init: teacher` — quantization-aware training from the float model) or from scratch.

    loss = alpha * CE(student, data) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

p_T = softmax(teacher / T), q_T = softmax(student / T); T^2 keeps the KD gradient's size independent of
T (Hinton et al., 2015). With `top_k`, the teacher's distribution is cut to its k most likely tokens
and renormalized; the student's log-probabilities stay over the whole vocabulary, so the term is the
cross-entropy of the cut teacher against the student minus the cut teacher's entropy. The teacher runs
in eval mode without gradients, in bf16 on CUDA. The trainer (tasks/train/trainer.py) runs the phase as its row
in tasks/train/phases.py says; this module says what the student is, who teaches it and on which loss.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from chatpipe.model.config import ModelConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.config import Params, trained
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import checkpoint, pretrained


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float,
            temperature: float, top_k: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The distillation loss of student logits [B, T, V] against teacher logits [B, T, V] (same vocab).

    Returns (loss, {"ce": data cross-entropy, "kd": the KL term before its weights}); positions whose
    target is -1 are ignored by both terms.
    """
    vocab = student.size(-1)
    s, t, y = student.reshape(-1, vocab).float(), teacher.detach().reshape(-1, vocab).float(), targets.reshape(-1)
    keep = y != -1
    ce = F.cross_entropy(s, y, ignore_index=-1)
    log_q = F.log_softmax(s[keep] / temperature, dim=-1)
    t = t[keep] / temperature
    if top_k is not None and top_k < vocab:
        t, index = t.topk(top_k, dim=-1)
        log_q = log_q.gather(-1, index)
    log_p = F.log_softmax(t, dim=-1)
    kd = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return alpha * ce + (1 - alpha) * temperature ** 2 * kd, {"ce": ce.detach(), "kd": kd.detach()}


def student_config(params: Params, vocab_size: int) -> ModelConfig:
    """The model section, then `distill.student`'s overrides on top."""
    return pretrained.model_config(params, vocab_size, params.distill.student.overrides(), key="distill.student")


@dataclass
class Teacher:
    model: Transformer
    checkpoint: Path | str  # the teacher checkpoint's directory, or model.init's spec
    identity: dict  # what the student's checkpoints record: which teacher, by content hash

    @classmethod
    def load(cls, params: Params, layout: Layout, device: torch.device) -> Teacher:
        """The teacher, frozen: `distill.teacher`'s latest checkpoint (refused if trained with another tokenizer), or
        with `init` model.init's pretrained checkpoint as it is (Option C: a model healed by its float self)."""
        if params.distill.teacher == "init":
            model, identity = imported(params, layout)
            where = params.model.init
        else:
            phase = trained(params, params.distill.teacher)
            model, state = checkpoint.latest_model(layout.checkpoints / phase, device, tokenizer_dir=layout.tokenizer)
            where = Path(state["path"])
            weights = json.loads((where / "checksums.json").read_text())["model.safetensors"]
            identity = {"phase": phase, "step": state["step"], "model": state["inputs"]["model"],
                        "weights_sha256": weights}
        model = model.to(device)
        if device.type == "cuda":
            model = model.to(torch.bfloat16)
        model.requires_grad_(False)
        return cls(model.eval(), where, identity)

    def _import_again(self) -> Transformer:
        """model.init's checkpoint read again, as the teacher was before it moved to its device (on CUDA, to bf16)."""
        model = Transformer(ModelConfig.from_dict(self.identity["model"]))
        pretrained.load(model, self.checkpoint, self.identity["init_rows"])
        return model

    def init_student(self, student: Transformer) -> None:
        """Copy the teacher's weights into a student of the same shape (a ternary student included)."""
        mine, theirs = student.config.to_dict(), ModelConfig.from_dict(self.identity["model"]).to_dict()  # old keys too
        if diff := sorted(k for k in mine if k not in ("quant", "ternary") and mine[k] != theirs.get(k)):
            raise ConfigError(f"params: distill.init=teacher needs the student's shape to be the teacher's; "
                              f"it differs in {', '.join(diff)} (use distill.init=scratch)")
        if isinstance(self.checkpoint, Path):
            checkpoint.load_weights(student, self.checkpoint)
        else:  # the float import, into the student's weights (a ternary linear's latent ones included)
            student.load_state_dict(self._import_again().state_dict())

    def objective(self, params: Params) -> Callable:
        """loss(model, x, y) -> (loss, parts) for the training loop."""
        d = params.distill

        def loss(model, x: torch.Tensor, y: torch.Tensor):
            logits, _ = model(x)
            if d.alpha == 1:  # the data alone (e.g. a teacher's answers: sequence-level): no teacher forward
                ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-1)
                return ce + model_aux(model), {"ce": ce.detach()}
            with torch.no_grad():
                teacher_logits, _ = self.model(x)
            total, parts = kd_loss(logits, teacher_logits, y, d.alpha, d.temperature, d.top_k)
            return total + model_aux(model), parts
        return loss


def imported(params: Params, layout: Layout) -> tuple[Transformer, dict]:
    """model.init's checkpoint as it is, float, on the CPU (the `init` teacher), and its identity as the student's
    checkpoints record it."""
    spec = params.model.init  # set: the params refuse `distill.teacher: init` without it
    manifest = json.loads((layout.shards / "manifest.json").read_text())
    model = Transformer(dataclasses.replace(pretrained.model_config(params, manifest["vocab_size"]), quant=None,
                                            ternary=None))
    rows = pretrained.init(model, params, layout)
    return model, {"phase": "init", "model": model.config.to_dict(), "init": pretrained.identity(spec),
                   "init_rows": rows}


def model_aux(model) -> torch.Tensor | float:
    """The MoE load-balancing term the model's own loss would add (0 for dense models)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return inner.aux_loss_coef * inner.last_aux_loss if inner.aux_loss_coef else 0.0
