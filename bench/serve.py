"""Benchmark: generation speed of our serving engine against `transformers` `generate`, and under load.

1. Single stream. The same model twice: our bundle through `serve.engine.Engine.stream` (KV cache,
   incremental detokenization included) and its Hugging Face export (`tasks/publish/hf_export.py`) loaded by
   `transformers.AutoModelForCausalLM` and run with `generate` — same prompt, greedy, the same number of
   new tokens (stop tokens off on both sides, so both produce exactly that many). Interleaved rounds
   after a warm-up, alternating which goes first; median tokens/s and the ratio. Both must produce the
   same tokens (a check that they compute the same thing).
2. Concurrency. A real server (`serve.app.create_app` under uvicorn on loopback) and 1, 8 and 32
   concurrent streaming clients (`/v1/completions`, stream: true): p50/p95 time to first token and the
   aggregate tokens/s. The named peer is the same `transformers` `generate` serving those requests one
   at a time (its single-stream tokens/s from part 1), the ratio is ours/peer.

The model is a published bundle and its `hf/` export (`--bundle dist/chat-pipeline`, what `make demo`
publishes), or — since speed does not depend on the weights when the length is fixed — a freshly
initialised preset (default chat-7m, the seed chat config) with the tokenizer of the last `make demo`.

    python bench/serve.py                      # chat-7m, 200 new tokens, clients 1, 8, 32, one torch thread
    python bench/serve.py --bundle dist/chat-pipeline
    python bench/serve.py --threads 2          # both sides on two threads
    python bench/serve.py --preset nano-125m --new-tokens 100
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer  # noqa: E402
from chatpipe.serve.app import create_app  # noqa: E402
from chatpipe.serve.engine import Engine  # noqa: E402
from chatpipe.serve.sampling import Sampling  # noqa: E402
from chatpipe.serve.server import running  # noqa: E402
from chatpipe.tasks.common import bundle  # noqa: E402
from chatpipe.tasks.publish import hf_export  # noqa: E402

PROMPT = "<|user|> Can you recommend a good book about the sea?\n<|assistant|>"


def tokenizer_dir(path: Path | None) -> Path:
    for candidate in ([path] if path else [ROOT / "artifacts" / "tokenizer", ROOT / "dist" / "chat-pipeline"]):
        if (candidate / "tokenizer.json").exists():
            return candidate
    sys.exit("bench/serve.py: no tokenizer.json; run `make demo` first or pass --tokenizer DIR")


def build(preset_name: str, tok_dir: Path, out: Path) -> tuple[bundle.Bundle, Path]:
    """A bundle of a fresh `preset_name` model whose answers never stop early, and its HF export."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    model = Transformer(preset(preset_name, vocab_size=vocab)).eval()
    path = bundle.write(out / "bundle", model, tok_dir, f"# {preset_name} (benchmark)\n", generation={"stop": []})
    return bundle.load(path), hf_export.export(model, tok_dir, out / "hf", generation={"stop": []})


def ours(engine: Engine, prompt: list[int], n: int) -> tuple[float, str]:
    start = time.perf_counter()
    *pieces, finish = engine.stream(prompt, Sampling(max_tokens=n, temperature=0, top_p=None, top_k=None))
    seconds = time.perf_counter() - start
    assert finish.completion_tokens == n, finish
    return seconds, "".join(pieces)


def peer(hf, prompt: list[int], n: int, tokenizer) -> tuple[float, str]:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] - len(prompt) == n, out.shape
    return seconds, tokenizer.decode(out[0, len(prompt):].tolist(), skip_special_tokens=False)  # as served


