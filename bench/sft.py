"""Ablation: what chat fine-tuning's loss mask buys, from one base model at equal steps and tokens.

Three arms continue the same full checkpoint on the same packed conversation rows (tasks/tokens/pack.py),
for the same steps, batch and learning rate; only the loss weights differ:
  masked   sft.prompt_loss_weight 0    the assistant's text and its end-of-turn token only (the default)
  plain    sft.prompt_loss_weight 1    plain language modelling on the same conversations
  0.1      sft.prompt_loss_weight 0.1  the prompt at a tenth of the weight
and the base model itself is measured beside them. Each is scored on the validation conversations with the
eval stage's own code: assistant-turn bits per byte (the NLL of what the assistant says and its turn's end,
over the bytes of its text), overall bits per byte of the chat source, the turn rate on the 12 fixed chat
prompts, and a few samples side by side.

    python bench/sft.py --project DIR [--steps 300] [--out bench/results]

DIR is a project that has run the pipeline through the full phase (`make demo` leaves one): data/documents,
artifacts/tokenizer and checkpoints/full; params from its params.yaml plus --params overlays (default
configs/tiny.yaml). Writes bench/results/<date>-sft-ablation.json and prints the table for the README.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params  # noqa: E402
from chatpipe.tasks.common.layout import Layout  # noqa: E402
from chatpipe.tasks.evals.evaluate import chat, load_model, validation  # noqa: E402
from chatpipe.tasks.tokens import pack  # noqa: E402
from chatpipe.tasks.train import loop  # noqa: E402

ARMS = {"masked": 0.0, "plain": 1.0, "0.1": 0.1}


def arm_project(work: Path, project: Path, name: str) -> Path:
    """A fresh root sharing the project's documents and tokenizer, with a copy of its full checkpoints."""
    root = work / name
    (root / "data").mkdir(parents=True)
    (root / "artifacts").mkdir()
    (root / "data" / "documents").symlink_to((project / "data" / "documents").resolve())
    (root / "artifacts" / "tokenizer").symlink_to((project / "artifacts" / "tokenizer").resolve())
    shutil.copytree(project / "checkpoints" / "full", root / "checkpoints" / "full")
    return root


def score(params, layout: Layout, phase: str) -> dict:
    model, state, fmt, device = load_model(params, layout, phase)
    val = validation(model, fmt, layout.documents, params.shard.val_fraction, None, device)
    chats = chat(model, fmt, params.eval.chat_max_tokens, params.seed)
    chat_sources = {s: v for s, v in val["per_source"].items() if "assistant_bpb" in v}
    return {"step": state["step"], "assistant_bpb": val["overall"]["assistant_bpb"],
            "chat_bpb": {s: v["bpb"] for s, v in chat_sources.items()}, "overall_bpb": val["overall"]["bpb"],
            "turn_rate": round(sum(c["problem"] is None for c in chats) / len(chats), 4),
            "samples": [{"prompt": c["prompt"], "completion": c["completion"]} for c in chats[:4]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--params", type=Path, action="append", default=None)
    ap.add_argument("--steps", type=int, default=None, help="default: the params' sft.steps")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    args = ap.parse_args()
    overlays = args.params or [PROJECT_ROOT / "configs" / "tiny.yaml"]
    extra = [f"sft.steps={args.steps}"] if args.steps else []
    base_params = load_params(overlays, ["sft.enabled=true", *extra], base=args.project / "params.yaml")
    results = {"base (full)": score(base_params, Layout(args.project.resolve()), "full")}
    with tempfile.TemporaryDirectory(prefix="chatpipe-sft-ablation-") as tmp:
        for name, weight in ARMS.items():
            params = load_params(overlays, ["sft.enabled=true", f"sft.prompt_loss_weight={weight}", *extra],
                                 base=args.project / "params.yaml")
            layout = Layout(arm_project(Path(tmp), args.project, name))
            with contextlib.chdir(layout.root):
                packed = pack.run(params, layout)
                trained = loop.run(params, layout, "sft")
            results[name] = {"prompt_loss_weight": weight, **score(params, layout, "sft"),
                             "train_seconds": trained.metrics["seconds"], "rows": packed.metrics["rows"]}
            print(f"{name}: {results[name]['assistant_bpb']} assistant bits/byte, turn rate "
                  f"{results[name]['turn_rate']}", flush=True)
    sft = base_params.sft
    result = {"benchmark": "sft-ablation", "date": dt.date.today().isoformat(),
              "recipe": {"steps": sft.steps, "lr": sft.lr, "warmup_steps": sft.warmup_steps,
                         "batch_size": base_params.train.batch_size, "block_size": base_params.model.block_size,
                         "sources": sft.sources},
              "arms": results}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{result['date']}-sft-ablation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {out}")


def table(result: dict) -> str:
    lines = ["| arm | prompt loss weight | assistant-turn bits/byte | chat bits/byte | turn rate |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in result["arms"].items():
        lines.append(f"| {name} | {r.get('prompt_loss_weight', '—')} | {r['assistant_bpb']:.4f} | "
                     + ", ".join(f"{v:.4f}" for v in r["chat_bpb"].values()) + f" | {r['turn_rate']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
