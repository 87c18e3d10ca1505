"""One whole training step (forward, loss, backward, clip, AdamW) compiled for Vulkan with IREE.

Why: PyTorch has no Vulkan training backend (`torch.is_vulkan_available()` is False in the CPU wheels), yet
Vulkan is what many laptops' and CI machines' GPUs speak (Intel Iris Xe, AMD, and Mesa's lavapipe on a
plain CPU box). IREE compiles a traced PyTorch graph to SPIR-V, so the *same* `model.Transformer` that the
CPU/CUDA loop trains can train here, without a second model implementation.

The recipe (checked on IREE 3.13 with Mesa's lavapipe; tests/train/test_vulkan.py holds it to torch's numbers):
  1. `make_fx` (with `core_aten_decompositions()`, under `sdpa_kernel(SDPBackend.MATH)`) traces
     `train_step(*params, *m, *v, lr, bias_corr1, bias_corr2, ids_i32, targets_i32)
         -> (loss, grad_norm, *params', *m', *v')`,
     where the gradients come from `torch.func.grad_and_value` over `torch.func.functional_call`, the clip
     is `clip_grad_norm_`'s math and the update is `torch.optim.AdamW`'s (decay on >= 2-D params only).
     lr and the bias corrections are inputs, so the schedule changes per step without recompiling.
  2. `iree.turbine.aot.export(gm, args=..., strict_export=False)` turns the graph into MLIR.
  3. `iree.compiler.compile_str(..., target_backends=["vulkan-spirv"])` with the flags below.
  4. `iree.runtime` runs it on the Vulkan device; params, m and v stay resident as DeviceArrays: each
     step's outputs are the next step's inputs, and only the two scalars come back to the host.

Workarounds, all required on iree 3.13 + lavapipe (each seen failing without it; docs/LOG.md, issue 7):
  - to_host(): the runtime imports an unaligned numpy buffer that Vulkan rejects (minImportedHostPointer
    Alignment 4096); we hide IMPORTABLE from `query_buffer_compatibility` while *this module* reads back
    (`_host_copy`, patched and restored around each read, not process-wide), so it uses a staging buffer.
  - The baseline Vulkan target has no Int64: `--iree-input-demote-i64-to-i32`; then an i64 *input* is
    silently misread, so ids/targets enter as int32 and are cast to int64 inside the graph.
  - The baseline target silently miscompiles boolean logic (SDPA's safe softmax): declare the Int8/Int16
    and 8/16-bit storage features that lavapipe and real GPUs have (`TARGET_FEATURES`).
  - Never give make_fx aliased example inputs: m and v are distinct zero tensors, else their placeholders
    merge and the step goes wrong from step 3 on.
  - IREE's HAL allows at most 32 bindings per dispatch, and IREE fused the `torch.stack` of all per-tensor
    norms into one dispatch binding every one: from 32 parameter tensors on the module did not load
    ("binding count 58 > 32" on an H200 at chat-7m's 57; lavapipe: "declares 58 storage buffers, exceeding
    device limit 32"). `_grad_norm` adds the per-tensor sums of squares NORM_FAN_IN at a time instead.
  - Lavapipe ends a shader invocation's loops after 65535 iterations in all (gallivm's
    LP_MAX_TGSI_LOOP_ITERATIONS), silently, and IREE (baseline target: no subgroups) runs a full reduction
    or an accumulating scatter as one invocation looping over everything. Two ops hit that from chat-7m's
    sizes on (the grad norm came out low, docs/LOG.md; the self-check refused): a > 65535-element gradient's norm (only its
    first 65535 elements were summed) and the embedding's gradient (a scatter-add of every token's row:
    1024 tokens x 64 wide already lost rows). So `_sum_of_squares` sums NORM_CHUNK elements per row, then
    the rows' sums; and `_embedding_dense_backward` is a one-hot matmul. Both are also far more parallel
    on a real GPU than one thread walking 1M floats. (Other loops stay short at our sizes: a matmul's
    k-loop over the batch's tokens is tiled; `self_check` is what would catch one that is not.)
  (Also: the real-GPU targets `rdna*`/`ampere`... assume subgroup 32/64 and give wrong numbers on lavapipe,
  whose subgroup is 8, so we compile for the baseline target plus features.)

`VulkanTrainer.self_check` runs one step on both Vulkan and eager torch CPU and refuses (TrainingError)
on a mismatch, so a miscompile cannot silently train garbage. `VulkanStep` (at the end) plugs the trainer
into the trainer as its step (tasks/train/backends/offload.py).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.common.errors import ConfigError, TrainingError
from chatpipe.tasks.common.hashing import hash_tree

if TYPE_CHECKING:
    from chatpipe.tasks.train.backends.offload import StepContext

log = logging.getLogger("chatpipe.vulkan")

TARGET_FEATURES = ("spirv:v1.3,cap:Shader,cap:Int8,cap:Int16,cap:StorageBuffer8BitAccess,"
                   "cap:StorageBuffer16BitAccess,ext:SPV_KHR_8bit_storage,ext:SPV_KHR_16bit_storage,"
                   "ext:SPV_KHR_storage_buffer_storage_class")
COMPILE_FLAGS = ("--iree-input-demote-i64-to-i32", f"--iree-vulkan-target-features={TARGET_FEATURES}")
CACHE_DIR = Path(tempfile.gettempdir()) / "chatpipe-iree-cache"
NORM_CHUNK = 1024    # elements per sum in the grad norm (lavapipe ends a shader's loops at 65535 iterations)
NORM_FAN_IN = 16     # per-tensor sums added per dispatch (IREE: <= 32 bindings per dispatch)

# self_check tolerances. Measured on lavapipe (tests/train/test_vulkan.py): loss <= 2.3e-7, grad norm <= 7.1e-7,
# weights <= 2.4e-3 x lr, so >= 20x headroom; a wrong lr or m/v wiring is off by ~lr or more.
LOSS_TOL = 1e-4        # relative
GRAD_NORM_TOL = 1e-3   # relative
UPDATE_TOL = 0.05      # max |w_vulkan - w_cpu| after the check's steps, in units of lr (a step moves a weight ~lr)

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())  # Mesa's WSI noise otherwise

_config = None  # one iree.runtime.Config (instance + Vulkan device) per process
NEEDS_EXTRA = "the Vulkan training step needs the vulkan extra (IREE): pip install 'chat-pipeline[vulkan]'"


def _iree(module: str):
    """`iree.<module>` imported on first use (IREE is the optional vulkan extra): ConfigError if not installed."""
    try:
        return importlib.import_module(f"iree.{module}")
    except ModuleNotFoundError as e:
        if e.name is None or not (e.name == "iree" or e.name.startswith("iree.")):
            raise  # something IREE itself needs is missing: a broken install, not a missing extra
        raise ConfigError(NEEDS_EXTRA) from None


def _runtime():
    return _iree("runtime")


def _vulkan_config():
    global _config
    if _config is None:
        _config = _runtime().Config("vulkan")
    return _config


@functools.cache  # a process's Vulkan devices do not change; devices.pick asks more than once
def _devices() -> list[dict]:
    try:
        rt = _runtime()
        if "vulkan" not in rt.query_available_drivers():
            return []
        return list(rt.get_driver("vulkan").query_available_devices())
    except Exception:  # noqa: BLE001 - no IREE, no loader, no ICD: all mean "not available"
        return []


def installed() -> bool:
    """IREE's compiler and turbine are there: looked up, not imported (importing them takes seconds)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("iree.compiler", "iree.turbine"))
    except ModuleNotFoundError:  # no `iree` package at all
        return False


