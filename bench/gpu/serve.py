"""Part j of the GPU run: the ternary student served on CUDA against its float teacher, through our HTTP server.

Why: a served ternary model runs every block linear through the Triton ternary matmul on its 2-bit packed codes
(kernels/cuda/ternary_matmul.py, model/ternary_linear.py); the kernel was timed alone on an H200 (2.9-4.5x the
eager unpack + matmul, slower than a dense bf16 matmul) but never inside a served model. This part serves three
bundles of nano-125m's shape with the seed tokenizer's vocabulary, one at a time, each by `chatpipe serve`'s own
parts (bundle.load on the device, the Engine, the FastAPI app under uvicorn), and asks each for the same greedy
completion on `/v1/completions` with the stop tokens off, so every model writes all `--new-tokens`:

    teacher    float, random weights
    ternary    the teacher's weights quantized (absmean), every block linear ternary: what `distill` publishes
    mlp        the same with only w1, w2, w3 ternary (an Option-C selection: mixed float and ternary linears)

Per model: median tokens/s of three requests after a warm-up, peak GPU memory, the bundle's weights bytes and the
device whose ternary kernel its linears run (cuda: the Triton one); and each student's ratio to the teacher. The logits of the CUDA kernel
against the CPU path are checked by tests/model/test_ternary_linear.py (part b), not here.

    python bench/gpu/serve.py --project DIR --out DIR            # on the GPU: DIR/serve-ternary.json
    python bench/gpu/serve.py --project DIR --out DIR --smoke    # a tiny shape on CPU, the suite's --cpu-smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.finetune import each_mode, write_report  # noqa: E402
from chatpipe.model.presets import preset  # noqa: E402
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.tasks.common import bundle  # noqa: E402
from chatpipe.tasks.common.layout import Layout  # noqa: E402

STUDENTS = {"ternary": None, "mlp": {"roles": ["w1", "w2", "w3"]}}
PROMPT = "def fibonacci(n):\n    "


def write_bundles(project: Path, directory: Path, smoke: bool) -> dict[str, Path]:
    """The teacher (random weights) and its quantized students as bundles with the project's tokenizer."""
    layout = Layout(project)
    vocab = json.loads((layout.shards / "manifest.json").read_text())["vocab_size"]
    shape = dict(n_layer=2, n_embd=64, n_head=4, block_size=128) if smoke else {}
    torch.manual_seed(0)
    teacher = Transformer(preset("nano-125m", vocab_size=vocab, **shape)).eval()
    paths = {"teacher": bundle.write(directory / "teacher", teacher, layout.tokenizer, "# teacher\n")}
    for name, selection in STUDENTS.items():
        student = Transformer(dataclasses.replace(teacher.config, quant="ternary", ternary=selection))
        student.load_state_dict(teacher.state_dict())  # BitLinear's latent weights: packed to codes on write
        paths[name] = bundle.write(directory / name, student, layout.tokenizer, f"# {name}\n")
    return paths


def served(path: Path, device: str, new_tokens: int) -> dict:
    """Tokens/s of one bundle behind our server (median of three greedy requests after a warm-up), its peak GPU
    memory and its ternary linears' kernel."""
    import httpx

    from chatpipe.serve.app import create_app
    from chatpipe.serve.engine import Engine
    from chatpipe.serve.server import running
    from chatpipe.serve.source import open_bundle

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    loaded = open_bundle(str(path), device)
    loaded.generation["stop"] = []  # every request writes all new tokens
    on = sorted({m.weight_codes.device.type for m in loaded.model.modules() if hasattr(m, "weight_codes")})
    body = {"model": loaded.name, "prompt": PROMPT, "max_tokens": new_tokens, "temperature": 0}
    engine, runs = Engine(loaded, max_concurrent=1), []
    try:
        with running(create_app(engine)) as url:
            httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 8}, timeout=300).raise_for_status()
            for _ in range(3):
                start = time.perf_counter()
                r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
                r.raise_for_status()
                runs.append((r.json()["usage"]["completion_tokens"], time.perf_counter() - start))
    finally:
        engine.close()
    if any(n != new_tokens for n, _ in runs):
        raise RuntimeError(f"{path.name}: asked for {new_tokens} tokens, got {[n for n, _ in runs]}")
    return {"tokens_per_s": round(statistics.median(n / s for n, s in runs), 1), "new_tokens": new_tokens,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None,
            "weights_mib": round((path / "model.safetensors").stat().st_size / 2**20, 1),
            "ternary_linears_on": on or None}  # kernels/ternary_matmul.py's entry: cuda, the Triton kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a project with a tokenizer and shards (the seed's)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="a tiny shape, 8 tokens, on CPU")
    args = ap.parse_args()
    device, new_tokens = ("cpu", 8) if args.smoke else ("cuda", args.new_tokens)
    report = {"ok": True, "shape": "tiny (smoke)" if args.smoke else "nano-125m (random weights)",
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "request": "/v1/completions, greedy, no stop", "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_bundles(args.project, Path(tmp), args.smoke)
        each_mode(report, paths, lambda name: served(paths[name], device, new_tokens))
    print(json.dumps(report["modes"]), flush=True)
    teacher = report["modes"]["teacher"].get("tokens_per_s")
    for name in STUDENTS:
        if teacher and (rate := report["modes"][name].get("tokens_per_s")):
            report["modes"][name]["speed_vs_teacher"] = round(rate / teacher, 3)
    write_report(report, args.out / "serve-ternary.json")


if __name__ == "__main__":
    main()
