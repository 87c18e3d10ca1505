"""Evaluation: `chatpipe eval` measures the trained model, and publish decides on its numbers.

One checkpoint (the latest of `eval.phase`), three measures:

1. Validation loss, perplexity and bits per byte, overall and per source, on the validation documents
   (the split by document id that the shards and the tokenizer's held-out set use). Each source's
   documents are tokenized and joined as the shards join them, every document followed by
   <|endoftext|> (and one before the first, so every token of the text is predicted), cut into
   block_size windows and scored in batches. Bits per byte = NLL / ln 2 / UTF-8 bytes of the text:
   unlike the loss it is comparable across tokenizers. `eval.val_max_tokens` caps the tokens per
   source; the document that crosses the cap is cut there and its bytes are counted up to the cut.
2. Chat: one seeded generation (the bundle's default sampling) for each of CHAT_PROMPTS; the turn rate
   is the share that end the assistant turn cleanly, as the gate defines it (tasks/gate.py turn_problem).
3. HumanEval pass@1 (greedy) and pass@k (sampled), completions run in the sandbox (tasks/humaneval.py).

Outputs, each written whole (tasks/atomic.py), metrics last: reports/eval.md (tables and the chat
generations), reports/humaneval_samples.jsonl (the reference samples format), reports/
humaneval_results.jsonl (every completion with its outcome; both empty when HumanEval is disabled) and
metrics/eval.json, recorded as the MLflow run "eval". Publish reads `val_loss`, `turn_rate` and
`humaneval["pass@1_greedy"]` (`humaneval` is null when disabled) from it.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from model import Transformer
from tasks import atomic, bundle, chat_format, devices, humaneval
from tasks.chat_format import Turn
from tasks.config import Params, params_dict
from tasks.documents import val_rows
from tasks.errors import InputError
from tasks.gate import turn_problem
from tasks.stage import Layout, StageResult, Timer, finish
from tasks.tokenizer import load as load_tokenizer
from tasks.train import SAMPLE_PROMPTS, samples

WINDOW_TOKENS = 16384  # tokens per validation batch (windows of block_size)
CHAT_PROMPTS = (*SAMPLE_PROMPTS, *(chat_format.prompt(turns) for turns in (
    (Turn("user", "What is your favorite food?"),),
    (Turn("user", "Where did you grow up?"),),
    (Turn("user", "I just adopted a puppy!"),),
    (Turn("user", "Tell me a joke."),),
    (Turn("user", "How do I reverse a list in Python?"),),
    (Turn("user", "Write a Python function that adds two numbers."),),
    (Turn("system", "You are a helpful assistant."), Turn("user", "What is the capital of France?")),
    (Turn("user", "Hello!"), Turn("assistant", "Hi! How can I help you today?"),
     Turn("user", "Do you like music?")),
    (Turn("user", "I'm feeling tired today."), Turn("assistant", "Sorry to hear that. Did you sleep well?"),
     Turn("user", "Not really, I stayed up late.")),
)))


# ---------------------------------------------------------------- validation loss and bits per byte

@dataclass
class SourceStream:
    """One source's validation documents as the shards lay them out: <eot> doc <eot> doc <eot> ..."""
    tokens: list[int]
    bytes: int = 0
    documents: int = 0

    @property
    def targets(self) -> int:
        """Tokens predicted: all but the leading <eot>."""
        return len(self.tokens) - 1

    def add(self, text: str, encoding, eot: int, cap: int | None) -> None:
        ids = [*encoding.ids, eot]
        room = len(ids) if cap is None else min(len(ids), cap - self.targets)
        if room <= 0:
            return
        self.tokens += ids[:room]
        kept = text[:encoding.offsets[room - 1][1]] if room < len(encoding.ids) else text
        self.bytes += len(kept.encode("utf-8"))
        self.documents += 1


