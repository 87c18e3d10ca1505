"""LoRA fine-tuning (`train.lora`): low-rank adapters on the blocks' linears train, every other weight is frozen.

Why a module of its own: the loop, checkpoints and everything that reads a checkpoint must agree on what a
LoRA run is. It is peft's LoRA (`peft.LoraModel`) injected into our own Transformer in place: each targeted
nn.Linear (model/transformer.py's wq, wk, wv, wo, w1, w2, w3) becomes a peft `lora.Linear` that keeps the
original layer as `base_layer` and adds `scaling * B(A(dropout(x)))`, B zero at the start so training starts
at the base model exactly. peft marks only the adapters trainable, so `Optimizers` (which takes the
parameters that require grad) holds only them.

A LoRA run's checkpoint stores the adapters alone (`save`/`load`, peft's adapter state dict) and the base it
adapts (resume.py); whoever wants the model gets base + adapters merged (`merge`, peft's merge_and_unload):
a plain Transformer, so eval, distillation, publish and serve never see an adapter. A bf16 base
(`train.weights: bf16`) gets fp32 adapters (peft upcasts them), so their AdamW state is fp32 too.

Token rows (`attach`'s `rows`): the chat markers added to an adopted tokenizer start with one shared row (the
import's mean, tasks/train/pretrained.py); frozen, they would stay equal and the model could not tell
`<|user|>` from `<|assistant|>`. So those rows of the embedding and of the head train too, with peft's
trainable tokens (LoraConfig.trainable_token_indices): each wrapped layer holds the rows' current values
(`trainable_tokens_delta`, fp32 like the adapters), saved with the adapters and written into the weights at
merge. peft wraps our `tok_emb` and an untied `lm_head` (nn.Linear) by name; it cannot see that our tied head
is the embedding (it looks for transformers' `tie_word_embeddings`), so `_tie_head` wraps the head with the
embedding's rows as peft does for a tied transformers model. Reading `lm_head.weight` gives the rows swapped
in, so the fused loss (`train.kernels`) trains them too.
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, LoraModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import cast_adapter_dtype
from peft.utils.other import TrainableTokensWrapper, _set_trainable
from safetensors.torch import load_file, save_file
from torch import nn

from chatpipe.model.config import ModelConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.config import LoraParams
from chatpipe.tasks.common.errors import ConfigError, InputError

ADAPTER = "default"  # peft's adapter name; checkpoints store the state dict without it


def check(settings: LoraParams | None, config: ModelConfig) -> None:
    """Refuse the model shapes LoRA is not built for, in one line (which phases it trains is their row's:
    tasks/train/phases.py, `Phase.adapts`; what params alone decide is refused when they load)."""
    if settings is None:
        return
    why = ("the model is ternary (model.quant): its linears are quantized in training" if config.quant else
           "the model has MoE layers: their experts are not nn.Linear" if config.moe else None)
    if why:
        raise ConfigError(f"params: train.lora: {why}")


def attach(model: Transformer, settings: dict, rows: list[int] = ()) -> LoraModel:
    """Adapters into `model` in place (train.lora's fields as a dict), and `rows` of the embedding and head
    trainable (the module docstring); peft freezes every other weight. On a bf16 base the adapters are fp32
    (peft's cast_adapter_dtype, which PeftModel applies and LoraModel not)."""
    rows, tied = sorted(rows), model.config.tie_embeddings
    tokens = {"tok_emb": rows, **({} if tied else {"lm_head": rows})} if rows else None
    config = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=list(settings["targets"]), bias="none", trainable_token_indices=tokens)
    tuner = LoraModel(model, config, ADAPTER)
    if rows and tied:
        _tie_head(model, rows)
    cast_adapter_dtype(model, ADAPTER)
    return tuner


def _tie_head(model: Transformer, rows: list[int]) -> None:
    """A tied head wrapped with the embedding's trainable rows (one set of values for both, saved once): the
    call peft makes for a tied transformers model (peft.utils.other.set_additional_trainable_modules)."""
    _set_trainable(model, ADAPTER, module_names=["lm_head"], inference_mode=False, strict_module_check=True,
                   wrapper_cls=TrainableTokensWrapper, token_indices=rows, tied_adapter=model.tok_emb.token_adapter)


def token_rows(model: nn.Module) -> list[int]:
    """The embedding rows that train beside the adapters ([] for none)."""
    adapter = getattr(model.tok_emb, "token_adapter", None)
    return list(adapter.token_indices[ADAPTER]) if adapter else []


def adapted(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save(model: nn.Module, path: Path) -> None:
    """The adapters alone, as safetensors (names without peft's adapter name)."""
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()},
              str(path))


def load(model: nn.Module, path: Path) -> None:
    """Inverse of `save`, into a model with the same adapters attached; exactly its adapters or an error."""
    state = load_file(str(path), device=str(next(model.parameters()).device))
    expected = set(get_peft_model_state_dict(model, adapter_name=ADAPTER))
    if set(state) != expected:
        raise InputError(f"{path}: not these adapters (missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]})")
    set_peft_model_state_dict(model, state, adapter_name=ADAPTER)


def merge(model: Transformer, settings: dict, path: Path, rows: list[int] = ()) -> Transformer:
    """`model` (holding the base) with the adapters and token `rows` in `path` merged into its weights: a plain
    Transformer.

    Attaching initializes adapters, which would draw from the global RNG; that is done in a fork of it, so
    loading a model (eval, the distill teacher) never moves the random stream of whatever runs next."""
    with torch.random.fork_rng(devices=[]):
        tuner = attach(model, settings, rows)
    load(model, path)
    return tuner.merge_and_unload(safe_merge=True)


def describe(model: nn.Module, settings: dict) -> str:
    """What trains, for the run's summary: e.g. `LoRA rank 8 on wq, wv: 16,384 of 7,340,032 parameters`, with
    `and 3 token rows` after the targets when the markers' rows train."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "trainable_tokens" not in n)
    rows = f" and {n} token rows" if (n := len(token_rows(model))) else ""
    return f"LoRA rank {settings['rank']} on {', '.join(settings['targets'])}{rows}: {trainable:,} of {total:,} parameters"
