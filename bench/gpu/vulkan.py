"""The project's Vulkan training step, compiled here, checked and timed on another machine's GPU.

Why: the Vulkan worker (tasks/train/backends/vulkan.py) is only ever run on Mesa's lavapipe here. The GPU
machine this is for (an NVIDIA H100 with NVIDIA's Vulkan driver) has torch and numpy but no IREE compiler,
no iree-turbine and none of the project's other dependencies (pydantic, mlflow, prefect), and no internet.
So the work is split in two:

  prepare (here, the project's venv; no Vulkan device needed): builds the model as the Vulkan worker does
      (`model.preset` → `Transformer`, seed fixed) and compiles its whole training step with the project's
      `VulkanTrainer` (same trace, same cache, same COMPILE_FLAGS: the baseline SPIR-V 1.3 target plus
      Int8/Int16 and 8/16-bit storage, which lavapipe and NVIDIA both have, and no subgroup-size assumption,
      so one module serves both). Writes CARRY/vulkan/: step.vmfb, the fixed batch, the CPU reference
      (`VulkanTrainer.reference_steps`: eager torch), meta.json (shapes, the flat argument order,
      hyperparameters, the self-check's tolerances, versions) and the ml_dtypes wheel that iree.runtime
      imports. Fetches the iree-base-runtime wheel for cp312 into CARRY/wheels/ (slimmed: its Tracy build and
      command-line tools dropped, 15 MB → 1.4 MB) and the Vulkan loader (libvulkan1 .deb) into CARRY/gl/.
  run (there, or here on lavapipe): needs only torch, numpy, iree.runtime and `model/` from this repo. Lists
      the Vulkan devices, takes NVIDIA's if present, loads the .vmfb, repeats VulkanTrainer.self_check's
      comparison against the saved reference with its tolerances, times the step (loss read back each step,
      as the worker does), and times the same model and batch in torch: CUDA fp32 and bf16 autocast (the
      CUDA worker: eager, fused AdamW, clip), or CPU fp32 without CUDA. The JSON is rewritten after every
      stage, so a crash or a kill leaves what was measured and the stage it stopped in; exit status 0 iff ok.

The run side drives the compiled module itself (upload, invoke, read back) because the project's trainer
cannot be imported there; the calling convention is the trainer's, recorded in meta.json. The initial
weights are not carried (28 MB at chat-7m): both sides build them from the seed, and run compares their
SHA-256 with prepare's before it trusts the reference. The weights after the check's steps are compared on
a regular subsample (every k-th element of each tensor, about 262k in all; every one for the smoke model).

    python bench/gpu/vulkan.py prepare --carry .gpu-carry                  # chat-7m, batch 16, seq 256
    python bench/gpu/vulkan.py prepare --carry /tmp/c --smoke               # tiny model, no downloads
    python bench/gpu/vulkan.py run --carry .gpu-carry --out vulkan.json --steps 50 --seconds 45
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import faulthandler
import glob
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

NVIDIA_ICD = "/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json"
ICD_DIRS = ("/etc/vulkan/icd.d", "/usr/share/vulkan/icd.d", "/usr/local/share/vulkan/icd.d",
            "/usr/local/nvidia/share/vulkan/icd.d")
SEED = 1337                     # params.yaml's seed
CHECK_STEPS = 3                 # VulkanTrainer.self_check's default
CHECK_ELEMENTS = 1 << 18        # weights compared after the check: about this many (1 MiB of float32)
SMOKE = {"preset": "chat-7m", "overrides": {"vocab_size": 64, "n_layer": 1, "n_embd": 32, "n_head": 4,
                                            "block_size": 16}, "batch": 2, "seq": 16}
FOREIGN = ("iree.compiler", "iree.turbine", "tasks", "pydantic", "yaml", "mlflow", "prefect")  # absent there
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64")
SLIM_DROP = ("iree/_runtime_libs_tracy/", "iree/_runtime_libs/iree-")  # Tracy build, command-line tools


# ====================================================================== shared by both sides

def build_model(config_dict: dict, seed: int):
    """The Vulkan worker's model: `Transformer(config)` built on the CPU in fp32 after `manual_seed(seed)`."""
    import torch

    from chatpipe.model.config import ModelConfig
    from chatpipe.model.transformer import Transformer

    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_dict(config_dict)).float().train()


