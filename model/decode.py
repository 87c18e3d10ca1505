"""The engine's decoding loop: one token per step through a KV cache, with the per-step overhead cut.

Why: a one-token forward of the models served here is a few matrix-vector products and many small ops,
and Transformer.forward (written for training) spends most of a step on the small ops (~70 per layer).
`Decoder.step` computes the same function for one new position in ~25 ops per layer:
- q/k/v from one matmul, the MLP's gate/up from another (fused weights, stored transposed [in, out],
  which MKL's matrix-vector products run faster at these shapes); the fused matrices are copies, so a
  Decoder holds a second set of the attention and MLP weights;
- RoPE as one small matmul over q and k, by a rotation matrix built once per step;
- no mask (one query sees every cached position), k/v written into the KVCache in place, the LM head on
  the new position only.
`Decoder.step_rows` is the same step for rows at different positions (the server's batch): a RoPE
rotation and cache position per row, and a mask hiding the cache beyond each row's position.
`Decoder.batch` runs it over prompts of any lengths at once (eval's HumanEval: 164 prompts of 164 lengths).

- Ternary models run the same loop on integer codes: each fused linear is a TernaryLinear called as `Rows`
  (model/ternary_linear.py), no float copy made, a loaded model's linears re-pointed at the fused codes.
  Which fused form a linear gets is FUSE, by its type; a model ternary in some linears only (a selection,
  model/config.py TernarySelection) fuses each type's linears alone and puts their outputs side by side.
- The prompt (prefill) runs through Transformer.forward into the same KVCache; the tests check that every
  step's logits equal Transformer.forward's. MoE layers call the model's own MoE module.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .generate import probabilities, race, sample_token
from .quant import BitLinear
from .ternary_linear import Rows, TernaryLinear
from .transformer import MLP, Block, KVCache, Transformer


def _rotate_half_matrix(d: int) -> torch.Tensor:
    """J with x @ J == cat(-x[d/2:], x[:d/2]), the rotate-half of model/transformer.apply_rope."""
    h, j = d // 2, torch.zeros(d, d)
    j[h:, :h] = -torch.eye(h)
    j[:h, h:] = torch.eye(h)
    return j


class _Matmul:
    """x @ w_t: a float model's fused linear (its weights stacked along their outputs, transposed)."""

    def __init__(self, w_t: torch.Tensor):
        self.w_t = w_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w_t


def _dense(*linears: nn.Linear) -> _Matmul:
    return _Matmul(torch.cat([linear.weight for linear in linears]).t().contiguous())


def _ternary(*linears: TernaryLinear) -> Rows:
    return (linears[0] if len(linears) == 1 else TernaryLinear.fuse(*linears)).rows()


def _qat(*linears: BitLinear) -> Rows:
    return _ternary(*map(TernaryLinear.from_bitlinear, linears))


