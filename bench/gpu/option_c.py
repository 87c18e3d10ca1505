"""Part i of the GPU run: Option C at SmolLM2-135M's shape, ternary selections healed by distillation from their
float teacher, at a budget the CPU cannot afford.

Why: the code seed's best-quality route is a pretrained model, ternarized, healed by distillation from its float
self; which linears to make ternary is the trade-off (issue 29). On the CPU each distillation of the real 135M
model costs tens of minutes; this part measures what a lent GPU does with the same step: tokens/s, peak memory
and the bundle size of each selection. The weights are random (real ones cannot travel to the GPU machine), so
the losses show the loop runs, not what a selection keeps; the teacher is a float model of SmolLM2's shape
(vocab 49,152, 30 × 576, 9 query / 3 KV heads, SwiGLU 1,536, tied), the students start as its copy with their
selection ternary (tasks/train/distill.py's init: teacher) and train on the distillation loss (kd_loss, alpha 0.5,
T 1) under bf16 autocast, the teacher in bf16 without gradients, as the pipeline's distill phase runs it.

    all        every block linear ternary
    mlp        w1, w2, w3 (gate, down, up) ternary; attention float
    attention  wq, wk, wv, wo ternary; MLPs float
    inner      every linear of all but the first and last two blocks

BitLinear trains on torch ops (its weight and activation quantizers); the Triton ternary matmul serves, it does
not train. Per selection: `--warmup` untimed steps, `--steps` timed; bench/gpu/finetune.py's `measure`.

    python bench/gpu/option_c.py --out DIR            # on the GPU: writes DIR/option-c-smollm2.json
    python bench/gpu/option_c.py --out DIR --smoke    # a tiny shape on CPU, the suite's --cpu-smoke
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.finetune import each_mode, measure, write_report  # noqa: E402
from chatpipe.model.config import ModelConfig  # noqa: E402
from chatpipe.model.info import bundle_bytes  # noqa: E402
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.tasks.common.config import load_params  # noqa: E402
from chatpipe.tasks.train.distill import kd_loss  # noqa: E402
from chatpipe.tasks.train.optim import Optimizers  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, n_layer=30, n_embd=576, n_head=9, n_kv_heads=3, head_dim=64, ffn_hidden=1536,
               tie_embeddings=True, rope_theta=1e5)
TINY = dict(vocab_size=512, n_layer=5, n_embd=64, n_head=4, n_kv_heads=2, ffn_hidden=128, tie_embeddings=True)
SELECTIONS = {"all": None, "mlp": {"roles": ["w1", "w2", "w3"]}, "attention": {"roles": ["wq", "wk", "wv", "wo"]},
              "inner": {"skip_first": 2, "skip_last": 2}}


def teacher_of(shape: dict, seq: int, device: torch.device) -> Transformer:
    """The float teacher: random weights of `shape`, in bf16 on CUDA (as the distill phase runs its teacher)."""
    torch.manual_seed(0)
    with torch.device(device):
        teacher = Transformer(ModelConfig(block_size=seq, **shape)).eval().requires_grad_(False)
    return teacher.to(torch.bfloat16) if device.type == "cuda" else teacher


def run_selection(name: str, teacher: Transformer, batch: int, seq: int, warmup: int, steps: int,
                  device: torch.device) -> dict:
    config = ModelConfig(**{**teacher.config.to_dict(), "quant": "ternary", "ternary": SELECTIONS[name]})
    with torch.device(device):
        student = Transformer(config)
    student.load_state_dict({k: v.float() for k, v in teacher.state_dict().items()})  # Option C: the teacher's copy
    train = load_params(overrides=[f"train.device={device.type}", "train.optimizer.lr=1e-4"]).train

    def distill(x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            taught = teacher(x)[0]
        return None, kd_loss(student(x)[0], taught, y, alpha=0.5, temperature=1.0)[0]

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    size = bundle_bytes(config)
    result = {**measure(student, distill, Optimizers(student, train), batch, seq, warmup, steps,
                        train.optimizer.grad_clip, device),
              "ternary_linears": f"{size['ternary_linears']} of {size['linears']}",
              "bundle_mib": round(size["bytes"] / 2**20, 1), "bundle_of_float": round(size["bytes"] / size["float"], 3)}
    print(f"{name}: {result['tokens_per_s']:,} tokens/s, {result['ternary_linears']} ternary, bundle "
          f"{result['bundle_mib']} MiB ({result['bundle_of_float']:.0%} of fp32)", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=list(SELECTIONS))
    ap.add_argument("--smoke", action="store_true", help="a tiny shape for 1 + 2 steps on CPU")
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    shape, batch, seq, warmup, steps = ((TINY, 2, 32, 1, 2) if args.smoke else
                                        (SMOLLM2, args.batch, args.seq, args.warmup, args.steps))
    teacher = teacher_of(shape, seq, device)
    report = {"ok": True, "shape": "tiny (smoke)" if args.smoke else "SmolLM2-135M (random weights)", "model": shape,
              "batch": batch, "seq": seq, "steps": steps, "loss": "kd_loss, alpha 0.5, T 1; teacher bf16 on CUDA",
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "modes": {}}
    each_mode(report, args.selections, lambda name: run_selection(name, teacher, batch, seq, warmup, steps, device))
    write_report(report, args.out / "option-c-smollm2.json")


if __name__ == "__main__":
    main()
