"""Part g of the GPU run: what fine-tuning a Qwen3-0.6B-sized model costs, full against LoRA.

Why: `model.init: hf:Qwen/Qwen3-0.6B` with `train.lora` is the pipeline's fine-tuning path, and the memory
options (train.weights, train.activation_checkpointing, train.lora) exist to make it fit; this measures what
each buys on the lent GPU. The model has Qwen3-0.6B's shape (vocab 151,936, 1,024 wide, 28 layers, 16 query
/ 8 KV heads of 128, SwiGLU 3,072, tied, QK-norm, RoPE theta 1e6) with random weights (no download; speed
and memory do not depend on the values), trained on random tokens by the pipeline's own pieces:
tasks/train/trainer.py's `memory` (weights dtype, activation checkpointing), tasks/train/lora.py's `attach`,
tasks/train/optim.py's `Optimizers` (fused AdamW on what requires grad). Every mode runs bf16 autocast and
the chunked LM head + loss (train.kernels: chunked: a 152k vocabulary's logits are 2.5 GB per 4k tokens).

    full       fp32 weights, grads and AdamW state (the pipeline's default)
    full-bf16  train.weights: bf16 + train.activation_checkpointing: bf16 weights, grads and AdamW moments
    lora       train.weights: bf16 (the frozen base) + train.lora rank 16 on every block linear (fp32 adapters)

Per mode: `--warmup` untimed steps, then `--steps` timed ones; tokens/s over the timed steps and
torch.cuda.max_memory_allocated over the whole mode (model, optimizer and activations).

    python bench/gpu/finetune.py --out DIR            # on the GPU: writes DIR/finetune-qwen3-0.6b.json
    python bench/gpu/finetune.py --out DIR --smoke    # a tiny shape on CPU, the suite's --cpu-smoke
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatpipe.model.config import ModelConfig  # noqa: E402
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.tasks.common.config import load_params  # noqa: E402
from chatpipe.tasks.train import lora, trainer  # noqa: E402
from chatpipe.tasks.train.optim import Optimizers  # noqa: E402

QWEN3_06B = dict(vocab_size=151936, n_layer=28, n_embd=1024, n_head=16, n_kv_heads=8, head_dim=128, ffn_hidden=3072,
                 tie_embeddings=True, qk_norm=True, rope_theta=1e6, norm_eps=1e-6)
TINY = dict(vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_kv_heads=2, head_dim=32, ffn_hidden=96,
            tie_embeddings=True, qk_norm=True, rope_theta=1e6, norm_eps=1e-6)  # head_dim != n_embd / n_head, as Qwen3
MODES = {"full": [],
         "full-bf16": ["train.weights=bf16", "train.activation_checkpointing=true"],
         "lora": ["train.weights=bf16", "train.lora.rank=16", "train.lora.alpha=32"]}


def run_mode(name: str, shape: dict, batch: int, seq: int, warmup: int, steps: int, device: torch.device) -> dict:
    cfg = load_params(overrides=[f"train.device={device.type}", "train.kernels=chunked", "train.optimizer.lr=1e-4",
                                 *MODES[name]]).train
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(ModelConfig(block_size=seq, **shape))
    model.use_kernels("chunked")
    trainer.memory(model, cfg)
    if cfg.lora:
        lora.attach(model, cfg.lora.model_dump())
    result = {**measure(model, model, Optimizers(model, cfg), batch, seq, warmup, steps, cfg.optimizer.grad_clip,
                        device),
              "params_total": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
              "trains": trainer.trains(model, cfg) or "every weight, fp32"}
    del model
    gc.collect()
    print(f"{name}: {result['tokens_per_s']:,} tokens/s, {result['max_memory_allocated_gib']} GiB peak, "
          f"{result['trains']}", flush=True)
    return result


def measure(model, train_model, optimizers: Optimizers, batch: int, seq: int, warmup: int, steps: int,
            grad_clip: float, device: torch.device) -> dict:
    """`warmup` + `steps` training steps on random tokens under bf16 autocast (train_model: the model as wrapped
    for training); tokens/s over the timed steps, peak memory since the caller's reset, the first and last loss."""
    x = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device=device)
    x, y = x[:, :-1], x[:, 1:]
    losses, start = [], None
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = train_model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizers.step()
        optimizers.zero_grad()
        losses.append(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": round(batch * seq * steps / seconds), "step_ms": round(1000 * seconds / steps, 1),
            "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.type == "cuda" else None,
            "params_trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "loss_first_last": [round(float(losses[0]), 4), round(float(losses[-1]), 4)]}


def each_mode(report: dict, names, run) -> None:
    """report["modes"][name] = run(name) for each name; out of memory is a result, any other error fails it."""
    for name in names:
        try:
            report["modes"][name] = run(name)
        except torch.OutOfMemoryError as e:  # a result too: this mode does not fit at this batch
            report["modes"][name] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - recorded, and the part fails
            report["ok"] = False
            report["modes"][name] = {"error": f"{type(e).__name__}: {e}"}


def write_report(report: dict, path: Path, write: bool = True) -> None:
    """The part's JSON report at `path` (`write`: this process writes it; fsdp: the main rank), then exit 1 unless
    every mode ran: the suite reads both."""
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    if not report["ok"]:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--smoke", action="store_true", help="a tiny shape for 1 + 2 steps on CPU")
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    shape, batch, seq, warmup, steps = ((TINY, 2, 32, 1, 2) if args.smoke else
                                        (QWEN3_06B, args.batch, args.seq, args.warmup, args.steps))
    report = {"ok": True, "shape": "tiny (smoke)" if args.smoke else "Qwen3-0.6B", "model": shape, "batch": batch,
              "seq": seq, "steps": steps, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "modes": {}}
    each_mode(report, args.modes, lambda name: run_mode(name, shape, batch, seq, warmup, steps, device))
    write_report(report, args.out / "finetune-qwen3-0.6b.json")


if __name__ == "__main__":
    main()
