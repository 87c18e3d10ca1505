"""Benchmark: Option C on SmolLM2-135M-Instruct. Which of a real model's linears can be ternary, and at what cost?

The code seed's best-quality route: start from a pretrained model, make a selection of its linears ternary
(absmean, as BitLinear does), and heal it by distillation from the float model itself (`distill.teacher: init`,
KL on logits, the same tokenizer). This measures the frontier on this machine's budget: the float teacher, the
all-ternary student and selections, each after the same distillation (configs/option-c.yaml: steps × batch ×
block tokens of the built-in chat and code corpus, one project, one seed), each scored by the same harness:

- bundle size (model.safetensors: the packed 2-bit codes of the ternary linears, fp32 everything else) and the
  server's peak resident memory (its own process: load, one request, batch-1 KV pool);
- held-out bits per byte (bench/quality.py `score`: the assistant's turns, each chat source, each code source);
- HumanEval pass@1, greedy, all 164 (`chat` prompt: the problem in a user message, as for an instruct model);
- the turn rate on the 12 fixed prompts, three sample answers;
- generation tokens/s through our HTTP server (/v1/completions, greedy, stop tokens off so every model writes
  `--new-tokens`; median of 3);
- for the `curve` selection, held-out bits per byte against distillation tokens (its checkpoints and step 0).

`--part endpoint` is the teacher behind an OpenAI-compatible URL (issue 29, item 4): SmolLM2 served by
`chatpipe serve`, the `distill` ingest source asking it the built-in prompts, and the `curve` selection trained on
those answers alone (sequence-level distillation: distill.alpha 1, the answers' cross-entropy) for the same steps.

    python bench/option_c.py --project /tmp/optc                 # the frontier: ~1.5 h on 2 cores
    python bench/option_c.py --project /tmp/optc --part endpoint  # the endpoint teacher: ~30 min
    python bench/option_c.py --project /tmp/optc --part speed --selections all  # the teacher's and these again
    python bench/option_c.py --project /tmp/t --steps 2 --problems 2 --selections mlp --val-max-tokens 500  # smoke

The project is prepared first (`chatpipe ingest|tokenizer|shard -C DIR -p configs/smollm2.yaml -p
configs/option-c.yaml`, with DIR/data/chat_combined.txt). Writes bench/results/<date>-option-c.json (after every
model, so a stopped run keeps what it measured) and prints the README's table.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = "gguf:smollm2-135m-instruct"
CONFIGS = [ROOT / "configs" / "smollm2.yaml", ROOT / "configs" / "option-c.yaml"]
SELECTIONS = {  # name -> distill.student.ternary (null: every block linear)
    "all": None,
    "mlp": {"roles": ["w1", "w2", "w3"]},
    "attention": {"roles": ["wq", "wk", "wv", "wo"]},
    "middle": {"skip_first": 2, "skip_last": 2},
}
CURVE = "mlp"  # the selection whose held-out bits per byte is followed against tokens


def chatpipe(project: Path, *args: str, sets: dict | None = None, configs: list[Path] = CONFIGS) -> float:
    """One `chatpipe` command in `project` with the Option-C overlays; its wall seconds."""
    cmd = ["chatpipe", *args, "-C", str(project), *[a for c in configs for a in ("-p", str(c))]]
    cmd += [a for k, v in (sets or {}).items() for a in ("-S", f"{k}={json.dumps(v)}")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - start, 1)


def distill(project: Path, name: str, selection, steps: int, keep_every: int | None, extra: dict | None = None) -> dict:
    """Distil one student; its run's numbers and the bundle written from its last checkpoint."""
    from chatpipe.tasks.common import bundle
    from chatpipe.tasks.common.layout import Layout
    from chatpipe.tasks.train import checkpoint

    sets = {"distill.student.ternary": selection, "distill.steps": steps, **(extra or {})}
    if keep_every:
        sets["train.checkpoint"] = {"every": keep_every, "keep": steps // keep_every + 1}
    seconds = chatpipe(project, "train", "--phase", "distill", "--replace-stale", sets=sets)
    layout = Layout(project)
    metrics = json.loads((layout.root / "metrics" / "distill.json").read_text())
    model, state = checkpoint.latest_model(layout.checkpoints / "distill")
    out = bundle.write(project / "bundles" / name, model, layout.tokenizer,
                       f"# SmolLM2-135M-Instruct, Option C `{name}` ({steps} distillation steps)\n")
    return {"seconds": seconds, "steps": state["step"], "tokens": metrics.get("tokens"),
            "tokens_per_s": metrics.get("tokens_per_s"), "final_loss": metrics.get("final_loss"),
            "final_val_loss": metrics.get("final_val_loss"), "bundle": str(out),
            "checkpoints": [str(p) for p in checkpoint.all_steps(layout.checkpoints / "distill")]}


def score(spec: str, project: Path, args, speed_only: bool = False) -> dict:
    """Everything measured on one model (or only its speed), in a process of its own (its peak memory is the
    model's)."""
    out = project / "scores" / f"{Path(spec.replace(':', '_')).name}{'-speed' if speed_only else ''}.json"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, __file__, "--score", spec, "--project", str(project), "--json", str(out),
                    "--problems", str(args.problems), "--val-max-tokens", str(args.val_max_tokens),
                    "--new-tokens", str(args.new_tokens), *(["--speed-only"] if speed_only else [])], check=True)
    return json.loads(out.read_text())


