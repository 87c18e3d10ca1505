"""Benchmark: training tokens/s, ours vs transformers' LlamaForCausalLM of the same shape, in every mode.

Modes are fp32 / bf16 x eager / torch.compile; the headline is best against best.

Why: a ratio in one mode says little when either side is faster in another; a user picks the fastest mode
their hardware allows. So every mode runs for both sides, and the headline is each side's fastest mode
against the other's.

Shape. Both models get the same layers, width, heads, KV heads, SwiGLU hidden size, vocab, tied or untied
head, RoPE, RMSNorm, SDPA attention; the parameter counts are asserted equal. Before timing, our initial
weights are copied into theirs (tasks/publish/hf_export.py renames them) and both losses on the batch are
asserted equal, which checks that both sides train on the same objective.

Step. Each side runs its own training objective, as its users would:
  ours          loss = model(x, y)[1]                                   (our model's own cross-entropy)
  transformers  loss = model(input_ids=x, labels=x).loss                (transformers' own loss path)
then backward, clip_grad_norm_(1.0), torch's fused AdamW as our training loop runs it (betas 0.9/0.95,
weight decay 0.1 on matrices, 0 on gains),
zero_grad. The peer is built with `use_cache=False`, the usual training setting (no KV cache kept).

Tokens. x is one random [batch, seq] token batch, the same for both. transformers aligns labels with
input_ids and shifts them inside its loss (position t predicts labels[t + 1]; the last position is padded
out), so labels=x means positions 0..seq-2 predict x[1:]. Ours gets y = x shifted left with the last
target -1 (ignored): the very same seq-1 predictions per row. So both sides run forward and backward over
batch*seq positions and score batch*(seq-1) predicted tokens; tokens/s counts the batch*seq positions
(the JSON also gives the predicted-token count per step).

Modes. fp32: no autocast. bf16: `torch.autocast(device_type, dtype=torch.bfloat16)` around forward and
loss; weights, gradients and AdamW state stay fp32. eager: the module as is. compiled: `torch.compile(model)`
(the model module; the optimizer step stays eager), the same way for both sides. `--modes` picks a subset.
Each mode builds a fresh model and optimizer per side (same seed); each compiled side compiles cold, in a
fresh Inductor cache (torch._inductor.utils.fresh_cache), after torch.compiler.reset() between modes.

Timing. Per side, `--warmup` steps (at least 1) run first, untimed for throughput; then `--rounds` rounds of
`--steps` steps each, the two sides interleaved and alternating which goes first. Tokens/s is
batch*seq over the median round's seconds per step. Compile seconds (compiled modes) = the wall time of the
warm-up steps minus warmup x the steady (median) step: the extra time the first steps cost over steady
ones, which includes tracing and compiling the forward and the backward. The JSON also keeps each warm-up
step's wall time (for eager modes too). MFU is given on CUDA.

    python bench/train.py                                   # CPU, chat-7m, batch 16 x 256, all four modes
    python bench/train.py --modes fp32-eager bf16-eager     # a subset
    python bench/train.py --preset nano-125m --batch 16 --seq 1024 --device cuda
    python bench/train.py --preset chat-7m --batch 2 --seq 64 --warmup 1 --steps 1 --rounds 1 --out /tmp/b  # smoke

Writes bench/results/<date>-train-<preset>-<device>.json (a subset of modes adds them to the name) and
prints a markdown table for the README.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatpipe.model.info import flops_per_token
from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.tasks.train.backends.devices import DEVICES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEER = "transformers LlamaForCausalLM (sdpa)"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # autocast dtype (None: none)
MODES = [f"{p}-{c}" for p in PRECISIONS for c in ("eager", "compiled")]


def llama_like(cfg):
    """The HF model with our shape (no custom code: plain `transformers`), configured for training."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_hidden,
                     num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                     num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.block_size,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                     attention_bias=False, mlp_bias=False, attn_implementation="sdpa", use_cache=False)
    return LlamaForCausalLM(hf)


def next_tokens(x: torch.Tensor) -> torch.Tensor:
    """Our targets: position t predicts x[t + 1]; the last position has none (-1, ignored by our loss)."""
    return F.pad(x[:, 1:], (0, 1), value=-1)


