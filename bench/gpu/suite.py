"""The GPU run's driver: every part as its own process under its own time limit, one report at the end.

A GPU machine is lent for minutes at a time (15 of device time a session, its start included; at most 10 a
command), so the run is two prepared commands that must come back with results whatever breaks (CALLS: `--call
seed` first, the headline; then `--call rest`; no --call runs every part, as the smoke does). Each part runs in
a child process with a cap on its seconds, and each call with a budget (BUDGETS); a part that fails or runs
out of time is recorded as such with its log, and the next part runs. A plan whose long part would be left
less than its floor by the caps around it is refused before anything runs (`plan_problem`). The report in
--out is at most eight files (what the device tool brings back):

    results.json   every part: ok / failed / timed out / skipped, seconds, command, and its JSON results
    results.md     the same as tables, for bench/results/ and the README
    logs.txt       each part's output (the last 20,000 characters of each)
    seed-curves.csv, seed-curves.png, seed-bundle.tar.NN   part e's curves and the trained model

`--cpu-smoke` runs every part for a few steps on CPU (tiny shapes, no GPU): `make test` runs it, so the
script cannot rot between GPU runs. Parts that need a GPU say so there (kernels) or skip their CUDA cases.
A smoke's --out may not lie under bench/results/ (CPU numbers are not GPU results).

Exit status: 0 when every part run is ok; 1 when any is not (failed, timed out, its results say not ok, or
skipped unrun: out of time, its prerequisite failed, no seed project); a smoke's skip of a GPU-only part
is ok. The report is written either way.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"  # the GPU runs' results, committed
PY = sys.executable
LOG_CHARS = 20_000


@dataclass
class Part:
    """One step of the run: its argv (GPU and smoke), the JSON files it writes, and its cap in seconds."""
    key: str
    title: str
    gpu: list[str]
    smoke: list[str]
    results: list[str]
    cap: float
    after: str | None = None            # run only if this part's results say ok
    gpu_only: str | None = None         # the smoke skips it, saying why
    reserve: bool = False               # a long part: it leaves the parts after it their caps
    floor: float = 0                    # a reserving part's least useful time: a plan that cannot give it is refused

    @property
    def seed_project(self) -> bool:
        """Whether it runs on the seed's project (its tokenizer and shards; bench/gpu/prepare.sh builds it)."""
        return self.key.startswith("seed") or self.key == "serve"


