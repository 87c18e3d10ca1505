"""Part h of the GPU run: nano-1b trained under fsdp against ddp on one GPU (tokens/s, peak memory).

Why: `train.parallel: fsdp` (tasks/train/parallel.py) exists for models that do not fit one GPU replicated; on
one GPU it shards over a group of one, so what it costs there is its bookkeeping and what it buys is its
mixed-precision policy (bf16 all-gathered weights over the fp32 shards). This measures both against ddp
(which on one process is the plain model) with the training loop's own pieces: Ranks (a process group of one),
parallel.MODES' wrap, Optimizers (fused AdamW), bf16 autocast as train.precision resolves on CUDA, clip, step.
Random tokens and weights: speed and memory do not depend on the values. Run under torchrun, as a user would.

    python -m torch.distributed.run --nproc_per_node 1 bench/gpu/fsdp.py --out DIR          # on the GPU
    python -m torch.distributed.run --nproc_per_node 1 bench/gpu/fsdp.py --out DIR --smoke  # tiny, on CPU

Writes DIR/fsdp-nano-1b.json: per mode tokens/s over the timed steps and torch.cuda.max_memory_allocated
over the whole mode (model, optimizer, activations; null on CPU).
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from finetune import each_mode, measure, write_report  # noqa: E402  (bench/gpu, this script's folder)

from chatpipe.model.presets import preset  # noqa: E402
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.tasks.common.config import load_params  # noqa: E402
from chatpipe.tasks.train import parallel  # noqa: E402
from chatpipe.tasks.train.distributed import Ranks  # noqa: E402
from chatpipe.tasks.train.optim import Optimizers  # noqa: E402


def run_mode(mode: str, shape: dict, batch: int, seq: int, warmup: int, steps: int, ranks: Ranks,
             device: torch.device) -> dict:
    cfg = load_params(overrides=[f"train.device={device.type}", f"train.parallel={mode}", "train.optimizer.lr=1e-4"]).train
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(preset("nano-1b", block_size=seq, **shape))
    train_model = parallel.MODES[mode].wrap(model, cfg, ranks, device, torch.bfloat16)
    result = measure(model, train_model, Optimizers(model, cfg), batch, seq, warmup, steps, cfg.optimizer.grad_clip,
                     device)
    del model, train_model
    gc.collect()
    print(f"{mode}: {result['tokens_per_s']:,} tokens/s, {result['max_memory_allocated_gib']} GiB peak", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="a tiny nano-1b-shaped model for 1 + 2 steps on CPU")
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    shape, batch, seq, warmup, steps = (
        (dict(vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_kv_heads=2), 2, 32, 1, 2) if args.smoke
        else ({}, args.batch, args.seq, args.warmup, args.steps))
    ranks = Ranks()
    ranks.start(device.type, group=True)
    report = {"ok": True, "shape": "tiny (smoke)" if args.smoke else "nano-1b", "batch": batch, "seq": seq,
              "steps": steps, "world_size": ranks.world, "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "modes": {}}
    each_mode(report, parallel.MODES, lambda mode: run_mode(mode, shape, batch, seq, warmup, steps, ranks, device))
    write_report(report, args.out / "fsdp-nano-1b.json", write=ranks.main)


if __name__ == "__main__":
    main()
