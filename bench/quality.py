"""Quality of served models on the same held-out data and the same harness: the numbers a user picks a model by.

Each `--model` is anything `chatpipe serve --model` takes: a pretrained checkpoint as it is (`gguf:...`, `hf:...`)
or a published bundle (`dist/<name>`), each on its own chat format (a bundle's is the one it was trained on). Every
model is measured with the eval stage's own code (tasks/evals/evaluate.py, humaneval.py) on the validation split
of one project's documents (`--project`: its data/documents and params):
- assistant-turn bits per byte on the held-out conversations (the NLL of each answer and its end-of-turn token
  over the answer's bytes: comparable across tokenizers and chat formats), and each chat source's bits per byte;
- the turn rate: the share of the 12 fixed chat prompts answered with a clean end of turn; three answers shown;
- HumanEval pass@1, greedy, in the sandbox, two ways: `chat` (the problem in a user message, the function from
  the answer's code block, as harnesses prompt instruct models) and `completion` (the model continues the code).

    python bench/quality.py --project DIR --params configs/smollm2.yaml \
        --model gguf:smollm2-135m-instruct --model DIR/dist/smollm2-chitchat [--problems 164]

Writes bench/results/<date>-quality.json and prints the table for the README.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from chatpipe.serve.source import open_bundle  # noqa: E402
from chatpipe.tasks.common.config import PROJECT_ROOT, load_params  # noqa: E402
from chatpipe.tasks.evals import humaneval  # noqa: E402
from chatpipe.tasks.evals.evaluate import chat, validation  # noqa: E402

PROMPTS = ("chat", "completion")


def score(spec: str, params, documents: Path, problems: int | None, val_max_tokens: int | None,
          prompts: tuple[str, ...] = PROMPTS) -> dict:
    start, loaded = time.perf_counter(), open_bundle(spec, "cpu")
    model, fmt = loaded.model, loaded.chat
    val = validation(model, fmt, documents, params.shard.val_fraction, val_max_tokens, torch.device("cpu"))
    answers = chat(model, fmt, params.eval.chat_max_tokens, params.seed)
    result = {"model": spec, "chat_format": fmt.name, "parameters": sum(p.numel() for p in model.parameters()),
              "assistant_bpb": val["overall"]["assistant_bpb"],
              "chat_bpb": {s: v["bpb"] for s, v in val["per_source"].items() if "assistant_bpb" in v},
              "code_bpb": {s: v["bpb"] for s, v in val["per_source"].items() if "assistant_bpb" not in v},
              "turn_rate": round(sum(a["problem"] is None for a in answers) / len(answers), 4),
              "samples": [{"prompt": a["prompt"], "answer": a["completion"]} for a in answers[:3]], "humaneval": {}}
    for prompt in prompts:
        cfg = params.eval.humaneval.model_copy(update={"prompt": prompt, "problems": problems, "n_samples": 0,
                                                       "k": []})
        run = humaneval.evaluate(model, fmt, cfg, params.seed)
        result["humaneval"][prompt] = {"pass@1": run.metrics["pass@1_greedy"], "problems": run.metrics["problems"],
                                       "passed": sum(r["passed"] for r in run.results),
                                       "seconds": run.metrics["seconds"]}
        print(f"  {spec}: HumanEval ({prompt}) {result['humaneval'][prompt]['passed']}/{run.metrics['problems']} "
              f"[{run.metrics['seconds']:.0f}s]", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def table(result: dict) -> str:
    lines = ["| model | chat format | HumanEval pass@1, chat | HumanEval pass@1, completion | assistant bits/byte "
             "(held-out chat) | turn rate |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in result["models"]:
        he = r["humaneval"]
        lines.append(f"| `{r['model']}` | {r['chat_format']} | "
                     + " | ".join(f"{he[p]['passed']}/{he[p]['problems']} ({he[p]['pass@1']:.1%})" for p in PROMPTS)
                     + f" | {r['assistant_bpb']:.4f} | {r['turn_rate']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a project whose data/documents hold the held-out split")
    ap.add_argument("--params", type=Path, action="append", default=[], help="overlays (the project's run)")
    ap.add_argument("--model", action="append", required=True, help="gguf:..., hf:... or a bundle directory")
    ap.add_argument("--problems", type=int, default=None, help="the first N HumanEval problems (default: all 164)")
    ap.add_argument("--val-max-tokens", type=int, default=None, help="per source (default: the whole split)")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    args = ap.parse_args()
    params = load_params(args.params, base=args.project / "params.yaml" if (args.project / "params.yaml").exists()
                         else PROJECT_ROOT / "params.yaml")
    models = []
    for spec in args.model:
        models.append(score(spec, params, args.project / "data" / "documents", args.problems, args.val_max_tokens))
        print(f"{spec}: {json.dumps({k: v for k, v in models[-1].items() if k != 'samples'})}", flush=True)
    result = {"benchmark": "quality", "date": dt.date.today().isoformat(), "project": str(args.project),
              "val_fraction": params.shard.val_fraction, "val_max_tokens": args.val_max_tokens,
              "threads": torch.get_num_threads(), "models": models}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{result['date']}-quality.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