def weights_sha256(model, names: list[str]) -> str:
    params = dict(model.named_parameters())
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(np.ascontiguousarray(params[name].detach().cpu().numpy(), np.float32).tobytes())
    return h.hexdigest()


def one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


# ====================================================================== prepare (here)

def model_spec(args) -> tuple[str, dict, int, int]:
    """(preset, config overrides, batch, seq): --smoke's tiny model, else the preset with `--set k=v` (ints)."""
    if args.smoke:
        return SMOKE["preset"], SMOKE["overrides"], SMOKE["batch"], SMOKE["seq"]
    overrides = {k: int(v) for k, v in (item.split("=", 1) for item in args.set)}
    return args.preset, overrides, args.batch, args.seq


def sampled_reference(ref, names: list[str], budget: int) -> tuple[dict, int, int]:
    """Every `stride`-th element of each updated weight (flattened), stride chosen to keep about `budget`."""
    params = dict(ref.named_parameters())
    total = sum(params[n].numel() for n in names)
    stride = max(1, math.ceil(total / budget))
    arrays = {f"after:{n}": params[n].detach().numpy().reshape(-1)[::stride].copy() for n in names}
    return arrays, stride, sum(a.size for a in arrays.values())


def input_layout(names: list[str]) -> list[str]:
    """The compiled `main`'s inputs in order (VulkanTrainer._step_fn / _invoke)."""
    return ([f"param:{n}" for n in names] + [f"exp_avg:{n}" for n in names] + [f"exp_avg_sq:{n}" for n in names]
            + ["lr", "bias_correction1 = 1 - beta1^t", "bias_correction2 = 1 - beta2^t",
               "ids int32 [batch, seq]", "targets int32 [batch, seq]"])


def fixed_batch(vocab: int, batch: int, seq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1), dtype=np.int32)
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


def compile_step(model, batch: int, seq: int):
    """The project's trainer, compile only (its trace, flags and cache; no device needed): `.vmfb` and
    `reference_steps`. Whether this machine's device can run the module is `run`'s to find out."""
    from chatpipe.tasks.train.backends import vulkan as vs

    return vs.VulkanTrainer(model, batch_size=batch, seq_len=seq, load=False)


def iree_versions() -> dict:
    from importlib.metadata import version

    from iree.compiler import version as compiler_version
    from iree.runtime import version as runtime_version

    return {"compiler": compiler_version.VERSION, "runtime": runtime_version.VERSION,
            "revisions": dict(runtime_version.REVISIONS), "iree-base-runtime": version("iree-base-runtime")}


def save_reference(out: Path, trainer, model, x: np.ndarray, y: np.ndarray) -> dict:
    """batch.npz, and reference.npz: the CPU's loss and grad norm at each check step, the sampled weights after."""
    import torch

    from chatpipe.tasks.train.backends import vulkan as vs

    losses, norms, ref = trainer.reference_steps(model, torch.from_numpy(x), torch.from_numpy(y), CHECK_STEPS)
    after, stride, checked = sampled_reference(ref, trainer.names, CHECK_ELEMENTS)
    np.savez(out / "batch.npz", ids=x, targets=y)
    np.savez(out / "reference.npz", loss=np.asarray(losses, np.float64), grad_norm=np.asarray(norms, np.float64),
             **after)
    return {"init_sha256": weights_sha256(model, trainer.names),
            "check": {"steps": CHECK_STEPS,
                      "tolerances": {"loss": vs.LOSS_TOL, "grad_norm": vs.GRAD_NORM_TOL, "weights": vs.UPDATE_TOL},
                      "units": {"loss": "relative", "grad_norm": "relative", "weights": "max |diff| / lr"},
                      "weights_stride": stride, "weights_checked": checked,
                      "weights_total": sum(p.numel() for p in model.parameters())}}


