"""The shape of a model, as two frozen dataclasses.

A config is plain data: it is validated once, here, and then read by `Transformer.__init__` (which passes
plain numbers to the layers, not the config) and by `model.info` (which counts parameters and FLOPs
without building anything). `to_dict`/`from_dict` give a JSON round trip so a checkpoint can carry the
exact shape it was trained with.

The derived sizes live here so the model and the analytic counts can never disagree about them. Three
fields may be left None and are then resolved once, at construction, to the value our rules give:
`n_kv_heads` (n_head: MHA), `head_dim` (n_embd // n_head) and `ffn_hidden` (the SwiGLU width from ffn_mult
and multiple_of); after that each is a plain int under that one name. Give them outright for shapes our
rules do not produce, e.g. an imported Qwen3-0.6B: 1024 wide, 16 heads of 128, SwiGLU hidden 3072. Because
they are resolved, `dataclasses.replace` of n_embd, n_head, ffn_mult or multiple_of keeps the old widths:
build a new config instead (`presets.preset` does).

params.yaml's `model:` section is checked against these classes (tasks/common/config.py builds its schema
from their fields), so every rule here is also a params rule, reported at load time under the key
`FieldError.field` names.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


class FieldError(ValueError):
    """A bad value, named by the field it is about (`n_kv_heads`, `moe.top_k`); str(): "field: why"."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


def _check(ok: bool, field: str, msg: str) -> None:
    if not ok:
        raise FieldError(field, msg)