def validation_streams(documents: Path, val_fraction: float, tokenizer: Tokenizer,
                       max_tokens: int | None) -> dict[str, SourceStream]:
    """Each source's validation documents, tokenized and joined, up to `max_tokens` predicted tokens."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    streams: dict[str, SourceStream] = {}

    def full(source: str) -> bool:
        return max_tokens is not None and source in streams and streams[source].targets >= max_tokens

    for rows in val_rows(documents, val_fraction):
        rows = [(src, text) for src, text in rows if not full(src)]
        encodings = tokenizer.encode_batch([text for _, text in rows], add_special_tokens=False)
        for (src, text), encoding in zip(rows, encodings):
            streams.setdefault(src, SourceStream([eot])).add(text, encoding, eot, max_tokens)
    if not streams:
        raise InputError(f"{documents}: no validation documents (shard.val_fraction={val_fraction}); "
                         "ingest more documents or raise shard.val_fraction")
    return dict(sorted(streams.items()))


@torch.no_grad()
def stream_nll(model: Transformer, tokens: list[int], device: torch.device) -> float:
    """Summed next-token NLL (nats) over a token stream, in non-overlapping block_size windows."""
    block = model.config.block_size
    t = torch.tensor(tokens, dtype=torch.long)
    n_windows = math.ceil((len(t) - 1) / block)
    x = torch.zeros(n_windows * block, dtype=torch.long)
    y = torch.full((n_windows * block,), -1, dtype=torch.long)  # padding targets are ignored
    x[:len(t) - 1], y[:len(t) - 1] = t[:-1], t[1:]
    x, y = x.view(n_windows, block), y.view(n_windows, block)
    per_batch = max(1, WINDOW_TOKENS // block)
    total = 0.0
    for i in range(0, n_windows, per_batch):
        logits, _ = model(x[i:i + per_batch].to(device))
        total += F.cross_entropy(logits.flatten(0, 1), y[i:i + per_batch].flatten().to(device),
                                 ignore_index=-1, reduction="sum").item()
    return total


def _scores(nll: float, tokens: int, n_bytes: int) -> dict:
    loss = nll / tokens
    return {"loss": round(loss, 5), "ppl": round(math.exp(loss), 4),
            "bpb": round(nll / math.log(2) / n_bytes, 5), "tokens": tokens, "bytes": n_bytes}


def validation(model: Transformer, tokenizer: Tokenizer, documents: Path, val_fraction: float,
               max_tokens: int | None, device: torch.device) -> dict:
    """{"overall": scores, "per_source": {source: scores + documents}}; scores = loss, ppl, bpb, tokens, bytes."""
    model.eval()
    per_source, nll_sum = {}, 0.0
    for src, stream in validation_streams(documents, val_fraction, tokenizer, max_tokens).items():
        nll = stream_nll(model, stream.tokens, device)
        nll_sum += nll
        per_source[src] = {**_scores(nll, stream.targets, stream.bytes), "documents": stream.documents}
    overall = _scores(nll_sum, sum(s["tokens"] for s in per_source.values()),
                      sum(s["bytes"] for s in per_source.values()))
    return {"overall": overall, "per_source": per_source}


# ---------------------------------------------------------------- chat

def chat(model: Transformer, tokenizer: Tokenizer, max_tokens: int, seed: int) -> list[dict]:
    """One generation per chat prompt with the bundle's default sampling; each judged by turn_problem."""
    g = bundle.DEFAULT_GENERATION
    return [{**sample, "problem": turn_problem(sample)}
            for sample in samples(model, tokenizer, max_tokens, seed, CHAT_PROMPTS, temperature=g["temperature"],
                                  top_k=g["top_k"], top_p=g["top_p"])]


# ---------------------------------------------------------------- the report