def single_stream(engine: Engine, hf, prompt: list[int], n: int, rounds: int) -> dict:
    runners = {"ours": lambda k: ours(engine, prompt, k),
               "transformers": lambda k: peer(hf, prompt, k, engine.bundle.tokenizer)}
    for run in runners.values():
        run(8)  # warm-up
    times, texts = {name: [] for name in runners}, {}
    for r in range(rounds):
        for name in list(runners)[::1 if r % 2 == 0 else -1]:
            seconds, texts[name] = runners[name](n)
            times[name].append(seconds)
    same = texts["ours"] == texts["transformers"]
    tps = {name: n / statistics.median(ts) for name, ts in times.items()}
    return {"new_tokens": n, "rounds": rounds, "ours_tok_s": tps["ours"], "transformers_tok_s": tps["transformers"],
            "ratio": tps["ours"] / tps["transformers"], "same_greedy_text": same,
            "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()}}


async def clients(url: str, model: str, n_clients: int, new_tokens: int) -> dict:
    import httpx

    body = {"model": model, "prompt": PROMPT, "max_tokens": new_tokens, "temperature": 0, "stream": True}

    async def one(client: httpx.AsyncClient) -> tuple[float, int]:
        start, first, pieces = time.perf_counter(), None, 0
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    if json.loads(line[6:])["choices"][0].get("text"):
                        first = first or time.perf_counter() - start
                        pieces += 1
        return first, pieces

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(client) for _ in range(n_clients)))
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {"clients": n_clients, "ttft_p50_s": statistics.median(ttft),
            "ttft_p95_s": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            "aggregate_tok_s": n_clients * new_tokens / wall, "wall_s": wall}


def published(path: Path) -> tuple[bundle.Bundle, Path]:
    """A bundle from `chatpipe publish` (with its hf/ export), its stop markers off for fixed-length runs."""
    b = bundle.load(path)
    if not (path / "hf" / "config.json").exists():
        sys.exit(f"bench/serve.py: {path}/hf: no Hugging Face export (publish.hf_export: true)")
    b.generation = {**b.generation, "stop": []}
    return b, path / "hf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="chat-7m")
    ap.add_argument("--bundle", type=Path, default=None, help="a published bundle instead of a fresh preset")
    ap.add_argument("--tokenizer", type=Path, default=None, help="directory with tokenizer.json")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--client-tokens", type=int, default=64, help="new tokens per streaming client")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        b, hf_dir = published(args.bundle) if args.bundle else build(args.preset, tokenizer_dir(args.tokenizer), Path(tmp))
        label = b.name if args.bundle else args.preset
        counts = [int(c) for c in args.clients.split(",")]
        engine = Engine(b, max_concurrent=max(counts), queue_timeout=600)
        hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        prompt = engine.encode(PROMPT)
        n = min(args.new_tokens, b.config.block_size - len(prompt))
        single = single_stream(engine, hf, prompt, n, args.rounds)
        print(f"single stream, {n} new tokens: ours {single['ours_tok_s']:.0f} tok/s, transformers "
              f"{single['transformers_tok_s']:.0f} tok/s → {single['ratio']:.2f}× (same text: {single['same_greedy_text']})")
        load = []
        with running(create_app(engine)) as url:
            asyncio.run(clients(url, b.name, 1, 8))  # warm-up: the batcher's thread and KV pool start on first use
            for c in counts:
                row = asyncio.run(clients(url, b.name, c, args.client_tokens))
                row["ratio_vs_transformers_serial"] = row["aggregate_tok_s"] / single["transformers_tok_s"]
                load.append(row)
                print(f"{c:>3} clients: TTFT p50 {row['ttft_p50_s'] * 1000:.0f} ms, p95 {row['ttft_p95_s'] * 1000:.0f} ms; "
                      f"{row['aggregate_tok_s']:.0f} tok/s in all → {row['ratio_vs_transformers_serial']:.2f}× "
                      "transformers serving them one at a time")
        engine.close()
    result = {"benchmark": "serve", "date": dt.date.today().isoformat(), "model": label,
              "params": b.model.num_params(), "config": b.config.to_dict(), "device": "cpu", "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "single_stream": single, "concurrency": load}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['date']}-serve-{label}-cpu-{args.threads}t.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {path}")


if __name__ == "__main__":
    main()
