"""Benchmark the ternary (BitNet b1.58) student against its float teacher: generation speed and memory at two
sizes, and the ternary gap of a pipeline run.

1. Speed, always, at two sizes. `demo`: the bundles `make demo` publishes (dist/chat-pipeline and
   dist/chat-pipeline-ternary) when both are there, else random weights of the demo's shape (4L x 128, vocab
   2048); `nano-125m`: random weights of that preset (12 x 768, vocab 50257). With random weights the student
   is the teacher's weights quantized (where QAT starts), written as a packed bundle's weights and loaded the
   way `chatpipe serve` loads them. Both run the server's decoder (model/decode.py; the student on integer
   codes, model/ternary_linear.py): the same prompt, greedy, the same number of new tokens, no stop,
   interleaved rounds after a warm-up (tasks/evals/evaluate.py `decode_times`); median tokens/s and the ratio.
   Also: the block linears' bytes as held in RAM (codes and scales, the decoder's fused ones included) against
   fp32, and where a step's time goes (block linears, LM head, the rest), per model.
2. Gap, when --workdir holds a pipeline run with distillation (`make demo`): validation loss, bits per byte,
   bundle sizes and eval's generation speed of both, from its metrics (`bench/results/<date>-ternary-gap-*.json`).

Writes bench/results/<date>-distill-<size>.json per size and prints the README's rows.

    python bench/distill.py [--sizes demo nano-125m] [--rounds 5] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatpipe.kernels import ternary_cpu  # noqa: E402
from chatpipe.model.decode import Decoder  # noqa: E402
from chatpipe.model.presets import preset
from chatpipe.model.ternary_linear import held_bytes  # noqa: E402
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.tasks.common import bundle  # noqa: E402
from chatpipe.tasks.evals.evaluate import decode_times  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"demo": preset("chat-7m", vocab_size=2048, n_layer=4, n_embd=128, n_head=4, block_size=128),  # configs/tiny
         "nano-125m": preset("nano-125m")}
NEW_TOKENS = {"demo": 111, "nano-125m": 64}
DEMO_BUNDLES = (ROOT / "dist" / "chat-pipeline", ROOT / "dist" / "chat-pipeline-ternary")


def random_pair(config) -> tuple[Transformer, Transformer]:
    """A random float model and its ternary copy, loaded from packed weights as a served bundle is."""
    torch.manual_seed(0)
    teacher = Transformer(config).eval()
    ternary = dataclasses.replace(config, quant="ternary")
    qat = Transformer(ternary)
    qat.load_state_dict(teacher.state_dict())
    student = Transformer(ternary)
    with tempfile.TemporaryDirectory() as tmp:
        bundle.save_weights(qat, Path(tmp) / "model.safetensors")
        del qat
        bundle.load_weights(student, Path(tmp) / "model.safetensors")
    return teacher, student.eval()


def block_linears(decoder: Decoder) -> list:
    """The decoder's fused ternary linears (modules)."""
    return [f.linear for layer in decoder.layers for f in (layer.qkv, layer.wo, layer.gate_up, layer.down) if f]


class Timed:
    """A fused linear whose calls add their seconds to `total`."""

    def __init__(self, linear, total: list[float]):
        self.linear, self.total = linear, total

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        y = self.linear(x)
        self.total[0] += time.perf_counter() - start
        return y


@torch.inference_mode()
def step_profile(model: Transformer, prompt: list[int], steps: int = 50) -> dict:
    """Milliseconds of one decode step (one row): the block linears (timed call by call), the LM head (alone, on
    a random hidden state) and everything else."""
    decoder, linears = Decoder(model), [0.0]
    for layer in decoder.layers:
        for name in ("qkv", "wo", "gate_up", "down"):
            setattr(layer, name, Timed(getattr(layer, name), linears))
    _, cache = decoder.prefill(prompt)
    token = torch.tensor([prompt[-1]])
    decoder.step(token, cache)
    linears[0], start = 0.0, time.perf_counter()
    for _ in range(steps):
        decoder.step(token, cache)
    total = (time.perf_counter() - start) / steps
    h = torch.randn(1, model.config.n_embd)
    start = time.perf_counter()
    for _ in range(steps):
        F.linear(h, model.lm_head.weight)
    head = (time.perf_counter() - start) / steps
    block = linears[0] / steps
    return {"step_ms": round(total * 1e3, 3), "block_linears_ms": round(block * 1e3, 3),
            "lm_head_ms": round(head * 1e3, 3), "rest_ms": round((total - block - head) * 1e3, 3)}