@dataclass(frozen=True)
class Side:
    """One side of the comparison: how to build it, and its own objective's inputs and loss."""
    key: str                                     # "ours" | "peer", as in the JSON
    build: Callable                              # ModelConfig -> nn.Module
    inputs: Callable[[torch.Tensor], dict]       # token batch -> forward kwargs (built once, outside timing)
    loss: Callable                               # forward output -> scalar loss


SIDES = (
    Side("ours", Transformer, lambda x: {"idx": x, "targets": next_tokens(x)}, lambda out: out[1]),
    Side("peer", llama_like, lambda x: {"input_ids": x, "labels": x}, lambda out: out.loss),
)


def check_same_task(cfg, x: torch.Tensor) -> int:
    """Equal parameter counts, and equal losses with our weights copied into theirs; the parameter count."""
    from chatpipe.tasks.publish.hf_export import hf_state_dict

    torch.manual_seed(0)
    models = {side.key: side.build(cfg).to(x.device) for side in SIDES}
    n = {key: sum(p.numel() for p in m.parameters()) for key, m in models.items()}
    assert n["ours"] == n["peer"], f"shapes differ: {n['ours']} vs {n['peer']} parameters"
    missing, unexpected = models["peer"].load_state_dict(hf_state_dict(models["ours"]), strict=False)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()  # HF ties it to the embedding itself
    assert not unexpected and set(missing) <= tied, f"weights do not map: {missing=} {unexpected=}"
    with torch.no_grad():
        loss = {side.key: side.loss(models[side.key](**side.inputs(x[:1]))).item() for side in SIDES}
    assert abs(loss["ours"] - loss["peer"]) <= 1e-4 * abs(loss["ours"]), f"the two objectives differ: {loss}"
    return n["ours"]


def adamw(model) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=3e-4, betas=(0.9, 0.95), fused=True)  # our training loop's; the same for both