def save_step(out: Path, trainer) -> dict:
    """step.vmfb, and how to call it: hyperparameters, parameter shapes, the flat inputs and outputs."""
    import torch

    from chatpipe.tasks.train.backends import vulkan as vs

    (out / "step.vmfb").write_bytes(trainer.vmfb)
    return {"hyper": {"lr": trainer.lr, "betas": list(trainer.betas), "eps": trainer.eps,
                      "weight_decay": trainer.weight_decay, "grad_clip": trainer.grad_clip},
            "params": [{"name": n, "shape": list(s)} for n, s in zip(trainer.names, trainer.shapes)],
            "inputs": input_layout(trainer.names),
            "outputs": ["loss", "grad_norm (before clipping)", "params'", "exp_avg'", "exp_avg_sq'"],
            "vmfb_sha256": hashlib.sha256(trainer.vmfb).hexdigest(),
            "compile": {"flags": list(vs.COMPILE_FLAGS), "target_backends": ["vulkan-spirv"],
                        "cache_hit": trainer.cache_hit, "trace_seconds": round(trainer.trace_seconds, 2),
                        "compile_seconds": round(trainer.compile_seconds, 2)},
            "iree": iree_versions(), "torch": torch.__version__, "python": platform.python_version()}


def prepare(args) -> int:
    from chatpipe.model.presets import preset

    carry = Path(args.carry)
    out = carry / "vulkan"
    out.mkdir(parents=True, exist_ok=True)
    name, overrides, batch, seq = model_spec(args)
    config = preset(name, **overrides)
    model = build_model(config.to_dict(), SEED)
    x, y = fixed_batch(config.vocab_size, batch, seq, SEED)
    t0 = time.perf_counter()
    trainer = compile_step(model, batch, seq)
    meta = {"preset": name, "overrides": overrides, "config": config.to_dict(), "seed": SEED, "batch": batch,
            "seq": seq, **save_step(out, trainer), **save_reference(out, trainer, model, x, y),
            "prepare_seconds": round(time.perf_counter() - t0, 2)}
    if not (args.smoke or args.no_downloads):
        meta["downloads"] = download_all(carry)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({"carry": str(out), "compile": meta["compile"], "prepare_seconds": meta["prepare_seconds"],
                      "sizes": sizes(carry)}, indent=1))
    return 0


# ---------------------------------------------------------------------- downloads (prepare)

def pip_download(requirement: str, dest: Path) -> Path:
    """The cp312 manylinux x86_64 wheel of `requirement`, through pip."""
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(dest), requirement],
                   check=True, stdout=subprocess.DEVNULL)
    [wheel] = dest.glob("*.whl")
    return wheel


def slim_wheel(source: Path, dest: Path) -> dict:
    """A copy of the wheel without SLIM_DROP's files (and their RECORD lines): what `iree.runtime` needs."""
    kept = dropped = 0
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest.with_suffix(".tmp"), "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename.startswith(SLIM_DROP):
                dropped += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.decode().startswith(SLIM_DROP))
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            kept += 1
    dest.with_suffix(".tmp").replace(dest)
    return {"from_bytes": source.stat().st_size, "bytes": dest.stat().st_size, "files_kept": kept,
            "files_dropped": dropped, "dropped": list(SLIM_DROP)}