def parts(work: Path, project: Path, carry: Path) -> list[Part]:
    w = str(work)
    seed = [PY, "bench/gpu/seed.py"]
    train = [PY, "bench/train.py", "--device", "cuda", "--modes", "bf16-compiled", "--out", w]  # best vs best
    fsdp = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29651", "bench/gpu/fsdp.py"]
    smoke_train = [PY, "bench/train.py", "--device", "cpu", "--modes", "bf16-eager", "--warmup", "1", "--steps", "1",
                   "--rounds", "1", "--out", w]
    tests = [PY, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=", "-rs",
             "tests/kernels/test_kernels_triton.py", "tests/train/test_cuda.py",
             "tests/model/test_ternary_linear.py::test_cuda_runs_the_triton_kernel_on_packed_codes_with_the_cpu_logits",
             "-k", "not interpreter_run", f"--junitxml={w}/tests.xml"]
    return [
        Part("probe", "a. probe", [PY, "bench/gpu/probe.py", "--out", f"{w}/probe.json"],
             [PY, "bench/gpu/probe.py", "--out", f"{w}/probe.json", "--smoke"], ["probe.json"], 30),
        Part("tests", "b. CUDA tests", tests, tests, [], 100),
        # short, so before the seed's long run rather than in the time it reserves for the parts after it
        Part("fsdp", "h. nano-1b: fsdp vs ddp on one GPU", [*fsdp, "--out", w], [*fsdp, "--out", w, "--smoke"],
             ["fsdp-nano-1b.json"], 60),
        Part("seed_pilot", "e. seed: pilot + gate", [*seed, "pilot", "--project", str(project), "--out", w],
             [*seed, "pilot", "--project", str(project), "--out", w, "--smoke"], ["seed-pilot.json"], 150),
        Part("seed_full", "e. seed: full run", [*seed, "full", "--project", str(project), "--out", w],
             [*seed, "full", "--project", str(project), "--out", w, "--smoke"], ["seed-full.json"], 400,
             after="seed_pilot", reserve=True, floor=120),
        Part("seed_bundle", "e. seed: bundle", [*seed, "bundle", "--project", str(project), "--out", w],
             [*seed, "bundle", "--project", str(project), "--out", w, "--smoke"], ["seed-bundle.json"], 40),
        Part("vulkan", "f. Vulkan on the GPU's driver",
             [PY, "bench/gpu/vulkan.py", "run", "--carry", str(carry), "--out", f"{w}/vulkan.json", "--seconds", "25"],
             [PY, "bench/gpu/vulkan.py", "run", "--carry", f"{w}/vulkan-carry", "--out", f"{w}/vulkan.json",
              "--steps", "3", "--seconds", "10"], ["vulkan.json"], 60),
        Part("serve", "j. ternary students served on CUDA vs their float teacher (our server, /v1/completions)",
             [PY, "bench/gpu/serve.py", "--project", str(project), "--out", w],
             [PY, "bench/gpu/serve.py", "--project", str(project), "--out", w, "--smoke"], ["serve-ternary.json"], 60),
        Part("kernels", "d. Triton kernels", [PY, "bench/kernels.py", "--quick", "--out", w],
             [], ["*-kernels*.json"], 60, gpu_only="bench/kernels.py times CUDA kernels only; on CPU the "
             "kernels run in Triton's interpreter in tests/kernels/test_kernels_triton.py"),
        Part("train_nano", "c. train step nano-125m", [*train, "--preset", "nano-125m", "--batch", "32", "--seq", "1024"],
             [*smoke_train, "--preset", "nano-125m", "--batch", "1", "--seq", "32"], ["*-train-nano-125m-*.json"], 110),
        Part("finetune", "g. fine-tuning Qwen3-0.6B's shape: full vs LoRA", [PY, "bench/gpu/finetune.py", "--out", w],
             [PY, "bench/gpu/finetune.py", "--out", w, "--smoke"], ["finetune-qwen3-0.6b.json"], 90),
        Part("option_c", "i. Option C at SmolLM2's shape: ternary selections distilled from the float teacher",
             [PY, "bench/gpu/option_c.py", "--out", w], [PY, "bench/gpu/option_c.py", "--out", w, "--smoke"],
             ["option-c-smollm2.json"], 90),
        Part("seed_compiled", "e′. seed pilot, 1,000 steps, torch.compile's default mode (the CUDA graphs' peer)",
             [*seed, "pilot", "--project", str(work / "seed-compiled-project"), "--out", f"{w}/compiled",
              "-S", "train.compile=true", "-S", "pilot.steps=1000"], [], ["compiled/seed-pilot.json"], 70,
             gpu_only="its peer, CUDA graphs, is CUDA's"),
    ]


# The two commands of a GPU session, in this order, each under the device tool's 10 minutes with room for run.sh's
# set-up (wheels, the Vulkan loader: ~20 s) and, together with the machine's start (1-2 min), inside the session's
# 15 minutes of device time. The seed's run goes first: it is the headline, and the parts after it are cut first.
CALLS = {"seed": ["probe", "seed_pilot", "seed_full", "seed_bundle"],
         "rest": ["probe", "tests", "serve", "vulkan", "train_nano", "finetune", "fsdp", "option_c", "kernels",
                  "seed_compiled"]}
BUDGETS = {"seed": 360, "rest": 280}  # seconds of each call's parts
ALL_BUDGET = 1100  # every part in one command: the CPU smoke, or a GPU box of your own (over one device call)
DEVICE_SECONDS, CALL_SECONDS = 900, 600  # the device tool's limits: a session's device time, one command


