"""Evaluate a bundle that came back from the GPU run, here on CPU: the same measures as `chatpipe eval`.

The GPU machine trains; this machine evaluates what it brought back (`cat seed-bundle.tar.* | tar -x`):
validation loss / bits per byte per source, the chat turns, HumanEval — `tasks.evals.evaluate.measure`,
the eval stage's own code, on the bundle's model (read through tasks/common/bundle.py, checksums checked).
The project directory gives the documents (for the validation split) and the params.

    python bench/gpu/eval_bundle.py BUNDLE --project DIR --out eval.json [-S eval.humaneval.n_samples=1 ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatpipe.tasks.common import bundle  # noqa: E402
from chatpipe.tasks.common.config import load_params  # noqa: E402
from chatpipe.tasks.common.layout import Layout  # noqa: E402
from chatpipe.tasks.evals.evaluate import measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--project", type=Path, required=True, help="with data/documents/ and params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--step", type=int, default=None, help="the training step it was saved at (its model card says)")
    ap.add_argument("-S", "--set", action="append", default=[], help="a params override, key=value")
    args = ap.parse_args()
    params = load_params([], args.set, base=args.project / "params.yaml")
    loaded = bundle.load(args.bundle)
    layout = Layout(args.project.resolve())
    state = {"path": str(args.bundle), "step": args.step}
    metrics, _ = measure(loaded.model, state, loaded.chat, params, layout, torch.device("cpu"))
    args.out.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    he = metrics["humaneval"] or {}
    print(f"val loss {metrics['val_loss']:.3f}, {metrics['val_bpb']:.3f} bits/byte over {metrics['val_tokens']:,} tokens; "
          f"turn rate {metrics['turn_rate']}; HumanEval pass@1 (greedy) {he.get('pass@1_greedy')}")


if __name__ == "__main__":
    main()