def is_slim(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as z:
        return not any(n.startswith(SLIM_DROP) for n in z.namelist())


def fetch_wheel(requirement: str, dest_dir: Path, pattern: str, slim: bool) -> dict:
    """The wheel into dest_dir, unless there (a full one there is slimmed in place when `slim`)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(dest_dir.glob(pattern))
    if have and not (slim and not is_slim(have[0])):
        return {"file": str(have[0]), "bytes": have[0].stat().st_size, "skipped": "already there"}
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / have[0].name if have else pip_download(requirement, Path(tmp))
        if have:
            shutil.move(have[0], wheel)
        dest = dest_dir / wheel.name
        if slim:
            return {"file": str(dest), **slim_wheel(wheel, dest)}
        dest.write_bytes(wheel.read_bytes())
        return {"file": str(dest), "bytes": dest.stat().st_size}


def fetch_vulkan_loader(dest_dir: Path) -> dict:
    """libvulkan1 for amd64 from Debian, with apt-get download (lists kept in /tmp/amd64)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    have = sorted(dest_dir.glob("libvulkan1_*.deb"))
    if have:
        return {"file": str(have[0]), "bytes": have[0].stat().st_size, "skipped": "already there"}
    Path("/tmp/amd64/partial").mkdir(parents=True, exist_ok=True)
    opts = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64", "-oDir::State::Lists=/tmp/amd64"]
    subprocess.run(["apt-get", *opts, "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", *opts, "download", "libvulkan1"], check=True, cwd=dest_dir, stdout=subprocess.DEVNULL)
    [deb] = dest_dir.glob("libvulkan1_*.deb")
    return {"file": str(deb), "bytes": deb.stat().st_size}


def download_all(carry: Path) -> dict:
    from importlib.metadata import version

    runtime, ml_dtypes = version("iree-base-runtime"), version("ml_dtypes")
    return {"iree_runtime": fetch_wheel(f"iree-base-runtime=={runtime}", carry / "wheels",
                                        f"iree_base_runtime-{runtime}-*.whl", slim=True),
            "ml_dtypes": fetch_wheel(f"ml_dtypes=={ml_dtypes}", carry / "vulkan", f"ml_dtypes-{ml_dtypes}-*.whl",
                                     slim=False),
            "libvulkan1": fetch_vulkan_loader(carry / "gl")}


def sizes(carry: Path) -> dict:
    files = [p for p in sorted(carry.rglob("*")) if p.is_file() and
             (p.parent.name == "vulkan" or p.name.startswith(("iree", "libvulkan")))]
    return {str(p.relative_to(carry)): p.stat().st_size for p in files}


# ====================================================================== run (there)

class Results:
    """The run's JSON, rewritten after every stage: a crash or a kill leaves the stage it stopped in."""

    def __init__(self, path: Path):
        self.path, self.data, self.errors = path, {"ok": False, "error": None}, []

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    @contextlib.contextmanager
    def stage(self, name: str):
        self.data["stage"] = name
        self.data["error"] = self.errors[0] if self.errors else f"stopped during stage {name!r} (crashed or killed)"
        self.write()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - recorded in one line, the run goes on to what does not need it
            self.errors.append(f"{name}: {one_line(e)}")
            import traceback
            traceback.print_exc()
        finally:
            self.data["error"] = self.errors[0] if self.errors else None
            self.write()

    def done(self, name: str) -> bool:
        return not any(e.startswith(f"{name}: ") for e in self.errors)

    def finish(self, why: str | None = None) -> int:
        if why:
            self.errors.append(why)
        self.data.update(ok=not self.errors, error=self.errors[0] if self.errors else None, stage="done",
                         errors=self.errors)
        self.data["summary"] = summary(self.data)
        self.write()
        return 0 if not self.errors else 1


def summary(data: dict) -> str:
    """One line for a report: the device, the self-check's verdict, steps/s on Vulkan and in torch."""
    check, vulkan = data.get("self_check", {}), data.get("vulkan", {})
    parts = [f"vulkan on {vulkan.get('device', {}).get('name', '?')}"]
    if check:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in check["max_diffs"].items())
        parts.append(f"self-check {check['verdict']} ({diffs}; tolerances "
                     f"{', '.join(f'{k} {v:g}' for k, v in check['tolerances'].items())})")
    rates = {"vulkan": vulkan.get("timing", {}).get("steps_per_s"),
             **{k: v.get("steps_per_s") for k, v in data.get("torch", {}).items()}}
    parts.append("steps/s " + ", ".join(f"{k} {v:.3g}" for k, v in rates.items() if v))
    return "; ".join(parts) + ("" if data.get("ok") else f"; error: {data.get('error')}")


def probe_icd(path: str, load: bool) -> dict:
    """An ICD manifest's library, and (when `load`) whether it dlopens here: NVIDIA's needs the driver's
    user-space libraries mounted into the container, which a missing device would otherwise hide."""
    try:
        library = json.loads(Path(path).read_text()).get("ICD", {}).get("library_path")
    except (OSError, ValueError) as e:
        return {"error": one_line(e)}
    if not load or not library:
        return {"library_path": library}
    try:
        ctypes.CDLL(library)
        return {"library_path": library, "loads": True}
    except OSError as e:
        return {"library_path": library, "loads": one_line(e)}