def plan_problem(chosen: list[Part], budget: float, smoke: bool = False) -> str | None:
    """Why the plan cannot run as meant, or None: a reserving part (the seed's full run) gets what the budget
    leaves after the caps of the parts before it and after it; less than its floor, and it would be skipped."""
    live = [p for p in chosen if not (smoke and p.gpu_only)]
    for part in live:
        if part.reserve and (left := budget - sum(p.cap for p in live if p is not part)) < part.floor:
            return (f"the plan leaves {part.key} {left:.0f} s of a {budget:.0f} s budget, under its floor of "
                    f"{part.floor:.0f} s: the caps of {', '.join(p.key for p in live if p is not part)} "
                    f"take the rest; raise --budget or run fewer parts (--call, --only)")
    return None


def run_part(part: Part, argv: list[str], seconds: float, log) -> dict:
    """Run one part in its own process group; kill the group when its time is up."""
    start = time.perf_counter()
    log.write(f"\n===== {part.title}: {' '.join(argv)} (at most {seconds:.0f} s)\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    status = "ok"
    try:
        output, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        status = "timed out"
    if status == "ok" and proc.returncode != 0:
        status = "failed"
    log.write(output[-LOG_CHARS:] + f"\n===== {part.title}: {status} (exit {proc.returncode})\n")
    log.flush()
    print(f"{part.title}: {status} in {time.perf_counter() - start:.1f}s", flush=True)
    return {"status": status, "exit": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "tail": output.strip().splitlines()[-3:] if output.strip() else []}


def gathered(work: Path, patterns: list[str]) -> dict:
    found = {}
    for pattern in patterns:
        for path in sorted(work.glob(pattern)):
            try:
                found[path.name] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                found[path.name] = {"unreadable": str(e)}
    return found


def tests_counts(work: Path) -> dict | None:
    """pytest's JUnit XML → passed / failed / skipped counts and the failed tests' names."""
    import xml.etree.ElementTree as ET

    path = work / "tests.xml"
    if not path.exists():
        return None
    cases = list(ET.parse(path).getroot().iter("testcase"))
    state = {c.get("name"): ("failed" if c.find("failure") is not None or c.find("error") is not None
                             else "skipped" if c.find("skipped") is not None else "passed") for c in cases}
    counts = {k: sum(v == k for v in state.values()) for k in ("passed", "failed", "skipped")}
    return {**counts, "failed_tests": [k for k, v in state.items() if v == "failed"]}


def headline(key: str, results: dict) -> str:
    """One line of what a part measured, from its JSON results."""
    r = next(iter(results.values()), {}) if results else {}
    if key == "probe" and r:
        gpu = (r.get("gpu") or {}).get("name", "no GPU")
        return (f"{gpu}; torch {r.get('torch')}, triton {r.get('triton')}, CUDA {r.get('cuda')}; "
                f"bf16 matmul {r['matmul']['n']}³: {r['matmul']['bf16_tflops']} TFLOP/s")
    if key == "tests" and results.get("counts"):
        c = results["counts"]
        return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped" + (
            f" (failed: {', '.join(c['failed_tests'][:8])})" if c["failed_tests"] else "")
    if key in ("seed_pilot", "seed_compiled") and r:
        pilot, gate = r.get("pilot", {}), r.get("gate", {})
        return (f"{pilot.get('summary', '')}; compile {pilot.get('compile')}; MFU {pilot.get('mfu')}; "
                f"{gate.get('summary', 'no gate')}")
    if key == "seed_full" and r:
        return f"{r.get('summary', '')}; compile {r.get('compile')}; MFU {r.get('mfu')}"
    if key == "seed_bundle" and r:
        return f"{r.get('phase')} step {r.get('step')}: {r.get('bundle_bytes', 0) / 2**20:.1f} MiB in {r.get('parts')}"
    if key.startswith("train") and r.get("modes"):
        rows = [f"{m}: ours {v['ours']['tokens_per_s']:,.0f} vs {v['peer']['tokens_per_s']:,.0f} tok/s "
                f"({v['ratio_ours_over_peer']:.2f}×, MFU {v['ours'].get('mfu')} vs {v['peer'].get('mfu')})"
                for m, v in r["modes"].items()]
        return "; ".join(rows) + f"; best vs best {r['best']['ratio_ours_over_peer']:.2f}×"
    if key in ("finetune", "fsdp", "option_c") and r.get("modes"):
        modes = [f"{m}: {v['error'][:80]}" if "error" in v else f"{m}: {v['tokens_per_s']:,} tok/s, peak "
                 f"{v['max_memory_allocated_gib']} GiB, {v['params_trained']:,} trained"
                 + (f", {v['ternary_linears']} ternary, bundle {v['bundle_of_float']:.0%} of fp32" if "bundle_mib" in v
                    else "") for m, v in r["modes"].items()]
        return f"{r['shape']}, {r['batch']} x {r['seq']}: " + "; ".join(modes)
    if key == "serve" and r.get("modes"):
        return f"{r['shape']}: " + "; ".join(
            f"{m}: {v['error'][:80]}" if "error" in v else
            f"{m}: {v['tokens_per_s']:,} tok/s" + (f" ({v['speed_vs_teacher']:.2f}× the teacher)" if "speed_vs_teacher" in v
                                                   else "") + f", peak {v['peak_gib']} GiB, weights {v['weights_mib']} MiB"
            for m, v in r["modes"].items())
    if key == "kernels" and r.get("rows"):
        return "; ".join(f"{row['case']}: ours {row['ms']['ours']:.3f} ms, peer/ours "
                         + ", ".join(f"{k} {v:.2f}×" for k, v in row["ratio_vs_ours"].items()) for row in r["rows"])
    if key == "vulkan" and r:
        if not r.get("ok"):
            return f"failed at {r.get('stage')}: {r.get('error')}"
        v, check = r.get("vulkan", {}), r.get("self_check", {})
        torch_rates = "; ".join(f"torch {k} {t['steps_per_s']:.1f} steps/s" for k, t in r.get("torch", {}).items()
                                if isinstance(t, dict) and t.get("steps_per_s"))
        return (f"{v.get('device', {}).get('name')}: self-check {check.get('verdict')} (max diffs "
                f"{check.get('max_diffs')}); Vulkan {v.get('timing', {}).get('steps_per_s', 0):.1f} steps/s; {torch_rates}")
    if r:
        return json.dumps(r, default=str)[:300]
    return ""


