"""The model card: the README.md of a bundle, for people deciding whether and how to use the model.

It says what the model is (architecture, size), how good it is (metrics/eval.json), what it was made
from (tasks/publish/lineage.py), with which settings (params.yaml sections), how to run it, and what it is not
for. The YAML front matter is the Hugging Face Hub's, so the card also works as-is on the Hub.
"""
from __future__ import annotations

import yaml

from chatpipe.model.config import ModelConfig
from chatpipe.model.info import param_counts
from chatpipe.tasks.common.config import Params, params_dict

CARD_SECTIONS = ("model", "train", "pilot", "full", "eval", "publish")  # pilot, full: their steps and start


def number(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(number(c) for c in row) + " |" for row in rows])


def architecture(c: ModelConfig) -> str:
    counts = param_counts(c)
    moe = (f"; MoE: {c.moe.n_experts} experts, top-{c.moe.top_k}, every {c.moe.every} layer(s), "
           f"{millions(counts['active'])} active") if c.moe else ""
    attention = "multi-head attention" if c.n_kv_heads == c.n_head else "grouped-query attention"
    return (f"Decoder-only transformer (LLaMA-style: RoPE, RMSNorm, SwiGLU, {attention}"
            f"{', QK-norm' if c.qk_norm else ''}): {c.n_layer} layers × {c.n_embd}, {c.n_head} heads / "
            f"{c.n_kv_heads} KV heads (head_dim {c.head_dim}), SwiGLU hidden {c.ffn_hidden}, context "
            f"{c.block_size} tokens, byte-level BPE vocabulary of {c.vocab_size:,}, "
            f"{'tied' if c.tie_embeddings else 'untied'} embeddings. **{millions(counts['total'])} parameters** "
            f"({millions(counts['embedding'])} in the token embedding){moe}.")


def evaluation(ev: dict) -> str:
    humaneval = ev.get("humaneval") or {}
    rows = [("validation loss (nats/token)", ev.get("val_loss")), ("validation bits per byte", ev.get("val_bpb")),
            ("validation perplexity", ev.get("val_ppl")), ("chat turns ended cleanly", ev.get("turn_rate")),
            ("HumanEval pass@1 (greedy)", humaneval.get("pass@1_greedy"))]
    rows += [(f"HumanEval pass@{k} ({humaneval.get('samples', 'n')} samples)", v)
             for k, v in (humaneval.get("pass@k") or {}).items()]
    return table(("metric", "value"), rows)


def lineage_section(lin: dict) -> str:
    out = []
    docs = lin.get("documents")
    if docs:
        out.append(f"Documents (`{docs['from']}`, fingerprint `{docs['fingerprint']}`): "
                   f"{number(docs['documents'])} after cleaning.\n")
        out.append(table(("source", "kind", "documents kept", "read"),
                         [(name, s["kind"], s["documents"], s["read"]) for name, s in docs["sources"].items()]))
    else:
        out.append("Documents: unknown (no data/documents/manifest.json or metrics/ingest.json in the project).")
    out.append(f"\nTokenizer: `tokenizer.json`, sha256 `{lin['tokenizer']['sha256']}`.")
    sh = lin.get("shards")
    if sh:
        tokens = ", ".join(f"{number(n)} {split}" for split, n in sh["tokens"].items())
        out.append(f"Shards: {len(sh['shards'])} files, {tokens} tokens; manifest `{sh['from']}` sha256 "
                   f"`{sh['manifest_sha256']}` (every shard's sha256 is in `lineage.json`).")
    tr = lin["training"]
    out.append(f"Weights: `{tr['checkpoint']}` ({tr['phase']} phase, step {number(tr['step'])}); "
               f"training data sha256 `{tr['data_sha256']}`.\n")
    if lo := tr.get("lora"):
        base = lo["base"].get("checkpoint") or lo["base"].get("hf") or lo["base"].get("gguf")  # model.init's spec
        out.append(f"LoRA: rank {lo['rank']} adapters on {', '.join(lo['targets'])}, trained on `{base}` with "
                   "every other weight frozen, merged into these weights.\n")
    out.append(table(("phase", "steps", "final train loss", "final val loss", "seconds"),
                     [(phase, r["steps"], r["final_loss"], r["final_val_loss"], r["seconds"])
                      for phase, r in tr["runs"].items()]))
    out.append(f"\nCode: chat-pipeline commit `{lin.get('git_commit') or 'unknown (not a git checkout)'}`.")
    return "\n".join(out)