def _fenced(text: str) -> str:
    """A markdown code block that no backtick run inside `text` can close."""
    fence = "`" * max(3, max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _pct(x: float) -> str:
    return f"{x:.1%}"


def report(metrics: dict) -> str:
    """reports/eval.md: the numbers as tables, every chat generation, the HumanEval summary."""
    he = metrics["humaneval"]
    turns = sum(c["problem"] is None for c in metrics["chat"])
    lines = [f"# Evaluation of `{metrics['checkpoint']}`", "",
             "| measure | value |", "| --- | --- |",
             f"| validation loss | {metrics['val_loss']:.4f} |", f"| perplexity | {metrics['val_ppl']:.2f} |",
             f"| bits per byte | {metrics['val_bpb']:.4f} |",
             f"| chat turn structure | {turns}/{len(metrics['chat'])} ({metrics['turn_rate']:.0%}) |"]
    if he:
        lines.append(f"| HumanEval pass@1 (greedy) | {_pct(he['pass@1_greedy'])} |")
        lines += [f"| HumanEval pass@{k} ({he['samples']} samples) | {_pct(v)} |" for k, v in he["pass@k"].items()]
    lines += ["", "## Validation by source", "",
              "| source | documents | tokens | bytes | loss | perplexity | bits/byte |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [(f"| {src} | {s['documents']:,} | {s['tokens']:,} | {s['bytes']:,} | {s['loss']:.4f} | "
               f"{s['ppl']:.2f} | {s['bpb']:.4f} |") for src, s in metrics["per_source"].items()]
    lines += ["", "## HumanEval", ""]
    if he:
        lines += [(f"{he['problems']} problems, one greedy and {he['samples']} sampled completions each "
                   f"(at most {he['max_new_tokens']} new tokens); {he['truncated_prompts']} prompts were cut to "
                   "fit the model's context (left truncation). Every completion ran in the sandbox: "
                   "`reports/humaneval_results.jsonl`; the samples in the reference format: "
                   "`reports/humaneval_samples.jsonl`."), "", "| status | completions |", "| --- | ---: |"]
        lines += [f"| {status} | {n} |" for status, n in he["statuses"].items()]
    else:
        lines.append("Not run (`eval.humaneval.enabled: false`).")
    lines += ["", "## Chat", "", (f"{turns} of {len(metrics['chat'])} answers end their turn cleanly "
                                  "(stop marker before the token limit, not empty, no turn marker inside)."), ""]
    for i, c in enumerate(metrics["chat"], 1):
        verdict = "clean turn" if c["problem"] is None else c["problem"]
        lines += [f"### {i}. {verdict}", "", _fenced(c["prompt"] + c["completion"]), ""]
    lines += ["## Time", "", "| part | seconds |", "| --- | ---: |"]
    lines += [f"| {part} | {s:.1f} |" for part, s in metrics["timings"].items()]
    return "\n".join(lines) + "\n"


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


# ---------------------------------------------------------------- the stage

def load_model(params: Params, layout: Layout) -> tuple[Transformer, dict, Tokenizer, torch.device]:
    """The latest checkpoint of eval.phase and the tokenizer it was trained with."""
    device = devices.pick(params.train.device)[0].torch_device()
    model, state = bundle.from_checkpoint(layout.checkpoints / params.eval.phase, device, layout.tokenizer)
    return model, state, load_tokenizer(layout.tokenizer), device


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg, timer = params.eval, Timer()
    model, state, tokenizer, device = load_model(params, layout)
    if cfg.humaneval.enabled:
        humaneval.check_config(cfg.humaneval, model.config.block_size)  # before the slow parts
    part = Timer()
    val = validation(model, tokenizer, layout.documents, params.shard.val_fraction, cfg.val_max_tokens, device)
    timings = {"validation": part.seconds}
    part = Timer()
    samples = chat(model, tokenizer, cfg.chat_max_tokens, params.seed)
    timings["chat"] = part.seconds
    he = humaneval.evaluate(model, tokenizer, cfg.humaneval, params.seed) if cfg.humaneval.enabled else None
    if he:
        timings["humaneval generation"] = he.metrics["generation_seconds"]
        timings["humaneval execution"] = he.metrics["execution_seconds"]
    timings["total"] = timer.seconds
    turns = sum(s["problem"] is None for s in samples)
    overall = val["overall"]
    metrics = {"checkpoint": state["path"], "step": state["step"], "phase": cfg.phase,
               "val_loss": overall["loss"], "val_ppl": overall["ppl"], "val_bpb": overall["bpb"],
               "val_tokens": overall["tokens"], "val_bytes": overall["bytes"], "per_source": val["per_source"],
               "turn_rate": round(turns / len(samples), 4), "chat": samples, "humaneval": he.metrics if he else None,
               "timings": timings, "seconds": timer.seconds}

    reports = layout.root / "reports"
    outputs = [reports / "eval.md", reports / "humaneval_samples.jsonl", reports / "humaneval_results.jsonl"]
    atomic.write_bytes(outputs[1], _jsonl(he.samples if he else []))  # empty when disabled: never stale
    atomic.write_bytes(outputs[2], _jsonl(he.results if he else []))
    atomic.write_bytes(outputs[0], report(metrics).encode("utf-8"))
    parts = [f"val loss {overall['loss']:.2f} (ppl {overall['ppl']:.1f}, {overall['bpb']:.2f} bits/byte)",
             f"chat turns {turns}/{len(samples)}"]
    if he:
        parts.append(f"HumanEval pass@1 {_pct(he.metrics['pass@1_greedy'])} (greedy), sampled "
                     + ", ".join(f"pass@{k} {_pct(v)}" for k, v in he.metrics["pass@k"].items()))
    summary = f"eval: {' · '.join(parts)} · {os.path.relpath(outputs[0])} [{timer.seconds:.1f}s]"
    return finish(layout, "eval", summary, metrics, outputs, params.tracking, params_dict(params))