def vulkan_environment() -> dict:
    """Point the loader at NVIDIA's ICD when no variable names one (VK_DRIVER_FILES, or the older
    VK_ICD_FILENAMES) and the file is there; say which manifests exist and whether NVIDIA's library loads."""
    if not (os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES")) and os.path.exists(NVIDIA_ICD):
        os.environ["VK_DRIVER_FILES"] = NVIDIA_ICD
    named = {f for k in ("VK_DRIVER_FILES", "VK_ICD_FILENAMES") for f in os.environ.get(k, "").split(os.pathsep) if f}
    icds = {path: probe_icd(path, load="nvidia" in path.lower() or path in named)
            for path in sorted({p for d in ICD_DIRS for p in glob.glob(f"{d}/*.json")} | named)}
    return {**{k: os.environ.get(k) for k in ("VK_DRIVER_FILES", "VK_ICD_FILENAMES")},
            "libvulkan": ctypes.util.find_library("vulkan"), "icd_files": icds}


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def import_iree_runtime(carry: Path) -> tuple[object, str]:
    """`iree.runtime`, with what is missing of it and of ml_dtypes (which it imports) unpacked from the carried
    wheels into /tmp first: checked before importing, so no half-imported copy is left to clash with."""
    wanted = {"ml_dtypes": sorted((carry / "vulkan").glob("ml_dtypes-*.whl")),
              "iree.runtime": sorted((carry / "wheels").glob("iree_base_runtime-*.whl"))}
    missing = [name for name in wanted if not importable(name)]
    for name in missing:
        if not wanted[name]:
            raise ImportError(f"no {name} installed and no wheel of it carried in {carry}")
        target = Path(tempfile.gettempdir()) / f"chatpipe-iree-runtime-cp{sys.version_info[0]}{sys.version_info[1]}"
        with zipfile.ZipFile(wanted[name][0]) as z:
            z.extractall(target)
        if str(target) not in sys.path:
            sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    how = f"unpacked {', '.join(wanted[m][0].name for m in missing)}" if missing else "installed"
    return importlib.import_module("iree.runtime"), how


def split_driver(name: str) -> tuple[str, str]:
    """IREE names a device 'NAME (DRIVER INFO)': the last balanced '(...)' group is the driver."""
    if not name.endswith(")"):
        return name, ""
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i].strip() or name, name[i + 1:-1]
    return name, ""


class VulkanStep:
    """The compiled step on one IREE Vulkan device, called as VulkanTrainer calls it (meta.json's layout)."""

    def __init__(self, rt, device, vmfb: bytes, meta: dict):
        self.rt, self.device, self.meta = rt, device, meta
        config = rt.Config(device=device)
        self.fn = rt.load_vm_module(rt.VmModule.copy_buffer(config.vm_instance, vmfb), config).main
        self.n = len(meta["params"])
        self.lr = float(meta["hyper"]["lr"])
        self.betas = meta["hyper"]["betas"]

    def start(self, weights: list[np.ndarray]) -> None:
        """Weights on the device, AdamW state zero, step 0."""
        upload = lambda a: self.rt.asdevicearray(self.device, np.ascontiguousarray(a, np.float32))  # noqa: E731
        self.p = [upload(w) for w in weights]
        self.m = [upload(np.zeros(w.shape, np.float32)) for w in weights]
        self.v = [upload(np.zeros(w.shape, np.float32)) for w in weights]
        self.t = 0

    def step(self, ids: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
        """One step at the peak lr; the loss and grad norm read back (a host sync, as the worker does)."""
        t = self.t + 1
        scalars = [np.asarray(s, np.float32) for s in (self.lr, 1 - self.betas[0] ** t, 1 - self.betas[1] ** t)]
        out = self.fn(*self.p, *self.m, *self.v, *scalars, ids, targets)
        n = self.n
        self.p, self.m, self.v = list(out[2:2 + n]), list(out[2 + n:2 + 2 * n]), list(out[2 + 2 * n:])
        self.t = t
        loss, norm = self.read([out[0], out[1]])
        return float(loss), float(norm)

    def read(self, arrays) -> list[np.ndarray]:
        """Device → host through a staging buffer. iree.runtime 3.13 would import the numpy buffer instead,
        which Vulkan rejects when it is not 4096-aligned; hiding IMPORTABLE while we read (the project's
        workaround, `_no_host_import` in tasks/train/backends/vulkan.py, which cannot be imported here)."""
        allocator = self.rt.HalAllocator
        original = allocator.query_buffer_compatibility
        importable = int(self.rt.BufferCompatibility.IMPORTABLE)
        allocator.query_buffer_compatibility = lambda s, **kw: original(s, **kw) & ~importable
        try:
            return [np.array(a.to_host(), copy=True) for a in arrays]
        finally:
            allocator.query_buffer_compatibility = original

    def close(self) -> None:
        """Free the device arrays, then the module, then the device (other orders can crash at exit)."""
        self.p = self.m = self.v = []
        self.fn = self.device = None


def list_devices(rt) -> list[dict]:
    if "vulkan" not in rt.query_available_drivers():
        raise RuntimeError("this iree.runtime has no vulkan driver")
    infos = list(rt.get_driver("vulkan").query_available_devices())
    if not infos:
        raise RuntimeError("IREE sees no Vulkan device (no loader, no ICD, or the ICD failed to load)")
    return [{**info, "device": split_driver(info["name"])[0], "driver": split_driver(info["name"])[1]}
            for info in infos]


def pick(devices: list[dict]) -> dict:
    return next((d for d in devices if "nvidia" in d["name"].lower()), devices[0])


def self_check(step: VulkanStep, weights: list[np.ndarray], ids, targets, meta: dict, reference) -> dict:
    """VulkanTrainer.self_check's comparison against the saved CPU reference: loss and grad norm (relative)
    at each of the steps, then the (sampled) weights in units of lr; verdict by the project's tolerances."""
    check, names = meta["check"], [p["name"] for p in meta["params"]]
    step.start(weights)
    losses, norms = zip(*(step.step(ids, targets) for _ in range(check["steps"])))
    host = step.read(step.p)
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)  # noqa: E731
    weight_diff = max(float(np.max(np.abs(h.reshape(-1)[::check["weights_stride"]] - reference[f"after:{n}"])))
                      for n, h in zip(names, host))
    diffs = {"loss": max(rel(a, b) for a, b in zip(losses, reference["loss"])),
             "grad_norm": max(rel(a, b) for a, b in zip(norms, reference["grad_norm"])),
             "weights": weight_diff / step.lr}
    diffs = {k: (v if math.isfinite(v) else math.inf) for k, v in diffs.items()}
    limits = check["tolerances"]
    failed = sorted(k for k in diffs if not diffs[k] <= limits[k])
    return {"verdict": "fail" if failed else "pass", "failed": failed, "max_diffs": diffs, "tolerances": limits,
            "units": check["units"], "losses": list(losses), "cpu_losses": reference["loss"].tolist(),
            "grad_norms": list(norms), "cpu_grad_norms": reference["grad_norm"].tolist(),
            "weights_checked": check["weights_checked"], "weights_total": check["weights_total"]}


