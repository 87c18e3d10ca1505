"""The stage table: every stage of the pipeline, declared once, and the DAG that follows from it.

    ingest → tokenizer → shard → pack → pilot → gate → full → sft → distill → eval → publish

Each `Stage` says what runs (`run`, imported when called), the params sections it reads, the code it runs
(folders of this project: a stage's cache cannot miss a file of its own code; tests/test_house.py computes
each stage's imports and fails, naming the folders, when they differ), the files it reads and the files it
writes, its retries, whether a training worker elsewhere may run it, the params switch that turns it on, and
whether a result that says stop (ok=False) stops the flow (the gate's, with GateFailed) or is read on (the
pilot's, by the gate).

The edges are not declared: a stage's upstream stages are the earlier ones that write one of its inputs
(`UPSTREAM`). Everything that drives the stages reads this table: the Prefect flow's tasks, edges and cache
keys (flows/), the CLI's stage commands (chatpipe/cli.py) and `dvc.yaml`, which is generated from it
(`chatpipe dvc-yaml`; a test fails when the committed file differs). The packages below hold the stages,
grouped as the diagram: ingest/, tokens/, train/, evals/, publish/, over common/ and chat/.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from chatpipe.tasks.common.errors import GateFailed, StageFailed


@dataclass(frozen=True)
class Output:
    path: str
    persist: bool = False   # DVC keeps it across runs (a training phase resumes from its checkpoints)
    cache: bool = True      # DVC stores it in its cache (reports and bundles are rebuilt instead)


@dataclass(frozen=True)
class Plot:
    path: str
    y: str


@dataclass(frozen=True, kw_only=True)
class Stage:
    name: str
    run: str                          # "module:function", called as function(params, layout, **args)
    help: str                         # one line: what the stage does and where it writes
    params: tuple[str, ...]           # params.yaml keys it reads (a section, or a dotted key)
    code: tuple[str, ...]             # project folders holding every module it imports (tests/test_house.py)
    inputs: tuple[str, ...] = ()      # files and folders it reads (earlier stages' outputs, the user's data)
    outputs: tuple[Output, ...] = ()  # what it writes besides metrics/<name>.json
    plots: tuple[Plot, ...] = ()
    command: str = ""                 # the `chatpipe` command that runs it (default: its name)
    args: dict = field(default_factory=dict)  # keyword arguments of `run`, and the command's options
    retries: int = 0                  # Prefect retries of a crash (a training phase resumes from its checkpoint)
    dispatch: bool = False            # may run on a `train/<pool>` worker (flows/train_worker.py)
    halts: type[StageFailed] | None = StageFailed  # raised when a result says ok=False; None: the flow reads on
    enabled: str = ""                 # the params key that switches it on ("sft.enabled"); "": it always runs

    @property
    def cli(self) -> str:
        return self.command or self.name

    @property
    def metrics(self) -> str:
        return f"metrics/{self.name}.json"

    @property
    def writes(self) -> tuple[str, ...]:
        """Every path it writes: its outputs, metrics/<name>.json and its plots."""
        return (*(o.path for o in self.outputs), self.metrics, *(p.path for p in self.plots))

    def __call__(self, params, layout, **args):
        """Run the stage: `run(params, layout, **self.args, **args)` -> StageResult."""
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)(params, layout, **{**self.args, **args})


def upstream(stages: Iterable[Stage]) -> dict[str, tuple[str, ...]]:
    """Each stage's upstream stages, in table order: those that write one of its inputs (that path or a folder
    holding it). A writer must come earlier in the table; an input that no stage writes is the user's."""
    stages, edges = list(stages), {}
    for stage in stages:
        writers = [w.name for w in stages
                   if any(path == out or path.startswith(out + "/") for out in w.writes for path in stage.inputs)]
        if late := [name for name in writers if name not in edges]:  # edges: the stages before this one
            raise ValueError(f"stage table: {stage.name} reads what {', '.join(late)} writes, at or after it")
        edges[stage.name] = tuple(writers)
    return edges


# Loading params checks the model section against ModelConfig, so every stage imports the model's schema; a stage
# that needs no more of model/ names just those files, so editing the transformer re-runs no data stage.
SHARED = ("tasks/common", "tasks/chat")
SCHEMA = ("model/config.py", "model/presets.py")
TRAINING = ("tasks/train", "tasks/tokens", "model", "kernels", *SHARED)


def _training(name: str, help: str, params: tuple[str, ...], inputs: tuple[str, ...], **options) -> Stage:
    return Stage(name=name, run="chatpipe.tasks.train.loop:run", help=help, params=("seed", "model", "train", *params),
                 code=TRAINING, inputs=inputs, outputs=(Output(f"checkpoints/{name}", persist=True),),
                 plots=(Plot(f"metrics/{name}_curve.csv", "loss"), Plot(f"metrics/{name}_val.csv", "val_loss")),
                 command="train", args={"phase": name, "replace_stale": True}, retries=2, dispatch=True, **options)