def available() -> bool:
    """IREE (compiler + runtime + turbine) is installed and a Vulkan device is present.

    The compiler and turbine are looked up, not imported (`auto` device picks ask this on every run);
    the runtime is imported to list the devices."""
    return installed() and bool(_devices())


def device_name() -> str:
    """The first Vulkan device's name, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits)' ('' when none).

    IREE reports 'NAME (DRIVER INFO)'; the trailing driver-info group is dropped.
    """
    devices = _devices()
    if not devices:
        return ""
    name = devices[0]["name"].strip()
    if name.endswith(")"):  # strip the last balanced '(...)' group: the driver info
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                if name[:i].strip():
                    name = name[:i].strip()
                break
    return name


@contextlib.contextmanager
def _no_host_import():
    """The to_host() workaround, scoped: hide IMPORTABLE so the runtime copies via a staging buffer."""
    rt = _runtime()
    original = rt.HalAllocator.query_buffer_compatibility
    rt.HalAllocator.query_buffer_compatibility = \
        lambda self, **kw: original(self, **kw) & ~int(rt.BufferCompatibility.IMPORTABLE)
    try:
        yield
    finally:
        rt.HalAllocator.query_buffer_compatibility = original


def _host_copy(arrays) -> list[np.ndarray]:
    with _no_host_import():
        return [np.array(a.to_host(), copy=True) for a in arrays]