def ffn_hidden(mult: float, n_embd: int, multiple_of: int) -> int:
    """LLaMA's rounding: truncate mult * n_embd, then round up to a multiple of `multiple_of`.

    Truncating first makes the usual 2.667 ("8/3") give 2048 for 768, not 2112.
    """
    return multiple_of * math.ceil(int(mult * n_embd) / multiple_of)


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int
    top_k: int
    capacity_factor: float = 1.25   # per-expert cap: ceil(capacity_factor * top_k * tokens / n_experts)
    aux_loss_coef: float = 0.01     # Switch-style load-balancing loss weight
    expert_ffn_mult: float | None = None  # expert hidden width / n_embd (None: the model's ffn_mult)
    every: int = 1                  # MoE MLP in every `every`-th layer (the others dense); 1 = all

    def __post_init__(self):
        _check(self.n_experts >= 1, "moe.n_experts", f"must be >= 1, got {self.n_experts}")
        _check(1 <= self.top_k <= self.n_experts, "moe.top_k",
               f"must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        _check(self.capacity_factor > 0, "moe.capacity_factor", f"must be > 0, got {self.capacity_factor}")
        _check(self.aux_loss_coef >= 0, "moe.aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")
        _check(self.expert_ffn_mult is None or self.expert_ffn_mult > 0, "moe.expert_ffn_mult",
               f"must be > 0 or None, got {self.expert_ffn_mult}")
        _check(self.every >= 1, "moe.every", f"must be >= 1, got {self.every}")

    @classmethod
    def from_dict(cls, d: dict) -> MoEConfig:
        _check_keys(d, cls, "moe")
        return cls(**d)


ROLES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # a block's linears: attention q/k/v/o, MLP gate/down/up


@dataclass(frozen=True)
class TernarySelection:
    """Which block linears a `quant: ternary` model holds ternary; the others, like embeddings, norms and the
    head, stay float. By role and by block: `skip_first` and `skip_last` blocks keep every linear float."""
    roles: tuple[str, ...] = ROLES
    skip_first: int = 0
    skip_last: int = 0

    def __post_init__(self):
        object.__setattr__(self, "roles", tuple(self.roles))  # from JSON or YAML: a list
        _check(bool(self.roles) and len(set(self.roles)) == len(self.roles), "ternary.roles",
               f"must name one or more of {', '.join(ROLES)} once each, got {list(self.roles)}")
        for role in self.roles:
            _check(role in ROLES, "ternary.roles", f"{role!r} is not a block linear (one of {', '.join(ROLES)})")
        _check(self.skip_first >= 0 and self.skip_last >= 0, "ternary.skip_first",
               f"skip_first and skip_last must be >= 0, got {self.skip_first} and {self.skip_last}")

    def holds(self, layer: int, n_layer: int, role: str) -> bool:
        """Is block `layer`'s linear `role` ternary?"""
        return role in self.roles and self.skip_first <= layer < n_layer - self.skip_last

    @classmethod
    def from_dict(cls, d: dict) -> TernarySelection:
        _check_keys(d, cls, "ternary")
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    n_kv_heads: int | None = None   # key/value heads (GQA), dividing n_head; None: n_head (MHA)
    ffn_mult: float = 2.667         # SwiGLU hidden = ffn_hidden(ffn_mult, n_embd, multiple_of)
    multiple_of: int = 64
    qk_norm: bool = False
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    moe: MoEConfig | None = None
    quant: str | None = None        # "ternary": block linears are BitNet b1.58 BitLinear (model/quant.py)
    head_dim: int | None = None     # per-head width; None: n_embd // n_head (Qwen3 sets it: n_head * it != n_embd)
    ffn_hidden: int | None = None   # SwiGLU hidden width; None: ffn_hidden(ffn_mult, n_embd, multiple_of)
    ternary: TernarySelection | None = None  # with quant "ternary": which block linears (None: all of them)

    def __post_init__(self):
        for f in ("vocab_size", "n_layer", "n_embd", "n_head", "block_size", "multiple_of"):
            _check(getattr(self, f) >= 1, f, f"must be >= 1, got {getattr(self, f)}")
        _check(self.ffn_mult > 0, "ffn_mult", f"must be > 0, got {self.ffn_mult}")
        if self.head_dim is None:
            _check(self.n_embd % self.n_head == 0, "n_embd",
                   f"{self.n_embd} is not divisible by n_head={self.n_head}")
            _check(self.n_embd // self.n_head % 2 == 0, "n_head",
                   f"head_dim = n_embd / n_head = {self.n_embd // self.n_head} must be even for RoPE")
        else:
            _check(self.head_dim >= 2 and self.head_dim % 2 == 0, "head_dim",
                   f"must be even and >= 2 (RoPE rotates pairs), got {self.head_dim}")
        _check(self.ffn_hidden is None or self.ffn_hidden >= 1, "ffn_hidden",
               f"must be >= 1 or None, got {self.ffn_hidden}")
        _check(self.n_kv_heads is None or (self.n_kv_heads >= 1 and self.n_head % self.n_kv_heads == 0),
               "n_kv_heads", f"{self.n_kv_heads} must be >= 1 and divide n_head={self.n_head}")
        resolved = {"n_kv_heads": self.n_head, "head_dim": self.n_embd // self.n_head,
                    "ffn_hidden": ffn_hidden(self.ffn_mult, self.n_embd, self.multiple_of)}
        for name, value in resolved.items():  # frozen: set once, here
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        _check(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")
        _check(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        _check(self.moe is None or isinstance(self.moe, MoEConfig), "moe",
               f"must be a MoEConfig or None, got {type(self.moe).__name__}")
        _check(self.quant in (None, "ternary"), "quant", f"must be 'ternary' or None, got {self.quant!r}")
        _check(self.quant is None or self.moe is None, "quant",
               f"{self.quant!r} is not supported with moe (MoE experts are not ternary yet)")
        if isinstance(self.ternary, dict):  # from params or JSON: the selection as a mapping
            object.__setattr__(self, "ternary", TernarySelection.from_dict(self.ternary))
        _check(self.ternary is None or isinstance(self.ternary, TernarySelection), "ternary",
               f"must be a TernarySelection or None, got {type(self.ternary).__name__}")
        _check(self.ternary is None or self.quant == "ternary", "ternary", "selects linears of a quant: ternary "
               "model; set quant: ternary too")
        if self.ternary is not None:
            _check(self.ternary.skip_first + self.ternary.skip_last < self.n_layer, "ternary.skip_last",
                   f"skip_first + skip_last = {self.ternary.skip_first + self.ternary.skip_last} leaves none of the "
                   f"{self.n_layer} blocks ternary")
        if self.quant == "ternary":  # 2-bit codes go 4 to a byte along a row (the bundle, the CPU and GPU kernels)
            inputs = {**dict.fromkeys(("wq", "wk", "wv", "w1", "w3"), self.n_embd), "wo": self.n_head * self.head_dim,
                      "w2": self.ffn_hidden}
            for role in (self.ternary or TernarySelection()).roles:
                _check(inputs[role] % 4 == 0, "ternary.roles" if self.ternary else "quant",
                       f"{role} has rows of {inputs[role]} weights; a ternary linear packs 4 codes a byte, so its rows "
                       f"need a multiple of 4: leave {role} float (ternary.roles)")

    def is_ternary(self, layer: int, role: str) -> bool:
        """Is block `layer`'s linear `role` (ROLES) a ternary BitLinear in this model?"""
        return self.quant == "ternary" and (self.ternary is None or self.ternary.holds(layer, self.n_layer, role))

    # ------------------------------------------------------------------ derived sizes
    @property
    def expert_hidden(self) -> int:
        mult = self.moe.expert_ffn_mult if self.moe and self.moe.expert_ffn_mult else self.ffn_mult
        return ffn_hidden(mult, self.n_embd, self.multiple_of)

    def is_moe_layer(self, i: int) -> bool:
        """Layer i (0-based) is MoE when (i + 1) % every == 0: with every=2 the 2nd, 4th, ... layers."""
        return self.moe is not None and (i + 1) % self.moe.every == 0

    # ------------------------------------------------------------------ JSON round trip
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of to_dict; an unknown key is an error (a typo must not silently become a default). Reads
        the config.json of checkpoints written before head_dim and ffn_hidden were fields (RENAMED)."""
        d = {RENAMED.get(k, k): v for k, v in d.items()}
        _check_keys(d, cls, "model")
        if isinstance(d.get("moe"), dict):
            d["moe"] = MoEConfig.from_dict(d["moe"])
        return cls(**d)


RENAMED = {"head_size": "head_dim", "ffn_size": "ffn_hidden"}  # ModelConfig's old field -> new (old checkpoints)


def _check_keys(d: dict, kind: type, name: str) -> None:
    unknown = set(d) - {f.name for f in dataclasses.fields(kind)}
    _check(not unknown, name, f"unknown field(s) {sorted(unknown)}")