def speed(args, result: dict) -> None:
    """`--part speed`: the teacher's and the `--selections`' server speed and memory again, one after another on a
    quiet machine (the frontier measures each between training runs)."""
    for row in result["models"] + ([result["endpoint"]] if "endpoint" in result else []):
        if row["selection"] not in ("teacher", *args.selections):  # the endpoint's student is timed by its own run
            continue
        spec = teacher_bundle(args.project) if row["selection"] == "teacher" else row["distill"]["bundle"]
        row["server"] = score(spec, args.project, args, speed_only=True)["server"]
        print(f"  {row['selection']}: {row['server']['tok_s']:.1f} tok/s, peak {row['server']['peak_rss_mib']:,.0f} MiB")


def score_here(spec: str, project: Path, args) -> dict:
    """`--score`: our server's speed and this process's peak RSS (first, so the peak is serving's), then quality
    (bench/quality.py's harness)."""
    import httpx
    import torch

    from bench.quality import score as quality
    from bench.smollm2 import QUESTIONS, peak_rss_mib
    from chatpipe.serve.app import create_app
    from chatpipe.serve.engine import Engine
    from chatpipe.serve.server import running
    from chatpipe.serve.source import open_bundle
    from chatpipe.tasks.common.config import load_params

    torch.set_num_threads(os.cpu_count() or 1)
    loaded, runs = open_bundle(spec, "cpu"), []
    loaded.generation["stop"] = []  # every answer runs to --new-tokens (a broken student may stop at once)
    body = {"model": loaded.name, "prompt": QUESTIONS[0], "max_tokens": args.new_tokens, "temperature": 0}
    with running(create_app(Engine(loaded, max_concurrent=1))) as url:  # first: the peak is serving's alone
        httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 8}, timeout=600).raise_for_status()  # warm-up
        for _ in range(3):
            start = time.perf_counter()
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
            r.raise_for_status()
            runs.append((r.json()["usage"]["completion_tokens"], time.perf_counter() - start,
                         r.json()["choices"][0]["text"]))
    server = {"tok_s": statistics.median(n / s for n, s, _ in runs), "new_tokens": [n for n, _, _ in runs],
              "text": runs[-1][2], "peak_rss_mib": round(peak_rss_mib(), 1), "request": "/v1/completions, no stop"}
    weights = loaded.path / "model.safetensors"
    del loaded
    result = {} if args.speed_only else quality(spec, load_params(CONFIGS), project / "data" / "documents",
                                                args.problems, args.val_max_tokens, ("chat",))
    result.update(server=server, bundle_bytes=weights.stat().st_size if weights.exists() else None)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def curve(project: Path, run: dict, selection, args) -> list[dict]:
    """Held-out bits per byte (the eval stage's `validation`) at step 0 (the teacher with its selection
    ternarized: where the healing starts) and at each kept checkpoint of the curve selection's run."""
    import torch

    from chatpipe.model.transformer import Transformer
    from chatpipe.serve.source import open_bundle
    from chatpipe.tasks.common.config import load_params
    from chatpipe.tasks.common.layout import Layout
    from chatpipe.tasks.evals.evaluate import validation
    from chatpipe.tasks.train import checkpoint, distill

    params = load_params(CONFIGS, [f"distill.student.ternary={json.dumps(selection)}"])
    layout, cpu = Layout(project), torch.device("cpu")
    teacher = distill.Teacher.load(params, layout, cpu)
    fmt, shape = open_bundle(run["bundle"], "cpu").chat, teacher.model.config
    batch_tokens = params.train.batch_size * params.model.block_size
    points = []
    for path in [None, *map(Path, run["checkpoints"])]:
        model = Transformer(distill.student_config(params, shape.vocab_size))
        teacher.init_student(model) if path is None else checkpoint.load_weights(model, path)
        step = 0 if path is None else checkpoint.read_state(path)["step"]
        with torch.no_grad():
            v = validation(model, fmt, layout.documents, params.shard.val_fraction, args.val_max_tokens, cpu)
        points.append({"step": step, "tokens": step * batch_tokens, "assistant_bpb": v["overall"]["assistant_bpb"],
                       "bpb": {s: x["bpb"] for s, x in v["per_source"].items()}})
        print(f"  curve: {points[-1]}", flush=True)
    return points