def _empty_permuted(size, physical_layout, *, dtype=None, layout=None, device=None, pin_memory=None):
    """aten.empty_permuted (from a ones_like in the backward) does not legalize in IREE; the physical
    layout is irrelevant to the values, so a plain empty tensor does."""
    return torch.empty(size, dtype=dtype, device=device)


def _sum_of_squares(g: torch.Tensor) -> torch.Tensor:
    """sum(g * g) as sums of <= NORM_CHUNK elements each: rows of NORM_CHUNK (the tail zero-padded), then
    the rows' sums the same way, so no dispatch loops over more than NORM_CHUNK elements."""
    x = g.reshape(-1) * g.reshape(-1)
    while x.numel() > NORM_CHUNK:
        rows = -(-x.numel() // NORM_CHUNK)
        x = torch.nn.functional.pad(x, (0, rows * NORM_CHUNK - x.numel())).reshape(rows, NORM_CHUNK).sum(1)
    return x.sum()


def _grad_norm(grads) -> torch.Tensor:
    """clip_grad_norm_'s total 2-norm, sqrt(sum of every gradient's sum of squares), added NORM_FAN_IN
    tensors at a time (each `stack().sum()` is one dispatch with <= NORM_FAN_IN + 1 bindings)."""
    sums = [_sum_of_squares(g) for g in grads]
    while len(sums) > 1:
        sums = [torch.stack(sums[i:i + NORM_FAN_IN]).sum() for i in range(0, len(sums), NORM_FAN_IN)]
    return torch.sqrt(sums[0])


def _embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    """The embedding's gradient as one_hot(ids)^T @ grad: a matmul. torch's decomposition scatter-adds
    (index_put, accumulate), which IREE runs as one invocation looping over every token's row, past
    lavapipe's 65535 loop iterations at chat-7m's batch (the gradient then holds only the first tokens')."""
    if scale_grad_by_freq:
        raise TrainingError("vulkan: nn.Embedding(scale_grad_by_freq=True) is not supported")
    ids = indices.reshape(-1, 1)
    one_hot = (ids == torch.arange(num_weights, device=ids.device)) & (ids != padding_idx)
    grad = one_hot.to(grad_output.dtype).T @ grad_output.reshape(ids.shape[0], -1)
    return grad.reshape((num_weights, *grad_output.shape[indices.dim():]))


def _decompositions() -> dict:
    """make_fx's table: PyTorch's core ATen decompositions, with ours where IREE or lavapipe need them."""
    from torch._decomp import core_aten_decompositions

    return {**core_aten_decompositions(), torch.ops.aten.empty_permuted.default: _empty_permuted,
            torch.ops.aten.embedding_dense_backward.default: _embedding_dense_backward}


def _sources_hash() -> str:
    """Part of the compile-cache key: the code that shapes the traced graph (the model and this module)."""
    h = hashlib.sha256()
    for path in (PROJECT_ROOT / "model", PROJECT_ROOT / "kernels", Path(__file__)):
        hash_tree(h, path)
    return h.hexdigest()


class VulkanTrainer:
    """A `model.Transformer` training on Vulkan: one compiled step, weights and AdamW state on the device.

    Shapes are fixed at construction: every batch is [batch_size, seq_len] (seq_len defaults to the
    model's block_size). The model passed in is not modified; its weights are copied to the device.
    `load=False` only compiles (or takes the cached module), with no Vulkan device needed: `vmfb` holds the
    module for another machine (bench/gpu/vulkan.py), and of the methods only `reference_steps` works.
    """

    def __init__(self, model, *, batch_size: int, seq_len: int | None = None, lr: float = 3e-4,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1,
                 grad_clip: float | None = 1.0, cache: bool = True, load: bool = True):
        if not (available() if load else installed()):
            raise ConfigError(f"vulkan: {NEEDS_EXTRA}" if not installed() else
                              "vulkan: no Vulkan device (apt-get install libvulkan1 mesa-vulkan-drivers for lavapipe)")
        self.config = model.config
        self.batch_size, self.seq_len = batch_size, seq_len or model.config.block_size
        if self.seq_len > model.config.block_size:
            raise ValueError(f"seq_len={self.seq_len} exceeds block_size={model.config.block_size}")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.weight_decay, self.grad_clip = float(weight_decay), grad_clip
        # named_parameters() lists a tied matrix once (tok_emb.weight); the state_dict has both names
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        by_id = {id(p): n for n, p in params.items()}
        self._sd_alias = {k: by_id[id(t)] for k, t in model.state_dict(keep_vars=True).items() if id(t) in by_id}
        self._decay = [params[n].dim() >= 2 for n in self.names]
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.compile_seconds, self.trace_seconds, self.cache_hit = 0.0, 0.0, False
        self._fn = self._build(model, cache, load)
        if load:
            self.load_weights(model)

    # ------------------------------------------------------------------ build
    def _key(self) -> str:
        iree_compiler = _iree("compiler")
        meta = {"config": self.config.to_dict(), "batch": self.batch_size, "seq": self.seq_len,
                "names": self.names, "betas": self.betas, "eps": self.eps, "wd": self.weight_decay,
                "clip": self.grad_clip, "flags": COMPILE_FLAGS, "torch": torch.__version__,
                "iree": getattr(iree_compiler, "__version__", "?"), "src": _sources_hash()}
        return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def _build(self, model, cache: bool, load: bool = True):
        path = CACHE_DIR / f"{self._key()}.vmfb"
        if cache and path.exists():
            vmfb, self.cache_hit = path.read_bytes(), True
        else:
            vmfb = self._compile(model)
            if cache:
                CACHE_DIR.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(vmfb)
                tmp.replace(path)
        self.vmfb = vmfb
        if not load:
            return None
        rt = _runtime()
        config = _vulkan_config()
        self._device = config.device
        module = rt.load_vm_module(rt.VmModule.copy_buffer(config.vm_instance, vmfb), config)
        return module.main

    def _step_fn(self, model):
        names, decay, n = self.names, self._decay, len(self.names)
        (b1, b2), eps, wd, clip = self.betas, self.eps, self.weight_decay, self.grad_clip

        def loss_fn(params, ids, targets):
            return torch.func.functional_call(model, params, (ids, targets))[1]

        def train_step(*flat):
            params, m, v = flat[:n], flat[n:2 * n], flat[2 * n:3 * n]
            lr, bc1, bc2, ids, targets = flat[3 * n:]
            grads, loss = torch.func.grad_and_value(loss_fn)(
                dict(zip(names, params)), ids.to(torch.int64), targets.to(torch.int64))
            grads = [grads[k] for k in names]
            norm = _grad_norm(grads)  # torch.nn.utils.clip_grad_norm_'s total norm; returned before clipping
            if clip:
                scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
                grads = [g * scale for g in grads]
            # torch.optim.AdamW (single-tensor path)
            step_size, bc2_sqrt = lr / bc1, torch.sqrt(bc2)
            new_p, new_m, new_v = [], [], []
            for p, g, mi, vi, d in zip(params, grads, m, v, decay):
                if d and wd:
                    p = p * (1 - lr * wd)
                mi = mi + (g - mi) * (1 - b1)
                vi = vi * b2 + g * g * (1 - b2)
                p = p - step_size * mi / (torch.sqrt(vi) / bc2_sqrt + eps)
                new_p.append(p), new_m.append(mi), new_v.append(vi)
            return (loss, norm, *new_p, *new_m, *new_v)

        return train_step

    def _example_args(self, model) -> tuple:
        params = dict(model.named_parameters())
        p = [params[k].detach().clone() for k in self.names]
        m = [torch.zeros(s) for s in self.shapes]  # distinct tensors: aliased example inputs merge in make_fx
        v = [torch.zeros(s) for s in self.shapes]
        scalars = [torch.tensor(x, dtype=torch.float32) for x in (self.lr, 1 - self.betas[0], 1 - self.betas[1])]
        ids = torch.zeros(self.batch_size, self.seq_len, dtype=torch.int32)
        return (*p, *m, *v, *scalars, ids, ids.clone())

    def _compile(self, model) -> bytes:
        ic, aot = _iree("compiler"), _iree("turbine.aot")
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.nn.attention import SDPBackend, sdpa_kernel

        t0 = time.perf_counter()
        traced = copy.deepcopy(model).cpu().float().train()  # forward sets attributes; keep the caller's clean
        for p in traced.parameters():
            p.requires_grad_(False)
        args = self._example_args(traced)
        with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            gm = make_fx(self._step_fn(traced), decomposition_table=_decompositions())(*args)
        placeholders = [nd for nd in gm.graph.nodes if nd.op == "placeholder"]
        if len(placeholders) != len(args):  # the aliasing pitfall, or a dead input
            raise TrainingError(f"vulkan: traced step has {len(placeholders)} inputs, expected {len(args)}")
        mlir = str(aot.export(gm, args=args, strict_export=False).mlir_module)
        t1 = time.perf_counter()
        vmfb = ic.compile_str(mlir, target_backends=["vulkan-spirv"], extra_args=list(COMPILE_FLAGS))
        t2 = time.perf_counter()
        self.trace_seconds, self.compile_seconds = t1 - t0, t2 - t1
        log.info("vulkan: traced+exported in %.1fs, compiled in %.1fs", t1 - t0, t2 - t1)
        return vmfb

    # ------------------------------------------------------------------ state
    def _upload(self, a) -> object:
        arr = np.ascontiguousarray(a.detach().cpu().float().numpy() if torch.is_tensor(a) else a, np.float32)
        return _runtime().asdevicearray(self._device, arr)

    def _upload_state(self, params, m, v, t: int) -> None:
        for what, arrays in (("weights", params), ("exp_avg", m), ("exp_avg_sq", v)):
            for name, shape, a in zip(self.names, self.shapes, arrays):
                if tuple(a.shape) != shape:
                    raise ValueError(f"{what} {name}: shape {tuple(a.shape)}, expected {shape}")
        self._p = [self._upload(a) for a in params]
        self._m = [self._upload(a) for a in m]
        self._v = [self._upload(a) for a in v]
        self.t = int(t)

    def load_weights(self, model) -> None:
        """Weights from a torch model (same config); AdamW state reset (m = v = 0, step 0)."""
        params = dict(model.named_parameters())
        missing = [k for k in self.names if k not in params]
        if missing:
            raise ValueError(f"model lacks parameters {missing[:3]}")
        self._upload_state([params[k] for k in self.names], [np.zeros(s, np.float32) for s in self.shapes],
                           [np.zeros(s, np.float32) for s in self.shapes], 0)

    def state_dict(self) -> dict:
        """{'model': CPU tensors under the model's state_dict names (loads into a CPU Transformer, tied
        matrices under both names), 'optimizer': {'step', 'exp_avg': {name: t}, 'exp_avg_sq': {...},
        hyperparameters}}."""
        host = _host_copy(self._p + self._m + self._v)
        n = len(self.names)
        p, m, v = ([torch.from_numpy(a) for a in host[i * n:(i + 1) * n]] for i in range(3))
        weights = dict(zip(self.names, p))
        return {"model": {k: weights[name] for k, name in self._sd_alias.items()},
                "optimizer": {"step": self.t, "exp_avg": dict(zip(self.names, m)),
                              "exp_avg_sq": dict(zip(self.names, v)),
                              "lr": self.lr, "betas": self.betas, "eps": self.eps,
                              "weight_decay": self.weight_decay, "grad_clip": self.grad_clip}}

    def load_state(self, state: dict) -> None:
        """Resume from `state_dict()` output (weights, m, v, step)."""
        w, opt = state["model"], state["optimizer"]
        self._upload_state([w[k] for k in self.names], [opt["exp_avg"][k] for k in self.names],
                           [opt["exp_avg_sq"][k] for k in self.names], opt["step"])

    def copy_to(self, model) -> None:
        """Write the device weights into a torch model (for checkpoint.save, evaluation, sampling)."""
        with torch.no_grad():
            model.load_state_dict(self.state_dict()["model"])

    # ------------------------------------------------------------------ step
    def _check_batch(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        want = (self.batch_size, self.seq_len)
        if tuple(x.shape) != want or tuple(y.shape) != want:
            raise ValueError(f"batch shape {tuple(x.shape)}/{tuple(y.shape)}, compiled for {want}")
        return (np.ascontiguousarray(torch.as_tensor(x).cpu().numpy(), np.int32),
                np.ascontiguousarray(torch.as_tensor(y).cpu().numpy(), np.int32))

    def _invoke(self, lr: float, ids: np.ndarray, targets: np.ndarray):
        t = self.t + 1
        b1, b2 = self.betas
        scalars = [np.asarray(s, np.float32) for s in (lr, 1 - b1 ** t, 1 - b2 ** t)]
        out = self._fn(*self._p, *self._m, *self._v, *scalars, ids, targets)
        n = len(self.names)
        return out[0], out[1], list(out[2:2 + n]), list(out[2 + n:2 + 2 * n]), list(out[2 + 2 * n:])

    def step(self, x, y, lr: float | None = None) -> tuple[float, float]:
        """One optimizer step on batch (x, y) at learning rate lr (default: the peak lr).

        Returns (loss, grad norm before clipping), like the CPU loop's loss and clip_grad_norm_().
        A non-finite loss raises TrainingError and leaves the weights as they were.
        """
        ids, targets = self._check_batch(x, y)
        loss, norm, p, m, v = self._invoke(self.lr if lr is None else float(lr), ids, targets)
        loss_value, norm_value = (float(a) for a in _host_copy([loss, norm]))
        if not math.isfinite(loss_value):
            raise TrainingError(f"vulkan step {self.t + 1}: loss is {loss_value}; weights not updated")
        self._p, self._m, self._v, self.t = p, m, v, self.t + 1
        return loss_value, norm_value

    # ------------------------------------------------------------------ self check
    def reference_steps(self, model, x, y, steps: int = 1, lr: float | None = None):
        """The same steps in eager torch on CPU (Transformer forward/backward, clip_grad_norm_,
        torch.optim.AdamW with this trainer's hyperparameters, fresh state) on a copy of `model`.

        Returns (losses, grad norms, the updated copy)."""
        ref = copy.deepcopy(model).cpu().float().train()
        params = [p for _, p in ref.named_parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr if lr is None else lr,
                                betas=self.betas, eps=self.eps, foreach=False)
        x, y = torch.as_tensor(x).long(), torch.as_tensor(y).long()
        losses, norms = [], []
        for _ in range(steps):
            loss = ref(x, y)[1]
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else math.inf)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item()), norms.append(norm.item())
        return losses, norms, ref

    def self_check(self, model, x, y, steps: int = 3) -> dict:
        """`steps` steps on batch (x, y) from `model`'s weights (fresh AdamW state), on Vulkan and on CPU.

        Raises TrainingError naming the largest mismatch (loss or grad norm at any step, or any updated
        weight) beyond tolerance: this device then refuses to train. Three steps, not one, because
        AdamW's first update is lr * sign(g) whatever the clip, and a wrong m/v wiring shows from step 2.
        The trainer's own state (weights, m, v, step) is left as it was. Returns the measured differences
        (loss and grad norm relative, weights in units of lr) and the CPU-side seconds.
        """
        saved = (self._p, self._m, self._v, self.t)
        vk_losses, vk_norms = [], []
        try:
            self.load_weights(model)
            ids, targets = self._check_batch(x, y)
            for _ in range(steps):
                loss, norm, self._p, self._m, self._v = self._invoke(self.lr, ids, targets)
                self.t += 1
                a, b = _host_copy([loss, norm])
                vk_losses.append(float(a)), vk_norms.append(float(b))
            host = _host_copy(self._p)
        finally:
            self._p, self._m, self._v, self.t = saved
        ref_losses, ref_norms, ref = self.reference_steps(model, torch.as_tensor(ids), torch.as_tensor(targets),
                                                          steps)
        ref_params = dict(ref.named_parameters())
        found = {}  # kind -> (relative diff, message)

        def note(kind, diff, msg):
            diff = diff if math.isfinite(diff) else math.inf
            if kind not in found or diff > found[kind][0]:
                found[kind] = (diff, msg)

        for i, (a, b) in enumerate(zip(vk_losses, ref_losses)):
            note("loss", abs(a - b) / max(abs(b), 1e-12), f"step {i + 1} loss {a:.6g} vs CPU {b:.6g}")
        for i, (a, b) in enumerate(zip(vk_norms, ref_norms)):
            note("grad_norm", abs(a - b) / max(abs(b), 1e-12), f"step {i + 1} grad norm {a:.6g} vs CPU {b:.6g}")
        for name, a in zip(self.names, host):
            d = float(np.max(np.abs(a - ref_params[name].detach().numpy()))) if a.size else 0.0
            note("weights", d / self.lr, f"weight {name} after {steps} steps off by {d:.3g}")
        limits = {"loss": LOSS_TOL, "grad_norm": GRAD_NORM_TOL, "weights": UPDATE_TOL}
        bad = {k: found[k][0] / limits[k] for k in found if not found[k][0] <= limits[k]}
        if bad:
            k = max(bad, key=bad.get)
            unit = "×lr" if k == "weights" else " relative"
            raise TrainingError(f"vulkan self-check failed on {device_name() or 'Vulkan'}: {found[k][1]} "
                                f"({found[k][0]:.3g}{unit}, tolerance {limits[k]:g}); refusing to train on it")
        return {k: v[0] for k, v in found.items()}