PIPELINE: dict[str, Stage] = {s.name: s for s in (
    Stage(name="ingest", run="chatpipe.tasks.ingest.ingest:run",
          help="Read every enabled source, clean and dedup → data/documents/ and metrics/ingest.json.",
          params=("ingest",), code=("tasks/ingest", *SHARED, *SCHEMA),
          inputs=("data/chat_combined.txt",), outputs=(Output("data/documents"),)),
    Stage(name="tokenizer", run="chatpipe.tasks.tokens.tokenizer:run",
          help="Train the byte-level BPE tokenizer (or adopt tokenizer.from's) → artifacts/tokenizer/ and "
               "metrics/tokenizer.json.",
          params=("tokenizer", "chat", "shard.val_fraction", "model.block_size"),
          code=("tasks/tokens", "model", "kernels", *SHARED),
          inputs=("data/documents",), outputs=(Output("artifacts/tokenizer"),)),
    Stage(name="shard", run="chatpipe.tasks.tokens.shard:run",
          help="Tokenize documents into Arrow token shards → data/shards/{train,val}/ and manifest.json.",
          params=("shard",), code=("tasks/tokens", *SHARED, *SCHEMA),
          inputs=("data/documents", "artifacts/tokenizer"), outputs=(Output("data/shards"),)),
    Stage(name="pack", run="chatpipe.tasks.tokens.pack:run",
          help="Pack conversations whole into rows with loss weights (sft.enabled) → data/sft/{train,val}/ and "
               "manifest.json.",
          params=("sft", "shard.val_fraction", "model.block_size"), code=("tasks/tokens", *SHARED, *SCHEMA),
          inputs=("data/documents", "artifacts/tokenizer"), outputs=(Output("data/sft"),), enabled="sft.enabled"),
    _training("pilot", help="The short run the gate judges → checkpoints/pilot/, metrics/pilot.json.", params=("pilot",),
              inputs=("data/shards", "artifacts/tokenizer"),
              halts=None),  # stopped by a NaN, it is still the gate's to judge
    Stage(name="gate", run="chatpipe.tasks.train.gate:run",
          help="Judge the pilot (loss, NaN, spikes, grad norm, trend, samples) → metrics/gate.json; fails if "
               "unhealthy.",
          params=("gate",), code=("tasks/train", *SHARED, *SCHEMA),
          inputs=("metrics/pilot.json", "metrics/pilot_curve.csv", "metrics/pilot_val.csv"),
          halts=GateFailed),  # an unhealthy pilot: the full run never starts
    _training("full", help="The full run, from the pilot's weights → checkpoints/full/, metrics/full.json.", params=("full",),
              inputs=("metrics/gate.json", "data/shards", "artifacts/tokenizer", "checkpoints/pilot")),
    _training("sft", help="Chat fine-tuning from the full model's weights, the loss on the assistant's turns "
                          "(sft.enabled) → checkpoints/sft/.",
              params=("sft",), inputs=("data/sft", "artifacts/tokenizer", "checkpoints/full"), enabled="sft.enabled"),
    _training("distill", help="A student taught by the sft (or full) model (distill.enabled) → checkpoints/distill/.",
              params=("distill", "sft.enabled"),
              inputs=("checkpoints/pilot", "checkpoints/full", "checkpoints/sft", "data/shards", "artifacts/tokenizer"),
              enabled="distill.enabled"),
    Stage(name="eval", run="chatpipe.tasks.evals.evaluate:run",
          help="Evaluate the trained model (val loss/bpb, chat turns, HumanEval) → metrics/eval.json, reports/eval.md.",
          params=("seed", "eval", "shard.val_fraction", "train.device", "sft.enabled", "distill.enabled"),
          code=("tasks/evals", "tasks/train", "tasks/tokens", "model", "kernels", *SHARED),
          inputs=("checkpoints/full", "checkpoints/sft", "checkpoints/distill", "data/documents",
                  "artifacts/tokenizer"),
          outputs=(Output("reports/eval.md", cache=False), Output("reports/humaneval_samples.jsonl"),
                   Output("reports/humaneval_results.jsonl"), Output("reports/student_humaneval_samples.jsonl"),
                   Output("reports/student_humaneval_results.jsonl"))),
    Stage(name="publish", run="chatpipe.tasks.publish.publish:run",
          help="Bundle the model → dist/<name>/ (+ HF export), upload to GCS, register in MLflow.",
          params=("eval.phase", "publish", "sft.enabled", "distill.enabled", "distill.student.quant"),
          code=("tasks/publish", "tasks/train", "tasks/tokens", "model", "kernels", *SHARED),
          inputs=("checkpoints/full", "checkpoints/sft", "checkpoints/distill", "metrics/eval.json",
                  "metrics/pilot.json", "metrics/full.json", "data/shards/manifest.json", "artifacts/tokenizer"),
          outputs=(Output("dist", cache=False),)),
)}
UPSTREAM: dict[str, tuple[str, ...]] = upstream(PIPELINE.values())
