"""Evaluation: `chatpipe eval` measures the trained model, and publish decides on its numbers.

The latest checkpoint of `eval.phase` (and, with distillation on, the student of checkpoints/distill beside it,
and the student's teacher when that is another model: model.init's checkpoint as it is with `distill.teacher:
init`) is measured four ways:

1. Validation loss, perplexity and bits per byte, overall and per source, on the validation documents
   (the document-id split the shards and the tokenizer use), joined as the shards join them (each
   document followed by the chat format's separator, one before the first) in block_size windows. Bits per byte =
   NLL / ln 2 / UTF-8 bytes: comparable across tokenizers. `eval.val_max_tokens` caps each source.
2. Chat: one seeded generation per CHAT_PROMPTS entry; the turn rate is the share that end the turn
   cleanly (tasks/train/gate.py `turn_problem`).
3. HumanEval pass@1 (greedy) and pass@k (sampled), run in the sandbox (tasks/evals/humaneval.py).
4. Size and speed: the bytes of the bundle publish would write, and greedy tokens/s through model/decode.py
   (what `chatpipe serve` runs; median of three after a warm-up).

Outputs (each whole, metrics last): reports/eval.md, reports/humaneval_{samples,results}.jsonl
(reports/student_humaneval_* for the student), metrics/eval.json (the student's under `student`, its teacher's
under `teacher` when measured apart, student and teacher side by side under `comparison`), and the MLflow run
"eval". Publish reads `val_loss`, `turn_rate` and `humaneval["pass@1_greedy"]` (null when HumanEval is disabled).
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chatpipe.model.decode import Decoder
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.chat.formats import Encoded
from chatpipe.tasks.chat.turns import CHAT_PROMPTS, DEFAULT_GENERATION
from chatpipe.tasks.common import atomic, bundle
from chatpipe.tasks.common.config import Params, params_dict, trained
from chatpipe.tasks.common.documents import load_manifest, val_rows
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.evals import humaneval
from chatpipe.tasks.evals.compare import comparison, comparison_table, percent
from chatpipe.tasks.tokens.shard import Chat
from chatpipe.tasks.tokens.tokenizer import load as load_tokenizer
from chatpipe.tasks.train import checkpoint, distill
from chatpipe.tasks.train.backends import devices
from chatpipe.tasks.train.samples import samples

WINDOW_TOKENS = 16384  # tokens per validation batch (windows of block_size)
# ---------------------------------------------------------------- validation loss and bits per byte

@dataclass
class SourceStream:
    """One source's validation documents as the shards lay them out: <sep> doc <sep> doc <sep> ...

    A chat source's stream also marks what the assistant says (the chat format's loss weights: its answers
    and what ends them) and counts the bytes of the answers' text, for assistant-turn bits per byte: the NLL
    of those tokens over those bytes."""
    tokens: list[int]
    chat: bool = False
    bytes: int = 0
    documents: int = 0
    supervised: list[bool] = field(default_factory=lambda: [False])  # the leading separator is never a target
    answer_bytes: int = 0

    @property
    def targets(self) -> int:
        """Tokens predicted: all but the leading separator."""
        return len(self.tokens) - 1

    def add(self, doc: Encoded, special: np.ndarray, cap: int | None) -> None:
        ids, text = doc.ids.tolist(), doc.text
        room = len(ids) if cap is None else min(len(ids), cap - self.targets)
        if room <= 0:
            return
        self.tokens += ids[:room]
        kept = text[:doc.offsets[room - 1][1]] if room < len(ids) - 1 else text
        self.bytes += len(kept.encode("utf-8"))
        self.documents += 1
        if self.chat:
            weights = doc.weights[:room].astype(bool)
            self.supervised += weights.tolist()
            self.answer_bytes += sum(len(text[a:b].encode("utf-8")) for (a, b), w, plain in
                                     zip(doc.offsets[:room], weights, ~np.isin(ids[:room], special)) if w and plain)


def validation_streams(documents: Path, val_fraction: float, format, max_tokens: int | None) -> dict[str, SourceStream]:
    """Each source's validation documents in the run's chat format, joined, up to `max_tokens` predicted tokens."""
    chats = Chat(format, {name: source["kind"] for name, source in load_manifest(documents)["sources"].items()})
    streams: dict[str, SourceStream] = {}

    def full(source: str) -> bool:
        return max_tokens is not None and source in streams and streams[source].targets >= max_tokens

    for rows in val_rows(documents, val_fraction):
        rows = [(src, text) for src, text in rows if not full(src)]
        chat = [chats.is_chat(src, None) for src, _ in rows]
        for (src, _), is_chat, doc in zip(rows, chat, format.encode([text for _, text in rows], chat, offsets=True)):
            streams.setdefault(src, SourceStream([format.eot], is_chat)).add(doc, format.special_ids, max_tokens)
    if not streams:
        raise InputError(f"{documents}: no validation documents (shard.val_fraction={val_fraction}); "
                         "ingest more documents or raise shard.val_fraction")
    return dict(sorted(streams.items()))


@torch.no_grad()
def stream_nll(model: Transformer, tokens: list[int], device: torch.device,
               marked: list[bool] | None = None) -> tuple[float, float]:
    """Summed next-token NLL (nats) over a token stream, in non-overlapping block_size windows; and the
    same sum over the targets that `marked` (aligned with `tokens`) marks (0 without it)."""
    block = model.config.block_size
    t = torch.tensor(tokens, dtype=torch.long)
    n_windows = math.ceil((len(t) - 1) / block)
    x = torch.zeros(n_windows * block, dtype=torch.long)
    y = torch.full((n_windows * block,), -1, dtype=torch.long)  # padding targets are ignored
    m = torch.zeros(n_windows * block)
    x[:len(t) - 1], y[:len(t) - 1] = t[:-1], t[1:]
    if marked is not None:
        m[:len(t) - 1] = torch.tensor(marked[1:], dtype=torch.float32)
    x, y, m = x.view(n_windows, block), y.view(n_windows, block), m.view(n_windows, block)
    per_batch = max(1, WINDOW_TOKENS // block)
    total, masked = 0.0, 0.0
    for i in range(0, n_windows, per_batch):
        logits, _ = model(x[i:i + per_batch].to(device))
        nll = F.cross_entropy(logits.flatten(0, 1), y[i:i + per_batch].flatten().to(device), ignore_index=-1,
                              reduction="none")
        total += nll.sum().item()
        masked += (nll * m[i:i + per_batch].flatten().to(device)).sum().item()
    return total, masked


def _scores(nll: float, tokens: int, n_bytes: int) -> dict:
    loss = nll / tokens
    return {"loss": round(loss, 5), "ppl": round(math.exp(loss), 4),
            "bpb": round(nll / math.log(2) / n_bytes, 5), "tokens": tokens, "bytes": n_bytes}


def validation(model: Transformer, format, documents: Path, val_fraction: float,
               max_tokens: int | None, device: torch.device) -> dict:
    """{"overall": scores, "per_source": {source: scores + documents}}; scores = loss, ppl, bpb, tokens, bytes."""
    model.eval()
    per_source, nll_sum, answers = {}, 0.0, [0.0, 0]
    for src, stream in validation_streams(documents, val_fraction, format, max_tokens).items():
        nll, answer_nll = stream_nll(model, stream.tokens, device, stream.supervised if stream.chat else None)
        nll_sum += nll
        per_source[src] = {**_scores(nll, stream.targets, stream.bytes), "documents": stream.documents}
        if stream.answer_bytes:
            per_source[src]["assistant_bpb"] = round(answer_nll / math.log(2) / stream.answer_bytes, 5)
            answers = [answers[0] + answer_nll, answers[1] + stream.answer_bytes]
    overall = _scores(nll_sum, sum(s["tokens"] for s in per_source.values()),
                      sum(s["bytes"] for s in per_source.values()))
    overall["assistant_bpb"] = round(answers[0] / math.log(2) / answers[1], 5) if answers[1] else None
    return {"overall": overall, "per_source": per_source}


# ---------------------------------------------------------------- chat

def chat(model: Transformer, fmt, max_tokens: int, seed: int) -> list[dict]:
    """One generation per chat prompt, in the chat format `fmt`, with the bundle's default sampling; each judged
    by turn_problem (its `problem`)."""
    g = DEFAULT_GENERATION
    return samples(model, fmt, max_tokens, seed, CHAT_PROMPTS, temperature=g["temperature"], top_k=g["top_k"],
                   top_p=g["top_p"], batched=True)


# ---------------------------------------------------------------- the report

def _fenced(text: str) -> str:
    """A markdown code block that no backtick run inside `text` can close."""
    fence = "`" * max(3, max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _number(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def report(metrics: dict) -> str:
    """reports/eval.md: the numbers as tables, every chat generation, the HumanEval summary."""
    he = metrics["humaneval"]
    turns = sum(c["problem"] is None for c in metrics["chat"])
    lines = [f"# Evaluation of `{metrics['checkpoint']}`", "",
             "| measure | value |", "| --- | --- |",
             f"| validation loss | {metrics['val_loss']:.4f} |", f"| perplexity | {metrics['val_ppl']:.2f} |",
             f"| bits per byte | {metrics['val_bpb']:.4f} |",
             f"| assistant-turn bits per byte | {_number(metrics.get('val_assistant_bpb'))} |",
             f"| chat turn structure | {turns}/{len(metrics['chat'])} ({metrics['turn_rate']:.0%}) |"]
    if he:
        lines.append(f"| HumanEval pass@1 (greedy) | {percent(he['pass@1_greedy'])} |")
        lines += [f"| HumanEval pass@{k} ({he['samples']} samples) | {percent(v)} |" for k, v in he["pass@k"].items()]
    if metrics["comparison"]:
        lines += ["", *comparison_table(metrics["comparison"])]
    lines += ["", "## Validation by source", "",
              "| source | documents | tokens | bytes | loss | perplexity | bits/byte | assistant bits/byte |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [(f"| {src} | {s['documents']:,} | {s['tokens']:,} | {s['bytes']:,} | {s['loss']:.4f} | "
               f"{s['ppl']:.2f} | {s['bpb']:.4f} | {_number(s.get('assistant_bpb'))} |")
              for src, s in metrics["per_source"].items()]
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

def load_model(params: Params, layout: Layout, phase: str | None = None) -> tuple[Transformer, dict, object, torch.device]:
    """The latest checkpoint of `phase` (default eval.phase) and the chat format (with the tokenizer) it was
    trained with."""
    device = devices.pick(params.train.device)[0].torch_device()
    model, state = checkpoint.latest_model(layout.checkpoints / (phase or trained(params, params.eval.phase)), device,
                                          layout.tokenizer)
    return model, state, formats.load(layout.tokenizer, load_tokenizer(layout.tokenizer)), device


def teacher_of(params: Params, layout: Layout, student_state: dict,
               device: torch.device) -> tuple[Transformer, dict] | None:
    """The distilled student's teacher, as its checkpoints record it, when that is not eval.phase's model (measured
    anyway): model.init's checkpoint as it is (`distill.teacher: init`), or another phase's latest checkpoint."""
    phase = student_state["inputs"]["teacher"]["phase"]
    if phase == trained(params, params.eval.phase):
        return None
    if phase == "init":
        model, _ = distill.imported(params, layout)
        return model.to(device).eval(), {"path": params.model.init, "step": 0}
    return load_model(params, layout, phase)[:2]


def bundle_bytes(model: Transformer, tokenizer_dir: Path) -> tuple[int, int]:
    """The sizes of the bundle publish writes for this model (without its eval, lineage and HF export) and
    of its weights file, from one write."""
    with tempfile.TemporaryDirectory() as tmp:
        out = bundle.write(Path(tmp) / "bundle", model, tokenizer_dir, "")
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        return total, (out / "model.safetensors").stat().st_size


def generation_speeds(models: list[Transformer], fmt, rounds: int = 7) -> list[float]:
    """Greedy tokens/s of the server's decoder (model/decode.py) for each model, from the first chat prompt
    to the end of the shortest context, no stop (`decode_speeds`)."""
    prompt = fmt.tokenizer.encode(fmt.prompt(CHAT_PROMPTS[0]), add_special_tokens=False).ids
    n = min(model.config.block_size for model in models) - len(prompt)
    return [round(n / statistics.median(t), 1) for t in decode_times(models, prompt, n, rounds)]


def decode_times(models: list[Transformer], prompt: list[int], n: int, rounds: int = 7) -> list[list[float]]:
    """Seconds each model's decoder (model/decode.py) takes to generate n greedy tokens after `prompt` (no
    stop), `rounds` times each after one warm-up round. Rounds interleave the models (alternating which goes
    first), so machine noise hits them alike."""
    decoders = [Decoder(model) for model in models]
    times: list[list[float]] = [[] for _ in models]
    for r in range(rounds + 1):
        for i in (range(len(models)) if r % 2 else reversed(range(len(models)))):
            start = time.perf_counter()
            for _ in decoders[i].tokens(prompt, n, temperature=0.0):
                pass
            times[i].append(time.perf_counter() - start)
    return [t[1:] for t in times]


def measure(model: Transformer, state: dict, fmt, params: Params, layout: Layout,
            device: torch.device) -> tuple[dict, humaneval.HumanEvalRun | None]:
    """Every measure of one model (in the chat format `fmt`): its eval.json section, and the HumanEval result
    (None when disabled)."""
    cfg, timer = params.eval, Timer()
    part = Timer()
    val = validation(model, fmt, layout.documents, params.shard.val_fraction, cfg.val_max_tokens, device)
    timings = {"validation": part.seconds}
    part = Timer()
    samples = chat(model, fmt, cfg.chat_max_tokens, params.seed)
    timings["chat"] = part.seconds
    he = humaneval.evaluate(model, fmt, cfg.humaneval, params.seed) if cfg.humaneval.enabled else None
    if he:
        timings["humaneval generation"] = he.metrics["generation_seconds"]
        timings["humaneval execution"] = he.metrics["execution_seconds"]
    part = Timer()
    size, weights = bundle_bytes(model, layout.tokenizer)
    timings["size"] = part.seconds
    timings["total"] = timer.seconds
    overall = val["overall"]
    return {"checkpoint": state["path"], "step": state["step"], "quant": model.config.quant,
            "val_loss": overall["loss"], "val_ppl": overall["ppl"], "val_bpb": overall["bpb"],
            "val_assistant_bpb": overall["assistant_bpb"],
            "val_tokens": overall["tokens"], "val_bytes": overall["bytes"], "per_source": val["per_source"],
            "turn_rate": round(sum(s["problem"] is None for s in samples) / len(samples), 4), "chat": samples,
            "humaneval": he.metrics if he else None, "bundle_bytes": size,
            "weights_bytes": weights, "generation_tokens_per_s": None,  # set by run
            "timings": timings}, he


def _write_humaneval(reports: Path, prefix: str, he: humaneval.HumanEvalRun | None) -> list[Path]:
    """The samples and per-completion results files (empty when HumanEval is off: never stale)."""
    paths = [reports / f"{prefix}humaneval_samples.jsonl", reports / f"{prefix}humaneval_results.jsonl"]
    atomic.write_bytes(paths[0], _jsonl(he.samples if he else []))
    atomic.write_bytes(paths[1], _jsonl(he.results if he else []))
    return paths


def _summary(m: dict) -> str:
    he = m["humaneval"]
    parts = [f"val loss {m['val_loss']:.2f} (ppl {m['val_ppl']:.1f}, {m['val_bpb']:.2f} bits/byte"
             + (f", assistant turns {m['val_assistant_bpb']:.2f}" if m.get("val_assistant_bpb") else "") + ")",
             f"chat turns {sum(c['problem'] is None for c in m['chat'])}/{len(m['chat'])}"]
    if he:
        parts.append(f"HumanEval pass@1 {percent(he['pass@1_greedy'])} (greedy), sampled "
                     + ", ".join(f"pass@{k} {percent(v)}" for k, v in he["pass@k"].items()))
    return " · ".join(parts)


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg, timer = params.eval, Timer()
    model, state, fmt, device = load_model(params, layout)
    if cfg.humaneval.enabled:
        humaneval.check_config(cfg.humaneval, model.config.block_size)  # before the slow parts
    metrics, he = measure(model, state, fmt, params, layout, device)
    metrics = {**metrics, "phase": trained(params, cfg.phase), "student": None, "teacher": None, "comparison": None}
    reports = layout.root / "reports"
    outputs = [reports / "eval.md", *_write_humaneval(reports, "", he)]
    student_he, models, measured = None, [model], [metrics]
    if params.distill.enabled:
        student, student_state, _, _ = load_model(params, layout, "distill")
        metrics["student"], student_he = measure(student, student_state, fmt, params, layout, device)
        models.append(student)
        measured.append(metrics["student"])
        if teacher := teacher_of(params, layout, student_state, device):
            metrics["teacher"] = measure(*teacher, fmt, params, layout, device)[0]
            models.append(teacher[0])
            measured.append(metrics["teacher"])
    part = Timer()
    for m, speed in zip(measured, generation_speeds(models, fmt)):
        m["generation_tokens_per_s"] = speed
    metrics["timings"]["generation speed"] = part.seconds
    if metrics["student"]:
        metrics["comparison"] = comparison(metrics["teacher"] or metrics, metrics["student"])
    outputs += _write_humaneval(reports, "student_", student_he)
    metrics["seconds"] = timer.seconds
    atomic.write_bytes(outputs[0], report(metrics).encode("utf-8"))
    summary = f"eval: {_summary(metrics)}"
    if metrics["student"]:
        gap = metrics["comparison"]["gap"]
        summary += (f"; student ({metrics['student']['quant'] or 'float'}): {_summary(metrics['student'])}, "
                    f"gap {gap['val_loss']:+.3f} loss, {gap['val_bpb']:+.3f} bits/byte, "
                    f"{gap['bundle_size_ratio']:.1f}x smaller")
    summary += f" · {os.path.relpath(outputs[0])} [{timer.seconds:.1f}s]"
    return finish(layout, "eval", summary, metrics, outputs, params.tracking, params_dict(params))