class VulkanStep:
    """The trainer's step on Vulkan (`Step`, tasks/train/backends/offload.py): weights and AdamW state live on the
    device between syncs. Refuses, in one line, what only the live run shows the compiled step cannot run (what
    params alone decide is refused when they load: tasks/common/config.py, TRAIN_RULES; which phases it may
    train is their row's: tasks/train/phases.py), and self-checks before the first step."""

    def __init__(self, context: StepContext) -> None:
        model, cfg, reader = context.model, context.cfg, context.reader
        unsupported = [why for bad, why in (
            (context.ranks.world != 1, "torchrun (several processes)"),
            (model.config.quant is not None, f"quant {model.config.quant}"),
            (model.config.moe is not None, "MoE layers")) if bad]
        if unsupported:
            raise ConfigError(f"params: train.device: vulkan does not support {', '.join(unsupported)}; "
                              "use cpu or cuda for this run")
        self.model, self.optimizers, self.cfg, self.reader = model, context.optimizers, cfg, reader
        o = cfg.optimizer
        self.trainer = VulkanTrainer(model, batch_size=reader.batch_size, lr=o.lr, betas=(o.beta1, o.beta2),
                                     eps=1e-8, weight_decay=o.weight_decay, grad_clip=o.grad_clip)
        position = reader.state_dict()
        x, y = reader.next_batch()  # the check's batch; the reader goes back, the run sees the same data
        reader.load_state_dict(position)
        self.trainer.self_check(model, x, y)
        self.trainer.load_state(self._trainer_state())  # where the model and optimizers are (resume included)
        log.info("vulkan: %s; compiled step %s in %.1fs", device_name(),
                 "from cache" if self.trainer.cache_hit else "built", self.trainer.compile_seconds)

    def step(self, multiplier: float) -> tuple[float, float, dict]:
        x, y = self.reader.next_batch()
        try:
            loss, grad_norm = self.trainer.step(x, y, lr=self.cfg.optimizer.lr * multiplier)
        except TrainingError:
            return math.nan, math.nan, {}
        return loss, grad_norm, {}

    def _adamw(self) -> torch.optim.Optimizer:
        [adamw] = self.optimizers.all
        return adamw

    def _trainer_state(self) -> dict:
        """The torch model and AdamW state in the trainer's format (zeros where AdamW has not stepped)."""
        params, adamw = dict(self.model.named_parameters()), self._adamw()
        state = {name: adamw.state.get(p, {}) for name, p in params.items()}
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        step = max((int(s["step"]) for s in state.values() if "step" in s), default=0)
        return {"model": self.model.state_dict(),
                "optimizer": {"step": step,
                              "exp_avg": {n: s.get("exp_avg", zeros[n]).detach() for n, s in state.items()},
                              "exp_avg_sq": {n: s.get("exp_avg_sq", zeros[n]).detach() for n, s in state.items()}}}

    def sync(self) -> None:
        """Weights into the model, m and v into torch's AdamW state (the format a CPU run checkpoints)."""
        state = self.trainer.state_dict()
        with torch.no_grad():
            self.model.load_state_dict(state["model"])
        opt, adamw = state["optimizer"], self._adamw()
        for name, p in self.model.named_parameters():
            adamw.state[p] = {"step": torch.tensor(float(opt["step"])), "exp_avg": opt["exp_avg"][name].clone(),
                              "exp_avg_sq": opt["exp_avg_sq"][name].clone()}