def make_step(side: Side, model, inputs: dict, precision: str, compiled: bool, device: torch.device):
    """One training step of `side` in this mode: forward+loss (autocast for bf16), backward, clip, AdamW."""
    opt = adamw(model)
    forward = torch.compile(model) if compiled else model
    dtype = PRECISIONS[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    def step():
        with autocast():
            loss = side.loss(forward(**inputs))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(fn, sync) -> float:
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def cold_compile():
    """A fresh, empty Inductor cache (on disk and in memory) for the duration."""
    from torch._inductor.utils import fresh_cache

    return fresh_cache()


def repeat(step, n: int):
    return lambda: [step() for _ in range(n)]


def prepare(side: Side, cfg, x, mode: str, device, warmup: int, sync):
    """A fresh model and optimizer (seed 0) for `side` in `mode`, warmed up; (step, warm-up step seconds).
    A compiled side compiles in a fresh Inductor cache, so neither side reuses the other's kernels."""
    precision, kind = mode.split("-")
    compiled = kind == "compiled"
    with cold_compile() if compiled else contextlib.nullcontext():
        torch.manual_seed(0)
        model = side.build(cfg).to(device).train()
        step = make_step(side, model, side.inputs(x), precision, compiled, device)
        return step, [timed(step, sync) for _ in range(warmup)]


def interleaved(steps: dict, rounds: int, n: int, sync) -> dict[str, list[float]]:
    """Seconds per step of each side, per round; the sides alternate which goes first (no first-mover bias)."""
    seconds = {key: [] for key in steps}
    for r in range(rounds):
        order = list(steps.items()) if r % 2 == 0 else list(steps.items())[::-1]
        for key, step in order:
            seconds[key].append(timed(repeat(step, n), sync) / n)
    return seconds


def run_mode(mode: str, cfg, x, args, device, sync) -> dict:
    """Both sides in one mode: tokens/s, step and warm-up seconds, compile seconds (compiled modes), MFU."""
    torch.compiler.reset()
    prepared = {side.key: prepare(side, cfg, x, mode, device, args.warmup, sync) for side in SIDES}
    seconds = interleaved({key: step for key, (step, _) in prepared.items()}, args.rounds, args.steps, sync)
    peak = DEVICES[args.device].peak_flops() if device.type == "cuda" else None
    out = {}
    for key, (_, warm) in prepared.items():
        steady = statistics.median(seconds[key])
        tps = x.numel() / steady
        out[key] = {"tokens_per_s": round(tps, 1), "step_s": seconds[key], "warmup_step_s": warm,
                    "compile_s": round(sum(warm) - len(warm) * steady, 2) if mode.endswith("compiled") else None,
                    "mfu": round(flops_per_token(cfg, x.size(1)) * tps / peak, 4) if peak else None}
    out["ratio_ours_over_peer"] = round(out["ours"]["tokens_per_s"] / out["peer"]["tokens_per_s"], 3)
    del prepared
    gc.collect()
    return out


def best_vs_best(modes: dict) -> dict:
    """Each side's fastest mode, and the ratio of the two."""
    best = {key: max(modes, key=lambda m: modes[m][key]["tokens_per_s"]) for key in ("ours", "peer")}
    out = {key: {"mode": m, "tokens_per_s": modes[m][key]["tokens_per_s"]} for key, m in best.items()}
    out["ratio_ours_over_peer"] = round(out["ours"]["tokens_per_s"] / out["peer"]["tokens_per_s"], 3)
    return out


def compile_cell(mode: dict) -> str:
    ours, peer = mode["ours"]["compile_s"], mode["peer"]["compile_s"]
    return "—" if ours is None else f"{ours:.1f} / {peer:.1f}"


def table(result: dict) -> str:
    """The markdown table for the README: one row per mode, then best against best."""
    s, m = result["shape"], result["machine"]
    modes, best = result["modes"], result["best"]
    title = (f"train step, {s['preset']} ({s['params'] / 1e6:.1f}M), batch {s['batch']}×{s['seq']}, "
             f"{m['device']}, {m['cpu_threads']} threads (`bench/train.py`)")
    lines = [title, "", "| mode | ours tok/s | transformers tok/s | ours / peer | compile s (ours / peer) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['ours']['tokens_per_s']:,.0f} | {r['peer']['tokens_per_s']:,.0f} | "
              f"{r['ratio_ours_over_peer']:.2f}× | {compile_cell(r)} |" for name, r in modes.items()]
    lines.append(f"| **best vs best** | {best['ours']['tokens_per_s']:,.0f} ({best['ours']['mode']}) | "
                 f"{best['peer']['tokens_per_s']:,.0f} ({best['peer']['mode']}) | "
                 f"**{best['ratio_ours_over_peer']:.2f}×** | |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="chat-7m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=None, help="default: the preset's block size")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])  # torch devices: the step is timed here
    ap.add_argument("--modes", nargs="+", choices=MODES, default=MODES, help="default: all four")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side per mode (>= 1; compile)")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first step compiles in compiled modes)")
    args.modes = [m for m in MODES if m in args.modes]  # table order, no repeats
    return args


def main() -> None:
    args = parse_args()
    cfg = preset(args.preset, **({"block_size": args.seq} if args.seq else {}))
    device = DEVICES[args.device].torch_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size), generator=g).to(device)
    n_params = check_same_task(cfg, x)
    modes = {mode: run_mode(mode, cfg, x, args, device, sync) for mode in args.modes}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    result = {
        "benchmark": "train-step", "date": dt.date.today().isoformat(),
        "machine": {"device": gpu or args.device, "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "shape": {"preset": args.preset, "params": n_params, "batch": args.batch, "seq": cfg.block_size,
                  "tokens_per_step": x.numel(), "predicted_tokens_per_step": args.batch * (cfg.block_size - 1)},
        "timing": {"warmup": args.warmup, "steps": args.steps, "rounds": args.rounds,
                   "compile_s": "warm-up steps' wall time minus warmup x the median steady step"},
        "peer": PEER,
        "modes": modes,
        "best": best_vs_best(modes),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    subset = "" if args.modes == MODES else "-" + "-".join(args.modes)
    out = args.out / f"{result['date']}-train-{args.preset}-{args.device}{subset}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