def markdown(report: dict) -> str:
    lines = [(f"GPU run {report['started']}{' (CPU smoke)' if report['smoke'] else ''}: "
              f"{report['seconds']} s of a {report['budget_s']:.0f} s budget"), "",
             "| part | status | seconds | what it measured |", "| --- | --- | --- | --- |"]
    for key, e in report["parts"].items():
        what = headline(key, e.get("results", {})) or e.get("why", "") or " ".join(e.get("tail", []))[-300:]
        lines.append(f"| {e['title']} | {e['status']} | {e.get('seconds', '—')} | {what.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def prepare_smoke_vulkan(work: Path, log) -> None:
    """The smoke compiles its own tiny Vulkan step (the GPU run carries one compiled here)."""
    subprocess.run([PY, "bench/gpu/vulkan.py", "prepare", "--carry", str(work / "vulkan-carry"), "--smoke"],
                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--carry", type=Path, default=ROOT / ".gpu-carry")
    ap.add_argument("--project", type=Path, default=None, help="default: CARRY/seed")
    ap.add_argument("--call", choices=CALLS, default=None, help="one of the GPU session's two commands (CALLS)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default: the call's "
                    "BUDGETS, or ALL_BUDGET)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these parts (keys)")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    if args.cpu_smoke and args.out.resolve().is_relative_to(RESULTS):
        ap.error(f"a smoke's CPU numbers do not go in {RESULTS.relative_to(ROOT)}/: give --out a temporary directory")
    if args.budget is None:
        args.budget = BUDGETS[args.call] if args.call else ALL_BUDGET
    every = parts(Path("work"), Path("project"), args.carry)
    keys = args.only or (CALLS[args.call] if args.call else [p.key for p in every])
    if unknown := sorted(set(keys) - {p.key for p in every}):
        ap.error(f"no such part: {', '.join(unknown)} (parts: {', '.join(p.key for p in every)})")
    if problem := plan_problem([p for p in every if p.key in keys], args.budget, args.cpu_smoke):  # order-free
        ap.error(problem)
    deadline = time.perf_counter() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chatpipe-gpu-"))
    project = work / "seed-project"  # a copy: the run writes checkpoints and metrics into it
    source = args.project or args.carry / "seed"
    if source.exists():
        shutil.copytree(source, project)
        if "seed_compiled" in keys:  # its own copy: a pilot from step 0
            shutil.copytree(source, work / "seed-compiled-project")
    os.environ["CHATPIPE_GPU_PROJECT"] = str(project)  # tests/train/test_cuda.py trains on its shards
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": args.cpu_smoke, "call": args.call,
              "budget_s": args.budget, "parts": {}}
    with open(work / "logs.txt", "w") as log:
        if args.cpu_smoke:
            prepare_smoke_vulkan(work, log)
        planned = {p.key: p for p in parts(work, project, args.carry)}
        chosen = [planned[key] for key in keys]  # in the call's order: its last parts are the first cut for time
        for i, part in enumerate(chosen):
            entry = report["parts"].setdefault(part.key, {"title": part.title})
            reserve = sum(later.cap for later in chosen[i + 1:] if not (args.cpu_smoke and later.gpu_only)
                          ) if part.reserve else 0  # a long part leaves the rest their time (the smoke skips gpu_only)
            left = deadline - time.perf_counter() - reserve
            if part.after and report["parts"].get(part.after, {}).get("ok") is not True:
                entry.update(status="skipped", why=f"needs {part.after} to pass")
            elif part.seed_project and not project.exists():
                entry.update(status="skipped", why=f"no seed project at {source} (bench/gpu/prepare.sh builds it)")
            elif args.cpu_smoke and part.gpu_only:
                entry.update(status="skipped", why=part.gpu_only)
            elif left < 5:
                entry.update(status="skipped", why="out of time")
            else:
                argv = part.smoke if args.cpu_smoke else part.gpu
                entry.update(run_part(part, argv, min(part.cap, left), log), command=" ".join(argv))
            entry["results"] = gathered(work, part.results)
            if part.key == "tests":
                entry["results"]["counts"] = tests_counts(work)
            entry["ok"] = entry["status"] in ("ok", "skipped" if part.gpu_only and args.cpu_smoke else "ok") and all(
                not isinstance(r, dict) or r.get("ok", True) is not False for r in entry["results"].values())
            if part.key == "seed_pilot" and entry["ok"] and entry["status"] == "ok":  # it ran; seed_compiled: speed only
                gate = entry["results"].get("seed-pilot.json", {}).get("gate", {})
                entry["ok"] = gate.get("ok") is True
    report["seconds"] = round(args.budget - (deadline - time.perf_counter()), 1)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(markdown(report))
    shutil.copy(work / "logs.txt", args.out / "logs.txt")
    for path in sorted(work.glob("seed-curves.*")) + sorted(work.glob("seed-bundle.tar.*")):
        shutil.copy(path, args.out / path.name)
    if args.cpu_smoke:
        shutil.rmtree(work, ignore_errors=True)
    not_ok = [key for key, entry in report["parts"].items() if not entry["ok"]]
    print(f"\n{markdown(report)}\nwrote {args.out}" + (f"; not ok: {', '.join(not_ok)}" if not_ok else ""), flush=True)
    return 1 if not_ok else 0


if __name__ == "__main__":
    sys.exit(main())