def teacher_bundle(project: Path) -> str:
    """The float teacher written as our bundle (fp32, as every student's float parts): the size to compare with."""
    from chatpipe.serve.source import open_bundle
    from chatpipe.tasks.common import bundle
    from chatpipe.tasks.common.layout import Layout

    out = project / "bundles" / "teacher"
    if not (out / "checksums.json").exists():
        bundle.write(out, open_bundle(SPEC, "cpu").model, Layout(project).tokenizer,
                     "# SmolLM2-135M-Instruct, float (the Option-C teacher)\n")
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_teacher():
    """SmolLM2 behind `chatpipe serve` on loopback: its base URL and model name."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(["chatpipe", "serve", "--model", SPEC, "--port", str(port)])
    base, model = f"http://127.0.0.1:{port}/v1", None
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                model = httpx.get(f"{base}/models", timeout=5).json()["data"][0]["id"]
                break
            if proc.poll() is not None:
                raise RuntimeError(f"chatpipe serve exited with {proc.returncode}")
            time.sleep(1)
        if model is None:
            raise RuntimeError("chatpipe serve did not answer in 10 minutes")
        yield base, model
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def endpoint(args, result: dict) -> None:
    """Item 4: the `curve` selection trained on SmolLM2's answers over HTTP alone, for the same steps."""
    project = args.project.with_name(args.project.name + "-endpoint")
    (project / "data").mkdir(parents=True, exist_ok=True)
    off = {**{f"ingest.sources.{s}.enabled": False for s in ("chat", "chitchat", "stdlib", "synthetic")},
           "shard.val_fraction": 0.05}  # its own validation only (held-out scores are on --project's split)
    with served_teacher() as (base, model):
        source = {"enabled": True, "base_url": base, "model": model, "api_key_env": None,
                  "prompts": {"code": args.prompts // 2, "chat": args.prompts - args.prompts // 2},
                  "max_tokens": args.answer_tokens, "concurrency": 8}
        start = time.perf_counter()
        chatpipe(project, "ingest", sets={**off, **{f"ingest.sources.distill.{k}": v for k, v in source.items()}})
        ingest_s = round(time.perf_counter() - start, 1)
    for stage in ("tokenizer", "shard"):
        chatpipe(project, stage, sets=off)
    manifest = json.loads((project / "data" / "shards" / "manifest.json").read_text())
    run = distill(project, "endpoint", SELECTIONS[CURVE], args.steps, None, extra={"distill.alpha": 1.0})
    row = score(run["bundle"], args.project, args)
    row.update(selection=f"{CURVE}, trained on the teacher's answers", ternary=SELECTIONS[CURVE], distill=run,
               endpoint={"prompts": args.prompts, "answer_tokens": args.answer_tokens, "ingest_seconds": ingest_s,
                         "train_tokens": manifest["splits"]["train"].get("tokens"), "teacher": model})
    result["endpoint"] = row


def frontier(args, result: dict, save) -> None:
    rows = {r["selection"]: r for r in result["models"]}
    if "teacher" not in rows:
        row = score(teacher_bundle(args.project), args.project, args)
        result["models"].append({**row, "selection": "teacher", "ternary": "none"})
        save()
    for name in args.selections:
        if name in rows:
            continue
        run = distill(args.project, name, SELECTIONS[name], args.steps, args.curve_every if name == CURVE else None)
        if name == CURVE:
            result["curve"] = {"selection": name, "points": curve(args.project, run, SELECTIONS[name], args)}
        row = score(run["bundle"], args.project, args)
        result["models"].append({**row, "selection": name, "ternary": SELECTIONS[name] or "all", "distill": run})
        save()


def table(result: dict) -> str:
    teacher = next((r for r in result["models"] if r["selection"] == "teacher"), None)
    lines = ["| model | bundle | of teacher | peak RSS, serving | held-out bits/byte: assistant, chitchat, stdlib "
             "| HumanEval pass@1 (164, greedy) | turn rate | tok/s, our server |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in result["models"] + ([result["endpoint"]] if "endpoint" in result else []):
        he = r["humaneval"]["chat"]
        bpb = {**r["chat_bpb"], **r["code_bpb"]}
        share = f"{r['bundle_bytes'] / teacher['bundle_bytes']:.1%}" if teacher else "—"
        lines.append(f"| {r['selection']} | {r['bundle_bytes'] / 2**20:,.1f} MiB | {share} | "
                     f"{r['server']['peak_rss_mib']:,.0f} MiB | "
                     f"{r['assistant_bpb']:.3f}, {bpb.get('chitchat', float('nan')):.3f}, "
                     f"{bpb.get('stdlib', float('nan')):.3f} | {he['passed']}/{he['problems']} ({he['pass@1']:.1%}) | "
                     f"{r['turn_rate']:.2f} | {r['server']['tok_s']:.1f} |")
    return "\n".join(lines)


def extrapolate(result: dict, within: float = 0.10) -> dict | None:
    """The curve's assistant bits per byte above the teacher's, fitted as gap = a * tokens^-b (least squares in
    log-log over the points after step 0), and the tokens at which the gap would be `within` of the teacher's."""
    import math

    teacher = next(r for r in result["models"] if r["selection"] == "teacher")["assistant_bpb"]
    points = [(p["tokens"], p["assistant_bpb"] - teacher) for p in result.get("curve", {}).get("points", [])
              if p["tokens"] > 0 and p["assistant_bpb"] > teacher]
    if len(points) < 2:
        return None
    xs, ys = [math.log(t) for t, _ in points], [math.log(g) for _, g in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a, b = math.exp(my - slope * mx), -slope
    target = within * teacher
    return {"a": a, "b": b, "teacher_assistant_bpb": teacher, "within": within,
            "tokens": (a / target) ** (1 / b) if b > 0 else None}


def curve_table(result: dict) -> str:
    if "curve" not in result:
        return ""
    lines = [f"| distillation tokens ({result['curve']['selection']}) | assistant bits/byte | chitchat | stdlib |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {p['tokens']:,} | {p['assistant_bpb']:.3f} | {p['bpb'].get('chitchat', float('nan')):.3f} | "
              f"{p['bpb'].get('stdlib', float('nan')):.3f} |" for p in result["curve"]["points"]]
    if (fit := extrapolate(result)) and fit["tokens"]:
        lines.append(f"\ngap to the teacher ~ {fit['a']:.3g} x tokens^-{fit['b']:.3f}: within "
                     f"{fit['within']:.0%} of its {fit['teacher_assistant_bpb']:.3f} at ~{fit['tokens']:.3g} tokens")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a prepared project (see above)")
    ap.add_argument("--part", choices=("frontier", "endpoint", "speed"), default="frontier")
    ap.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=list(SELECTIONS))
    ap.add_argument("--steps", type=int, default=24, help="distillation steps per student (the same budget)")
    ap.add_argument("--curve-every", type=int, default=6, help="checkpoints kept for the curve, every N steps")
    ap.add_argument("--problems", type=int, default=164)
    ap.add_argument("--val-max-tokens", type=int, default=20000, help="held-out tokens per source")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=192, help="endpoint: prompts asked (half code, half chat)")
    ap.add_argument("--answer-tokens", type=int, default=160, help="endpoint: max_tokens per answer")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--score", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--speed-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.project = args.project.resolve()
    if args.score:
        score_here(args.score, args.project, args)
        return
    path = args.out / f"{dt.date.today().isoformat()}-option-c.json"
    result = json.loads(path.read_text()) if path.exists() else {
        "benchmark": "option-c", "date": dt.date.today().isoformat(), "model": SPEC, "machine": platform.processor()
        or platform.machine(), "cores": os.cpu_count(), "project": str(args.project), "models": []}
    result["budget"] = {"steps": args.steps, "batch": "train.batch_size x model.block_size (configs/smollm2.yaml)",
                        "configs": [str(c.relative_to(ROOT)) for c in CONFIGS], "val_max_tokens": args.val_max_tokens}

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")

    {"frontier": frontier, "endpoint": lambda a, r, s: endpoint(a, r), "speed": lambda a, r, s: speed(a, r)}[
        args.part](args, result, save)
    result["extrapolation"] = extrapolate(result) if "curve" in result else None
    save()
    print(table(result) + "\n\n" + curve_table(result))


if __name__ == "__main__":
    main()
