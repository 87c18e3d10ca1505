"""The stage table: every stage of the pipeline, declared once.

    ingest → tokenizer → shard → pack → pilot → gate → full → sft → distill → eval → publish

Each `Stage` says what runs (`run`, imported when called), the params sections it reads, the code it runs
(folders of this project: a stage's cache cannot miss a file of its own code; tests/test_house.py checks
that every module a stage imports lies in one of them), the files it reads from earlier stages and the
files it writes, its retries, whether a training worker elsewhere may run it, and whether a result that
says stop (ok=False) stops the flow at once or is read on (the pilot's, by the gate).

Everything that drives the stages reads this table: the Prefect flow's tasks and cache keys
(flows/stages.py), the CLI's stage commands (chatpipe/cli.py) and `dvc.yaml`, which is generated from it
(`chatpipe dvc-yaml`; a test fails when the committed file differs). The packages below hold the stages,
grouped as the diagram: ingest/, tokens/, train/, evals/, publish/, over common/ and chat/.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Output:
    path: str
    persist: bool = False   # DVC keeps it across runs (a training phase resumes from its checkpoints)
    cache: bool = True      # DVC stores it in its cache (reports and bundles are rebuilt instead)


@dataclass(frozen=True)
class Plot:
    path: str
    y: str


@dataclass(frozen=True)
class Stage:
    name: str
    run: str                          # "module:function", called as function(params, layout, **args)
    help: str                         # one line: what the stage does and where it writes
    params: tuple[str, ...]           # params.yaml keys it reads (a section, or a dotted key)
    code: tuple[str, ...]             # project folders holding every module it imports
    inputs: tuple[str, ...] = ()      # files and folders it reads (earlier stages' outputs, the user's data)
    outputs: tuple[Output, ...] = ()  # what it writes besides metrics/<name>.json
    plots: tuple[Plot, ...] = ()
    command: str = ""                 # the `chatpipe` command that runs it (default: its name)
    args: dict = field(default_factory=dict)  # keyword arguments of `run`, and the command's options
    retries: int = 0                  # Prefect retries of a crash (a training phase resumes from its checkpoint)
    dispatch: bool = False            # may run on a `train/<pool>` worker (flows/train_worker.py)
    halts: bool = True                # a result with ok=False stops the flow there; False: the flow reads it on

    @property
    def cli(self) -> str:
        return self.command or self.name

    @property
    def metrics(self) -> str:
        return f"metrics/{self.name}.json"

    def __call__(self, params, layout, **args):
        """Run the stage: `run(params, layout, **self.args, **args)` -> StageResult."""
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)(params, layout, **{**self.args, **args})


SHARED = ("tasks/common", "tasks/chat")
TRAINING = ("tasks/train", "tasks/tokens", "model", "kernels", *SHARED)


def _training(phase: str, help: str, params: tuple[str, ...], inputs: tuple[str, ...], halts: bool = True) -> Stage:
    return Stage(phase, "chatpipe.tasks.train.loop:run", help, ("seed", "model", "train", *params), TRAINING, inputs,
                 (Output(f"checkpoints/{phase}", persist=True),),
                 (Plot(f"metrics/{phase}_curve.csv", "loss"), Plot(f"metrics/{phase}_val.csv", "val_loss")),
                 command="train", args={"phase": phase, "replace_stale": True}, retries=2, dispatch=True, halts=halts)


PIPELINE: dict[str, Stage] = {s.name: s for s in (
    Stage("ingest", "chatpipe.tasks.ingest.ingest:run",
          "Read every enabled source, clean and dedup → data/documents/ and metrics/ingest.json.",
          ("ingest",), ("tasks/ingest", *SHARED), ("data/chat_combined.txt",), (Output("data/documents"),)),
    Stage("tokenizer", "chatpipe.tasks.tokens.tokenizer:run",
          "Train the byte-level BPE tokenizer (or adopt tokenizer.from's) → artifacts/tokenizer/ and metrics/tokenizer.json.",
          ("tokenizer", "shard.val_fraction", "model.block_size"), ("tasks/tokens", "model", "kernels", *SHARED),
          ("data/documents",), (Output("artifacts/tokenizer"),)),
    Stage("shard", "chatpipe.tasks.tokens.shard:run",
          "Tokenize documents into Arrow token shards → data/shards/{train,val}/ and manifest.json.",
          ("shard",), ("tasks/tokens", *SHARED), ("data/documents", "artifacts/tokenizer"),
          (Output("data/shards"),)),
    Stage("pack", "chatpipe.tasks.tokens.pack:run",
          "Pack conversations whole into rows with loss weights (sft.enabled) → data/sft/{train,val}/ and manifest.json.",
          ("sft", "shard.val_fraction", "model.block_size"), ("tasks/tokens", *SHARED),
          ("data/documents", "artifacts/tokenizer"), (Output("data/sft"),)),
    _training("pilot", "The short run the gate judges → checkpoints/pilot/, metrics/pilot.json.", (),
              ("data/shards", "artifacts/tokenizer"), halts=False),  # stopped by a NaN, it is still the gate's to judge
    Stage("gate", "chatpipe.tasks.train.gate:run",
          "Judge the pilot (loss, NaN, spikes, grad norm, trend, samples) → metrics/gate.json; fails if unhealthy.",
          ("gate",), ("tasks/train", *SHARED),
          ("metrics/pilot.json", "metrics/pilot_curve.csv", "metrics/pilot_val.csv"), halts=False),  # the flow acts on it
    _training("full", "The full run, from the pilot's weights → checkpoints/full/, metrics/full.json.", (),
              ("metrics/gate.json", "data/shards", "artifacts/tokenizer", "checkpoints/pilot")),
    _training("sft", "Chat fine-tuning from the full model's weights, the loss on the assistant's turns (sft.enabled) "
              "→ checkpoints/sft/.", ("sft",), ("data/sft", "artifacts/tokenizer", "checkpoints/full")),
    _training("distill", "A student taught by the sft (or full) model (distill.enabled) → checkpoints/distill/.",
              ("distill", "sft.enabled"),
              ("checkpoints/pilot", "checkpoints/full", "checkpoints/sft", "data/shards", "artifacts/tokenizer")),
    Stage("eval", "chatpipe.tasks.evals.evaluate:run",
          "Evaluate the trained model (val loss/bpb, chat turns, HumanEval) → metrics/eval.json, reports/eval.md.",
          ("seed", "eval", "shard.val_fraction", "train.device", "sft.enabled", "distill.enabled"),
          ("tasks/evals", "tasks/train", "tasks/tokens", "model", "kernels", *SHARED),
          ("checkpoints/full", "checkpoints/sft", "checkpoints/distill", "data/documents", "artifacts/tokenizer"),
          (Output("reports/eval.md", cache=False), Output("reports/humaneval_samples.jsonl"),
           Output("reports/humaneval_results.jsonl"), Output("reports/student_humaneval_samples.jsonl"),
           Output("reports/student_humaneval_results.jsonl"))),
    Stage("publish", "chatpipe.tasks.publish.publish:run",
          "Bundle the model → dist/<name>/ (+ HF export), upload to GCS, register in MLflow.",
          ("eval.phase", "publish", "sft.enabled", "distill.enabled", "distill.student.quant"),
          ("tasks/publish", "tasks/train", "tasks/tokens", "model", "kernels", *SHARED),
          ("checkpoints/full", "checkpoints/sft", "checkpoints/distill", "metrics/eval.json", "metrics/pilot.json",
           "metrics/full.json",
           "data/shards/manifest.json", "artifacts/tokenizer"),
          (Output("dist", cache=False),)),
)}