def measure(size: str, rounds: int) -> dict:
    config = SIZES[size]
    if size == "demo" and all((p / "checksums.json").exists() for p in DEMO_BUNDLES):
        teacher, student = (bundle.load(p).model for p in DEMO_BUNDLES)
        source = "bundles from make demo: " + ", ".join(str(p.relative_to(ROOT)) for p in DEMO_BUNDLES)
    else:
        teacher, student = random_pair(config)
        source = "random weights (the student: the teacher's, quantized, packed and loaded as a bundle)"
    prompt = torch.randint(0, teacher.config.vocab_size, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    n = min(NEW_TOKENS[size], teacher.config.block_size - len(prompt))
    times = decode_times([teacher, student], prompt, n, rounds)
    speeds = [n / statistics.median(t) for t in times]
    fp32 = 4 * sum(m.weight.numel() for m in teacher.blocks.modules() if isinstance(m, torch.nn.Linear))
    held = held_bytes(student.blocks, *block_linears(Decoder(student)))
    return {"date": dt.date.today().isoformat(), "size": size, "source": source,
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__,
                        "cpu_kernel": "C (kernels/ternary_cpu.c)" if ternary_cpu.library() else "torch._int_mm"},
            "model": teacher.config.to_dict(), "prompt_tokens": len(prompt), "new_tokens": n, "rounds": rounds,
            "tokens_per_s": {"teacher": round(speeds[0], 1), "student": round(speeds[1], 1)},
            "speed_ratio": round(speeds[1] / speeds[0], 3),
            # the median of the rounds' own ratios: each pair ran back to back, so drifts of the machine cancel
            "speed_ratio_paired": round(statistics.median(t / s for t, s in zip(*times)), 3),
            "seconds": {"teacher": [round(t, 4) for t in times[0]], "student": [round(t, 4) for t in times[1]]},
            "block_linear_bytes": {"fp32": fp32, "student_held": held, "ratio": round(held / fp32, 4)},
            "step_profile": {"teacher": step_profile(teacher, prompt), "student": step_profile(student, prompt)}}


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def packed_linears(student_bundle: Path) -> dict:
    """The student bundle's packed block weights: their bytes against the same weights in fp32."""
    from safetensors import safe_open

    packed = fp32 = 0
    with safe_open(str(student_bundle / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name.endswith(".weight_shape"):
                base = name[:-len("_shape")]
                fp32 += 4 * int(f.get_tensor(name).prod())
                packed += sum(f.get_tensor(base + s).numel() * f.get_tensor(base + s).element_size()
                              for s in ("", "_scale", "_shape"))
    return {"fp32_bytes": fp32, "packed_bytes": packed, "ratio": round(fp32 / packed, 2) if packed else None}


def record_gap(workdir: Path) -> None:
    """The ternary gap of the pipeline run in `workdir` (eval's teacher vs student comparison), if it has one."""
    metrics = workdir / "metrics"
    ev, distill, publish = (read(metrics / f"{name}.json") for name in ("eval", "distill", "publish"))
    if not (ev and distill and publish and ev.get("comparison") and publish.get("student")):
        print(f"(no ternary gap: {metrics} holds no run with distill.enabled; `make demo` makes one)")
        return
    c = ev["comparison"]
    record = {"date": dt.date.today().isoformat(), "comparison": c,
              # as published: the teacher's bundle also holds its transformers export (hf/), the student's none
              "published_bytes": {"teacher": publish["bytes"], "student": publish["student"]["bytes"]},
              "student_training": {k: distill.get(k) for k in ("steps", "final_loss", "final_val_loss", "init",
                                                               "teacher", "distill", "model")},
              "block_linears": packed_linears(workdir / publish["student"]["bundle"]),
              "per_source_bpb": {"teacher": {s: v["bpb"] for s, v in ev["per_source"].items()},
                                 "student": {s: v["bpb"] for s, v in ev["student"]["per_source"].items()}}}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{record['date']}-ternary-gap-{Path(publish['student']['bundle']).name}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    t, s, gap = c["teacher"], c["student"], c["gap"]
    lin = record["block_linears"]
    print(f"| block linear weights | {lin['fp32_bytes'] / 1e6:.2f} MB fp32 | {lin['packed_bytes'] / 1e6:.2f} MB packed | "
          f"{lin['ratio']:.1f}x smaller |")
    print(f"| val loss | {t['val_loss']:.3f} | {s['val_loss']:.3f} | {gap['val_loss']:+.3f} |\n"
          f"| bits per byte | {t['val_bpb']:.3f} | {s['val_bpb']:.3f} | {gap['val_bpb']:+.3f} |\n"
          f"| bundle (weights, config, tokenizer) | {t['bundle_bytes'] / 1e6:.2f} MB | {s['bundle_bytes'] / 1e6:.2f} MB"
          f" | {gap['bundle_size_ratio']:.2f}x smaller |\n"
          f"| generation tok/s | {t['generation_tokens_per_s']:,.0f} | {s['generation_tokens_per_s']:,.0f} | "
          f"{gap['speed_ratio']:.2f}x |\n→ {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per model, after one warm-up")
    ap.add_argument("--workdir", type=Path, default=ROOT, help="the project directory of a pipeline run")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for size in args.sizes:
        r = measure(size, args.rounds)
        out = RESULTS / f"{r['date']}-distill-{size}.json"
        out.write_text(json.dumps(r, indent=2) + "\n")
        s, m = r["tokens_per_s"], r["block_linear_bytes"]
        print(f"| greedy generation, {size} ({r['new_tokens']} new tokens, interleaved) | {s['student']:,.0f} tok/s | "
              f"teacher {s['teacher']:,.0f} tok/s | **{r['speed_ratio']:.2f}×** (paired rounds "
              f"{r['speed_ratio_paired']:.2f}×) |\n"
              f"| same: block linear weights held in RAM | {m['student_held'] / 1e6:.2f} MB | "
              f"{m['fp32'] / 1e6:.2f} MB fp32 | **{m['ratio']:.3f}×** |\n"
              f"  step profile (ms): {r['step_profile']}\n→ {out}", flush=True)
    record_gap(args.workdir)


if __name__ == "__main__":
    main()