# a linear's type -> how the decoder fuses linears of that type that share an input into one callable
FUSE: dict[type, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {
    nn.Linear: _dense, BitLinear: _qat, TernaryLinear: _ternary}

Linear = Callable[[torch.Tensor], torch.Tensor]


class _Side:
    """Linears of different types sharing an input (a model ternary in some roles only): each fused alone, their
    outputs side by side."""

    def __init__(self, *parts: Linear):
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def fuse(*linears: nn.Module) -> Linear:
    """One callable computing the linears' outputs side by side: FUSE of their type, or of each type's run."""
    if len({type(m) for m in linears}) == 1:
        return FUSE[type(linears[0])](*linears)
    return _Side(*(FUSE[type(m)](m) for m in linears))


@dataclass
class _Layer:
    block: Block
    qkv: Linear               # E -> (H + 2 Hkv) d: wq, wk, wv side by side
    wo: Linear                # H d -> E
    gate_up: Linear | None    # E -> 2 F: w1, w3 side by side (None: an MoE layer)
    down: Linear | None       # F -> E

    @classmethod
    def of(cls, block: Block) -> _Layer:
        a, mlp = block.attn, block.mlp
        dense = isinstance(mlp, MLP)
        return cls(block, fuse(a.wq, a.wk, a.wv), fuse(a.wo), fuse(mlp.w1, mlp.w3) if dense else None,
                   fuse(mlp.w2) if dense else None)


class Decoder:
    def __init__(self, model: Transformer):
        if model.training:
            raise ValueError("Decoder needs a model in eval mode")
        self.model, c = model, model.config
        self.n_head, self.n_kv, self.head_dim = c.n_head, c.n_kv_heads, c.head_dim
        dtype = model.tok_emb.weight.dtype
        with torch.no_grad():
            self.layers = [_Layer.of(block) for block in model.blocks]
        cos, sin = model.rope_cos.to(dtype), model.rope_sin.to(dtype)  # [block_size, d/2]
        self.cos2, self.sin2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        self.rotate_half = _rotate_half_matrix(c.head_dim).to(cos.device, dtype)

    def _rotation(self, pos: int | torch.Tensor) -> torch.Tensor:
        """R with x @ R == apply_rope(x) at position `pos`; positions [B]: one R per row, [B, d, d]."""
        return torch.diag_embed(self.cos2[pos]) + self.rotate_half * self.sin2[pos][..., None, :]

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, V] after one new token per row (`tokens`: [B] ids) at position cache.pos."""
        pos = cache.pos

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.k[i, :, :, pos], cache.v[i, :, :, pos] = k, v
            return F.scaled_dot_product_attention(q, cache.k[i, :, :, :pos + 1], cache.v[i, :, :, :pos + 1],
                                                  enable_gqa=True)

        logits = self._forward(tokens, self._rotation(pos), attend)
        cache.pos += 1
        return logits

    def step_rows(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, V] after one new token per row, row r's at its own position positions[r].

        The rows are the cache's first B; cache.pos is not used (nor advanced): the caller keeps the positions.
        """
        B, end = tokens.size(0), int(positions.max()) + 1
        rows = torch.arange(B, device=tokens.device)
        visible = (torch.arange(end, device=tokens.device) <= positions[:, None])[:, None, None]  # [B, 1, 1, end]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = cache.k[i], cache.v[i]
            keys[rows, :, positions], values[rows, :, positions] = k, v
            return F.scaled_dot_product_attention(q, keys[:B, :, :end], values[:B, :, :end], attn_mask=visible,
                                                  enable_gqa=True)

        return self._forward(tokens, self._rotation(positions), attend)

    def _forward(self, tokens: torch.Tensor, rotation: torch.Tensor, attend) -> torch.Tensor:
        """The layers for one new token per row; `attend(layer, q, k, v)` stores the new k, v [B, Hkv, d] and
        returns the attention of q [B, H, 1, d] over the cache."""
        m, B = self.model, tokens.size(0)
        H, Hkv, d = self.n_head, self.n_kv, self.head_dim
        x = F.embedding(tokens, m.tok_emb.weight)  # [B, E]
        for i, layer in enumerate(self.layers):
            block, attn = layer.block, layer.block.attn
            qkv = layer.qkv(_norm(x, block.attn_norm))
            q = attn.q_norm(qkv[:, :H * d].view(B, H, d)) @ rotation
            k = attn.k_norm(qkv[:, H * d:(H + Hkv) * d].view(B, Hkv, d)) @ rotation
            y = attend(i, q[:, :, None], k, qkv[:, (H + Hkv) * d:].view(B, Hkv, d))
            x = x + layer.wo(y.view(B, H * d))
            h = _norm(x, block.mlp_norm)
            if layer.gate_up is None:  # MoE (never ternary): the model's own module
                x = x + block.mlp(h[:, None])[0][:, 0]
            else:
                gate, up = layer.gate_up(h).chunk(2, dim=-1)
                x = x + layer.down(F.silu(gate) * up)
        return F.linear(_norm(x, m.norm), m.lm_head.weight).float()

    def prefill(self, prompt: Sequence[int], max_len: int | None = None) -> tuple[torch.Tensor, KVCache]:
        """The prompt (1 to block_size - 1 tokens) through Transformer.forward: the next token's logits [V]
        and the cache it filled (of `max_len` positions; default block_size)."""
        block = self.model.config.block_size
        if not 0 < len(prompt) < block:
            raise ValueError(f"prompt must hold 1 to {block - 1} tokens (block_size - 1); got {len(prompt)}")
        cache = KVCache.for_model(self.model, max_len=max_len)
        return self.model(torch.tensor([list(prompt)], device=self.cos2.device), cache=cache)[0][0, -1], cache

    @torch.inference_mode()
    def tokens(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, stop: Sequence[int] = (),
               seed: int | None = None) -> Iterator[int]:
        """model/generate.py's `generate` for one sequence, each new token yielded as soon as it is drawn.

        Stop iterating (or close the iterator) and the work ends there. The prompt must leave the cache
        room for one new token (1 to block_size - 1 tokens).
        """
        logits, cache = self.prefill(prompt)
        generator, stop = seeded(seed, self.cos2.device), set(stop)
        room = min(max_new_tokens, self.model.config.block_size - len(prompt))
        for n in range(1, room + 1):
            token = sample_token(logits, temperature, top_k, top_p, generator)
            if token in stop:
                return
            yield token
            if n < room:
                logits = self.step(torch.tensor([token], device=self.cos2.device), cache)[0]


    @torch.inference_mode()
    def batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperatures: Sequence[float],
              seeds: Sequence[int], top_k: int | None = None, top_p: float | None = None,
              stop: Sequence[int] = ()) -> list[list[int]]:
        """The new tokens after each prompt (any lengths, 1 to block_size - 1 tokens), decoded together.

        Each prompt is prefilled alone and its k/v copied into one cache of the batch's rows; then every step
        is one `step_rows` over the cache's rows, each at its own position (a finished row stays, frozen, until
        half have finished: then the rest are copied together, so copies cost what a few steps do). Row r samples at
        temperatures[r] (0: greedy) from its own generator seeded with seeds[r], so its tokens do not depend
        on its batch; it stops at its first `stop` token (not returned), after max_new_tokens, or at the
        context's end."""
        device, block = self.cos2.device, self.model.config.block_size
        rooms = [min(max_new_tokens, block - len(p)) for p in prompts]
        pool = KVCache.for_model(self.model, len(prompts), max(len(p) + r for p, r in zip(prompts, rooms)))
        first = []
        for r, prompt in enumerate(prompts):
            logits, cache = self.prefill(prompt, max_len=len(prompt))
            pool.k[:, r, :, :len(prompt)], pool.v[:, r, :, :len(prompt)] = cache.k[:, 0], cache.v[:, 0]
            first.append(logits)
        logits, stop = torch.stack(first), set(stop)
        temps = torch.tensor([t if t > 0 else 1.0 for t in temperatures], device=device)[:, None]
        greedy = torch.tensor([t == 0 for t in temperatures], device=device)
        generators = [seeded(s, device) for s in seeds]
        positions = torch.tensor([len(p) for p in prompts], device=device)
        rows = list(range(len(prompts)))  # the prompt of each cache row
        out, going = [[] for _ in prompts], [True] * len(prompts)
        while True:
            tokens = logits.argmax(-1)
            if not bool(greedy.all()):
                drawn = race(probabilities(logits, temps, top_k, top_p), [generators[r] for r in rows])
                tokens = torch.where(greedy, tokens, drawn)
            for i, (r, token) in enumerate(zip(rows, tokens.tolist())):
                if going[i]:
                    going[i] = token not in stop
                    if going[i]:
                        out[r].append(token)
                        going[i] = len(out[r]) < rooms[r]
            if not any(going):
                return out
            positions = positions + torch.tensor(going, device=device)  # a finished row stays where it is
            if sum(going) <= len(rows) // 2:  # drop the finished rows: copy the others together
                keep = torch.tensor([i for i, g in enumerate(going) if g], device=device)
                pool.k, pool.v = pool.k[:, keep], pool.v[:, keep]
                rows, going = [rows[i] for i in keep.tolist()], [True] * len(keep)
                tokens, positions, greedy, temps = tokens[keep], positions[keep], greedy[keep], temps[keep]
            logits = self.step_rows(tokens, positions - 1, pool)


def seeded(seed: int | None, device: torch.device) -> torch.Generator | None:
    """The generator of a seeded draw (None: torch's global one)."""
    return torch.Generator(device).manual_seed(seed) if seed is not None else None


def _norm(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