def chat_format(params: Params) -> str:
    if params.chat.format == "model":
        return (f"Chat format: {params.tokenizer.from_}'s own chat template (its `chat_template`, kept in "
                "tokenizer_config.json and the bundle's chat_format.json); answers end on its end-of-turn token.")
    return ("Chat format: one line per turn, `<|user|> text` then `<|assistant|> text`, optionally after a\n"
            "`<|system|> text` turn; conversations are separated by `<|endoftext|>`. The model answers after\n"
            "`<|assistant|>` and ends its turn by starting the next marker.")


def llama_cpp(name: str, gguf: dict | str) -> str:
    """How to run model.gguf (what tasks/publish/gguf_export.py wrote), or why there is none."""
    if isinstance(gguf, str):
        return f" No GGUF file: {gguf}."
    types = ", ".join(f"{n} {t}" for t, n in gguf["types"].items())
    return (f" With llama.cpp (or Ollama, LM Studio): `model.gguf` ({gguf['arch']}; tensors: {types}; sha256 "
            f"`{gguf['sha256']}`), e.g. `llama-cli -m dist/{name}/model.gguf -cnv` uses its chat template and "
            "stops at the end of the assistant's turn.")


def render(name: str, config: ModelConfig, ev: dict, lin: dict, params: Params, hf: str,
           gguf: dict | str = "not exported") -> str:
    """The card. `hf` is the transformers architecture exported to hf/, or why there is no export; `gguf`
    model.gguf's export record, or why there is none."""
    exported = hf.endswith("ForCausalLM")
    origin = f"fine-tuned from {params.model.init}" if params.model.init else "trained from scratch"
    front = {"library_name": "transformers" if exported else "pytorch", "pipeline_tag": "text-generation",
             "tags": ["chat-pipeline", "chat", "code"]}
    sections = {k: params_dict(params)[k] for k in CARD_SECTIONS}
    how = (f"`chatpipe serve --model dist/{name}` (OpenAI-compatible API and a /chat page), or "
           f"`bundle.load('dist/{name}')` in Python (tasks/common/bundle.py).")
    if exported:
        how += (f" With transformers alone (`{hf}`, no custom code): "
                f"`AutoModelForCausalLM.from_pretrained('dist/{name}/hf')` and `AutoTokenizer` from the same "
                "directory; `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` builds the "
                "prompt and generation_config.json stops at the end of the assistant's turn.")
    else:
        how += f" No transformers export: {hf}."
    how += llama_cpp(name, gguf)
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {name}

A small chat and code language model {origin} by chat-pipeline (ingest → tokenizer → shards → pilot →
health gate → full training → eval → publish).

## Model

{architecture(config)}

{chat_format(params)}

## Evaluation

From `eval.json` (the eval stage's `metrics/eval.json`):

{evaluation(ev)}

## Data and training lineage

{lineage_section(lin)}

## Parameters

```yaml
{yaml.safe_dump(sections, sort_keys=False).strip()}
```

## How to use

{how}

## Intended use and limitations

For research, teaching and as a baseline for the pipeline itself: a model of this size shows whether the
data, tokenizer and training recipe work, not what a production assistant can do. Its answers are often
wrong, repetitive or off-topic; it has no safety tuning, may repeat biases or personal data present in
its training text, and its code is not checked unless you run it in a sandbox. Do not use it for
decisions about people, for medical, legal or financial advice, or where a wrong answer does harm. The
context window is {config.block_size} tokens.

## Files

`model.safetensors` (weights), `config.json`, `tokenizer.json`, `generation_config.json`, `eval.json`,
`lineage.json`{', `hf/` (transformers export)' if exported else ''}{', `model.gguf` (llama.cpp)' if isinstance(gguf, dict) else ''}; `checksums.json` holds the sha256 of
every file.
"""