def time_vulkan(step: VulkanStep, weights, ids, targets, steps: int, seconds: float, tokens: int) -> dict:
    step.start(weights)
    step.step(ids, targets)  # warm-up: first use of the freshly uploaded state
    done, t0 = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - t0 < seconds):
        loss, _ = step.step(ids, targets)  # each step reads its loss and grad norm back: synchronized
        done += 1
    elapsed = time.perf_counter() - t0
    return {"steps": done, "seconds": round(elapsed, 4), "steps_per_s": done / elapsed,
            "tokens_per_s": done * tokens / elapsed, "last_loss": loss, "sync": "loss+grad norm read back each step"}


def time_torch(meta: dict, ids: np.ndarray, targets: np.ndarray, device: str, dtype, steps: int,
               seconds: float) -> dict:
    """The CUDA (or CPU) worker's step on the same model and batch: eager, autocast `dtype` (None: fp32),
    clip_grad_norm_, torch's fused AdamW with decay on >= 2-D parameters (tasks/train/optim.py)."""
    import torch

    hyper = meta["hyper"]
    model = build_model(meta["config"], meta["seed"]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [g for g in ({"params": [p for p in params if p.dim() >= 2], "weight_decay": hyper["weight_decay"]},
                          {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=hyper["lr"], betas=tuple(hyper["betas"]), eps=hyper["eps"], fused=True)
    x, y = (torch.from_numpy(a).long().to(device) for a in (ids, targets))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def one() -> torch.Tensor:
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hyper["grad_clip"] or math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(3):
        one()
    sync()
    done, t0 = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - t0 < seconds):
        loss = one()  # no host sync inside the loop, as the CUDA worker between log windows
        done += 1
    last = float(loss)
    sync()
    elapsed = time.perf_counter() - t0
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "dtype": "bf16 autocast" if dtype else "fp32", "steps": done, "seconds": round(elapsed, 4),
              "steps_per_s": done / elapsed, "tokens_per_s": done * ids.size / elapsed, "last_loss": last}
    return result


def run(args) -> int:
    faulthandler.enable()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still leaves the JSON
    res = Results(Path(args.out))
    carry = Path(args.carry)
    data = res.data
    try:
        return run_stages(args, res, carry, data)
    except BaseException as e:  # noqa: BLE001 - SystemExit from SIGTERM, KeyboardInterrupt: the JSON first
        return res.finish(f"{data.get('stage')}: {one_line(e)}")


def run_stages(args, res: Results, carry: Path, data: dict) -> int:
    with res.stage("environment"):
        import torch
        data["environment"] = {"python": platform.python_version(), "numpy": np.__version__,
                               "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                               "vulkan": vulkan_environment()}
    with res.stage("load"):
        directory = carry / "vulkan"
        meta = json.loads((directory / "meta.json").read_text())
        vmfb = (directory / "step.vmfb").read_bytes()
        if hashlib.sha256(vmfb).hexdigest() != meta["vmfb_sha256"]:
            raise ValueError("step.vmfb does not match meta.json's sha256")
        batch = np.load(directory / "batch.npz")
        ids, targets = (np.ascontiguousarray(batch[k], np.int32) for k in ("ids", "targets"))
        reference = dict(np.load(directory / "reference.npz"))
        model = build_model(meta["config"], meta["seed"])
        names = [p["name"] for p in meta["params"]]
        init_matches = weights_sha256(model, names) == meta["init_sha256"]
        weights = [dict(model.named_parameters())[n].detach().numpy().copy() for n in names]
        del model
        data["model"] = {k: meta[k] for k in ("preset", "overrides", "batch", "seq", "hyper")}
        data["model"].update(params=sum(w.size for w in weights), tokens_per_step=int(ids.size),
                             init_matches_prepare=init_matches, prepared_with=meta["iree"])
    if not res.done("load"):
        return res.finish()
    tokens = int(ids.size)

    with res.stage("torch"):
        data["torch"] = {}
        import torch
        variants = [("cuda_fp32", "cuda", None), ("cuda_bf16", "cuda", torch.bfloat16)] \
            if torch.cuda.is_available() else [("cpu_fp32", "cpu", None)]
        for key, device, dtype in variants:
            data["torch"][key] = time_torch(meta, ids, targets, device, dtype, args.steps, args.seconds)
            res.write()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the GPU's memory back for Vulkan

    with res.stage("iree"):
        rt, how = import_iree_runtime(carry)
        from iree.runtime import version as runtime_version
        devices = list_devices(rt)
        chosen = pick(devices)
        data["vulkan"] = {"iree_runtime": runtime_version.VERSION, "iree_runtime_from": how,
                          "devices": devices, "device": chosen}
        if runtime_version.VERSION != meta["iree"]["runtime"]:
            data["vulkan"]["warning"] = (f"compiled with IREE {meta['iree']['compiler']}, "
                                         f"running {runtime_version.VERSION}")
        device = rt.get_driver("vulkan").create_device(chosen)
        step = VulkanStep(rt, device, vmfb, meta)
    if not res.done("iree"):
        return res.finish()

    try:
        with res.stage("self_check"):
            if not init_matches:
                raise RuntimeError("this torch builds other initial weights from the seed than prepare's: "
                                   "the saved reference does not apply")
            data["self_check"] = self_check(step, weights, ids, targets, meta, reference)
        with res.stage("vulkan_timing"):
            data["vulkan"]["timing"] = time_vulkan(step, weights, ids, targets, args.steps, args.seconds, tokens)
            vk = data["vulkan"]["timing"]["steps_per_s"]
            data["vulkan_vs_torch"] = {k: vk / v["steps_per_s"] for k, v in data.get("torch", {}).items()}
    finally:
        step.close()
    data["foreign_modules"] = sorted(m for m in FOREIGN if m in sys.modules)  # must be [] for the remote
    return res.finish()


# ====================================================================== command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="compile, check and save the step here (the project's venv)")
    p.add_argument("--carry", default=".gpu-carry")
    p.add_argument("--preset", default="chat-7m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                   help="override an integer field of the preset, e.g. n_layer=3")
    p.add_argument("--smoke", action="store_true", help="a tiny model and batch (implies --no-downloads)")
    p.add_argument("--no-downloads", action="store_true", help="skip the runtime wheel and libvulkan1 .deb")
    r = sub.add_parser("run", help="check and time the carried step (needs torch, numpy, iree.runtime)")
    r.add_argument("--carry", default=".gpu-carry")
    r.add_argument("--out", required=True)
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--seconds", type=float, default=45.0, help="bound on each timed loop")
    args = parser.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
