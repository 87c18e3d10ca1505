"""Benchmark: training tokens/s of our model's step against Hugging Face `LlamaForCausalLM`, same shape.

Both models get the same shape (layers, width, heads, KV heads, SwiGLU hidden size, vocab, tied
embeddings, RoPE, RMSNorm, SDPA attention), the same batch and sequence length, the same optimizer
(AdamW, betas 0.9/0.95, weight decay on matrices), the same clipping, dtype (fp32 on CPU, bf16 autocast
on CUDA) and compile setting. A step is forward, cross-entropy, backward, clip, optimizer step. Both are
warmed up, then timed in interleaved rounds (alternating which goes first); we report the median tokens/s and the ratio ours/peer (and
MFU on CUDA).

    python bench/train.py                       # CPU, chat-7m, batch 16 x 256
    python bench/train.py --preset nano-125m --batch 16 --seq 1024 --device cuda --compile
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import Transformer, flops_per_token, preset  # noqa: E402
from tasks.train.backends.devices import DEVICES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def llama_like(cfg):
    """The HF model with our shape (no custom code: plain `transformers`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_hidden,
                     num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                     num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.block_size,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                     attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
    return LlamaForCausalLM(hf)


def make_step(model, logits_of, device, autocast, lr=3e-4):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))

    def step(x, y):
        with autocast():
            logits = logits_of(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="chat-7m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=None, help="default: the preset's block size")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])  # torch devices: the step is timed here
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    cfg = preset(args.preset, **({"block_size": args.seq} if args.seq else {}))
    device_kind = DEVICES[args.device]
    device = device_kind.torch_device()
    autocast = (lambda: torch.autocast(device.type, dtype=device_kind.autocast)) if device_kind.autocast \
        else contextlib.nullcontext
    torch.manual_seed(0)
    ours = Transformer(cfg).to(device)
    theirs = llama_like(cfg).to(device)
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    assert n_ours == n_theirs, f"shapes differ: {n_ours} vs {n_theirs} parameters"
    fwd = {"ours": lambda m: (lambda x: m(x)[0]), "transformers": lambda m: (lambda x: m(input_ids=x).logits)}
    steps = {}
    for name, model in (("ours", ours), ("transformers", theirs)):
        model.train()
        fn = torch.compile(model) if args.compile else model
        steps[name] = make_step(model, fwd[name](fn), device, autocast)

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size), generator=g).to(device)
    y = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(args.warmup):
            step(x, y)
    sync()
    seconds = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps.items()) if r % 2 == 0 else list(steps.items())[::-1]  # no first-mover bias
        for name, step in order:
            t = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            sync()
            seconds[name].append((time.perf_counter() - t) / args.steps)

    tokens = args.batch * cfg.block_size
    tps = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    peak = device_kind.peak_flops()
    flops = flops_per_token(cfg, cfg.block_size)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    result = {
        "benchmark": "train-step", "date": dt.date.today().isoformat(),
        "machine": {"device": gpu or args.device, "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "shape": {"preset": args.preset, "params": n_ours, "batch": args.batch, "seq": cfg.block_size,
                  "dtype": str(device_kind.autocast or torch.float32), "compile": args.compile},
        "ours": {"tokens_per_s": round(tps["ours"], 1), "step_s": seconds["ours"],
                 "mfu": round(flops * tps["ours"] / peak, 4) if peak else None},
        "peer": {"name": "transformers LlamaForCausalLM (sdpa)", "tokens_per_s": round(tps["transformers"], 1),
                 "step_s": seconds["transformers"],
                 "mfu": round(flops * tps["transformers"] / peak, 4) if peak else None},
        "ratio_ours_over_peer": round(tps["ours"] / tps["transformers"], 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.preset}-{args.device}{'-compile' if args.compile else ''}"
    out = args.out / f"{result['date']}-train-{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    mfu = f", MFU {result['ours']['mfu']:.0%}" if result["ours"]["mfu"] else ""
    print(f"| train step, {args.preset} ({n_ours / 1e6:.1f}M), batch {args.batch}×{cfg.block_size}, "
          f"{gpu or args.device}{', compile' if args.compile else ''} | {tps['ours']:,.0f} tok/s{mfu} | "
          f"LlamaForCausalLM {tps['transformers']:,.0f} tok/s | {result['ratio_ours_over_peer']:.2f}× |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
