"""Our own GLSL compute kernels on Vulkan: compile `.comp` -> SPIR-V with glslc, dispatch with the `vulkan` package.

Why this exists: the Vulkan training step (tasks/train/backends/vulkan.py) goes through IREE, which compiles whole torch
graphs but gives no say over the kernels, and is slow on some of them (its AdamW over 1M floats took 20 ms on
lavapipe against 3.3 ms hand-written). This module is the escape hatch next to it, in the way ggml does it: a
few hand-written GLSL compute shaders (adamw.comp: a fused AdamW step; ternary_matmul.comp: a matmul reading
2-bit packed ternary weights straight from kernels/ternary_codes.py's format), compiled at first use and run
on any Vulkan device: Mesa's lavapipe (CPU) in CI, ANV/RADV/NVIDIA on real machines.

Why the `vulkan` cffi package (pip `vulkan==1.3.275.1`) and not `wgpu`: it loads our SPIR-V as is and has
push constants (wgpu needs WGSL, or SPIR-V through a native-only feature flag, and push constants through
another), it has no version bug to pin around (wgpu 0.32.0 has one), and it is a thin binding over the loader
(libvulkan1) with no Rust runtime in between, so what we dispatch is exactly what we wrote. The cost is
boilerplate, all of it in `_Device` below (instance, device pick, queue, buffers, pipeline, dispatch, wait).

Memory: every buffer is HOST_VISIBLE|HOST_COHERENT (DEVICE_LOCAL too where there is such a type, as on lavapipe
and integrated GPUs), mapped once; upload/download are memcpys. That is right for lavapipe and iGPUs; on a
discrete GPU it works but reads over PCIe (a staging copy would be the next step there).

Cache: the SPIR-V lands in $CHATPIPE_SPIRV_CACHE (default ~/.cache/chatpipe/spirv) as
`<stem>-<sha256(source + glslc flags)[:16]>.spv`, so an edited shader recompiles and an unchanged one never does.

Public API (numpy float32, C-contiguous):
    available() -> bool                    a Vulkan device and glslc are there (unavailable_reason() says why not)
    adamw_step(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step) -> None
                                           one torch.optim.AdamW step; param, m, v are updated IN PLACE
    ternary_matmul(x, packed, scale, shape) -> y    y[M, N] = x[M, K] @ unpack_ternary(packed, scale, shape).T
    compile_shader(path) -> bytes          the SPIR-V for a .comp file (ShaderCompileError if glslc fails/is missing)
Env: CHATPIPE_VULKAN_DEVICE=<index> picks a physical device (default: discrete > integrated > virtual > CPU).
"""
from __future__ import annotations

import atexit
import hashlib
import math
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SHADER_DIR = Path(__file__).resolve().parent
GLSLC_FLAGS = ("-fshader-stage=compute", "--target-env=vulkan1.0", "-O")
_WG_ADAMW = 256   # local_size_x of adamw.comp
_TILE = 32        # outputs per workgroup along m and n in ternary_matmul.comp (8 invocations x 4)
MAX_CHUNK_ELEMS = 1 << 24   # most float32 elements bound per buffer per dispatch (also capped by the device)


class VulkanKernelError(RuntimeError):
    """A Vulkan kernel could not run: no device, no glslc, a bad shader, or bad inputs for the device."""


class ShaderCompileError(VulkanKernelError):
    """glslc is missing or rejected a shader; the message is one line naming the file and the first error."""


# ---------------------------------------------------------------------------------------------------------
# GLSL -> SPIR-V, cached by source hash

def cache_dir() -> Path:
    return Path(os.environ.get("CHATPIPE_SPIRV_CACHE") or Path.home() / ".cache" / "chatpipe" / "spirv")


def compile_shader(path: str | os.PathLike) -> bytes:
    """SPIR-V bytes for a GLSL compute shader, compiled by glslc on first use and cached by source hash."""
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as e:
        raise ShaderCompileError(f"cannot read shader {path}: {e.strerror}") from None
    digest = hashlib.sha256(source + "\0".join(GLSLC_FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"{path.stem}-{digest}.spv"
    if target.is_file():
        return target.read_bytes()
    glslc = shutil.which("glslc")
    if glslc is None:
        raise ShaderCompileError(f"glslc not found on PATH, needed to compile {path.name} "
                                 "(apt-get install glslc, or the Vulkan SDK)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".spv", dir=target.parent)
    os.close(fd)
    try:
        # -I so a shader can #include a sibling file; the source is passed by path so errors name it
        proc = subprocess.run([glslc, *GLSLC_FLAGS, f"-I{path.parent}", str(path), "-o", tmp],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else f"exit {proc.returncode}")
            raise ShaderCompileError(f"glslc failed on {path}: {first.strip()}")
        os.replace(tmp, target)   # atomic: concurrent processes never see a half-written .spv
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# The Vulkan boilerplate, in one place

class _Buffer:
    def __init__(self, handle, memory, nbytes: int, mapped):
        self.handle, self.memory, self.nbytes = handle, memory, nbytes
        self.bytes = np.frombuffer(mapped, dtype=np.uint8, count=nbytes)   # persistent, coherent mapping

    def upload(self, a: np.ndarray) -> None:
        flat = a.reshape(-1).view(np.uint8)
        self.bytes[:flat.size] = flat

    def view(self, dtype, count: int) -> np.ndarray:
        return self.bytes[:count * np.dtype(dtype).itemsize].view(dtype)


class _Pipeline:
    def __init__(self, pipeline, layout, set_layout, module, descriptor_set, n_buffers: int, push_size: int):
        self.pipeline, self.layout, self.set_layout, self.module = pipeline, layout, set_layout, module
        self.descriptor_set, self.n_buffers, self.push_size = descriptor_set, n_buffers, push_size


class _Device:
    """One Vulkan device with one compute queue; synchronous dispatches (submit, then wait on a fence)."""

    def __init__(self):
        import vulkan as vk  # optional dependency: imported here so `import kernels.vulkan.runtime` never fails
        self.vk = vk
        self._buffers: list[_Buffer] = []
        self._pipelines: dict[tuple, _Pipeline] = {}
        self._scratch: dict[str, _Buffer] = {}
        app = vk.VkApplicationInfo(pApplicationName="chatpipe", applicationVersion=1, pEngineName="chatpipe",
                                   engineVersion=1, apiVersion=vk.VK_MAKE_VERSION(1, 0, 0))
        self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
        self.physical, self.queue_family = self._pick()
        props = vk.vkGetPhysicalDeviceProperties(self.physical)
        name = props.deviceName
        self.name = name if isinstance(name, str) else vk.ffi.string(name).decode()
        self.max_range = int(props.limits.maxStorageBufferRange)
        self.max_groups = tuple(int(props.limits.maxComputeWorkGroupCount[i]) for i in range(3))
        queue_info = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=self.queue_family, queueCount=1,
                                                pQueuePriorities=[1.0])
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(pQueueCreateInfos=[queue_info]), None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.queue_family, 0)
        self.command_pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            flags=vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, queueFamilyIndex=self.queue_family), None)
        self.cmd = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
            commandPool=self.command_pool, level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        self.descriptor_pool = vk.vkCreateDescriptorPool(self.device, vk.VkDescriptorPoolCreateInfo(
            maxSets=64, pPoolSizes=[vk.VkDescriptorPoolSize(type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                             descriptorCount=256)]), None)
        self.fence = vk.vkCreateFence(self.device, vk.VkFenceCreateInfo(), None)
        mem = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        self._memory_types = [int(mem.memoryTypes[i].propertyFlags) for i in range(mem.memoryTypeCount)]

    def _pick(self):
        vk = self.vk
        candidates = []
        for index, pd in enumerate(vk.vkEnumeratePhysicalDevices(self.instance)):
            families = vk.vkGetPhysicalDeviceQueueFamilyProperties(pd)
            compute = [i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT]
            if compute:
                kind = int(vk.vkGetPhysicalDeviceProperties(pd).deviceType)
                rank = {vk.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: 0, vk.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: 1,
                        vk.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: 2, vk.VK_PHYSICAL_DEVICE_TYPE_CPU: 3}.get(kind, 4)
                candidates.append((rank, index, pd, compute[0]))
        if not candidates:
            raise VulkanKernelError("no Vulkan device with a compute queue "
                                    "(for CPU-only machines: apt-get install mesa-vulkan-drivers libvulkan1)")
        wanted = os.environ.get("CHATPIPE_VULKAN_DEVICE")
        if wanted:
            chosen = [c for c in candidates if c[1] == int(wanted)]
            if not chosen:
                raise VulkanKernelError(f"CHATPIPE_VULKAN_DEVICE={wanted}: no such compute-capable device "
                                        f"(have {[c[1] for c in candidates]})")
            return chosen[0][2:]
        return min(candidates, key=lambda c: c[:2])[2:]

    # -- buffers
    def buffer(self, nbytes: int) -> _Buffer:
        vk = self.vk
        nbytes = max(4, -(-nbytes // 4) * 4)
        handle = vk.vkCreateBuffer(self.device, vk.VkBufferCreateInfo(
            size=nbytes, usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
            sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        req = vk.vkGetBufferMemoryRequirements(self.device, handle)
        host = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        fits = [i for i, flags in enumerate(self._memory_types)
                if req.memoryTypeBits >> i & 1 and flags & host == host]
        if not fits:
            vk.vkDestroyBuffer(self.device, handle, None)
            raise VulkanKernelError(f"{self.name}: no host-visible coherent memory type for storage buffers")
        best = min(fits, key=lambda i: not self._memory_types[i] & vk.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
        memory = vk.vkAllocateMemory(self.device, vk.VkMemoryAllocateInfo(
            allocationSize=req.size, memoryTypeIndex=best), None)
        vk.vkBindBufferMemory(self.device, handle, memory, 0)
        mapped = vk.vkMapMemory(self.device, memory, 0, req.size, 0)
        buf = _Buffer(handle, memory, nbytes, mapped)
        self._buffers.append(buf)
        return buf

    def scratch(self, role: str, nbytes: int) -> _Buffer:
        """A reusable buffer of at least nbytes for one argument slot of a kernel (grown, never shrunk)."""
        buf = self._scratch.get(role)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self._free(buf)
            buf = self._scratch[role] = self.buffer(nbytes)
        return buf

    def _free(self, buf: _Buffer) -> None:
        vk = self.vk
        self._buffers.remove(buf)
        vk.vkUnmapMemory(self.device, buf.memory)
        vk.vkDestroyBuffer(self.device, buf.handle, None)
        vk.vkFreeMemory(self.device, buf.memory, None)

    # -- pipelines
    def pipeline(self, shader: str | os.PathLike, n_buffers: int, push_size: int) -> _Pipeline:
        key = (str(shader), n_buffers, push_size)
        if key in self._pipelines:
            return self._pipelines[key]
        vk = self.vk
        spirv = compile_shader(shader)
        module = vk.vkCreateShaderModule(self.device, vk.VkShaderModuleCreateInfo(
            codeSize=len(spirv), pCode=spirv), None)
        bindings = [vk.VkDescriptorSetLayoutBinding(binding=i, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                    descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT)
                    for i in range(n_buffers)]
        set_layout = vk.vkCreateDescriptorSetLayout(self.device, vk.VkDescriptorSetLayoutCreateInfo(
            pBindings=bindings), None)
        ranges = [vk.VkPushConstantRange(stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=push_size)]
        layout = vk.vkCreatePipelineLayout(self.device, vk.VkPipelineLayoutCreateInfo(
            pSetLayouts=[set_layout], pPushConstantRanges=ranges if push_size else None), None)
        stage = vk.VkPipelineShaderStageCreateInfo(stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName="main")
        pipeline = vk.vkCreateComputePipelines(self.device, vk.VK_NULL_HANDLE, 1, [
            vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)], None)[0]
        descriptor_set = vk.vkAllocateDescriptorSets(self.device, vk.VkDescriptorSetAllocateInfo(
            descriptorPool=self.descriptor_pool, pSetLayouts=[set_layout]))[0]
        p = self._pipelines[key] = _Pipeline(pipeline, layout, set_layout, module, descriptor_set,
                                             n_buffers, push_size)
        return p

    # -- dispatch
    def dispatch(self, p: _Pipeline, buffers: list[tuple[_Buffer, int]], push: bytes,
                 groups: tuple[int, int, int]) -> None:
        """Run p once over `groups` workgroups with buffers bound as (buffer, byte size) at bindings 0..n-1,
        and wait for it. Host writes before the call are visible to the shader (queue submit guarantees it);
        shader writes are visible to the host after it (the barrier below, then the fence)."""
        vk = self.vk
        if len(buffers) != p.n_buffers or len(push) != p.push_size:
            raise VulkanKernelError(f"dispatch: {len(buffers)} buffers / {len(push)} push bytes, "
                                    f"pipeline wants {p.n_buffers} / {p.push_size}")
        if any(g > lim for g, lim in zip(groups, self.max_groups)):
            raise VulkanKernelError(f"dispatch: {groups} workgroups exceeds the device limit {self.max_groups}")
        infos = [vk.VkDescriptorBufferInfo(buffer=b.handle, offset=0, range=max(4, -(-size // 4) * 4))
                 for b, size in buffers]
        writes = [vk.VkWriteDescriptorSet(dstSet=p.descriptor_set, dstBinding=i, descriptorCount=1,
                                          descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, pBufferInfo=[info])
                  for i, info in enumerate(infos)]
        vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        cmd = self.cmd
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo(
            flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
        vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, p.pipeline)
        vk.vkCmdBindDescriptorSets(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, p.layout, 0, 1, [p.descriptor_set], 0,
                                   None)
        if push:
            vk.vkCmdPushConstants(cmd, p.layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, len(push),
                                  vk.ffi.from_buffer(push))
        vk.vkCmdDispatch(cmd, *groups)
        barrier = vk.VkMemoryBarrier(srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT,
                                     dstAccessMask=vk.VK_ACCESS_HOST_READ_BIT)
        vk.vkCmdPipelineBarrier(cmd, vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, vk.VK_PIPELINE_STAGE_HOST_BIT, 0,
                                1, [barrier], 0, None, 0, None)
        vk.vkEndCommandBuffer(cmd)
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(pCommandBuffers=[cmd])], self.fence)
        try:
            vk.vkWaitForFences(self.device, 1, [self.fence], vk.VK_TRUE, 120 * 10**9)
        finally:
            vk.vkResetFences(self.device, 1, [self.fence])

    def close(self) -> None:
        vk = self.vk
        vk.vkDeviceWaitIdle(self.device)
        for buf in list(self._buffers):
            self._free(buf)
        for p in self._pipelines.values():
            vk.vkDestroyPipeline(self.device, p.pipeline, None)
            vk.vkDestroyPipelineLayout(self.device, p.layout, None)
            vk.vkDestroyDescriptorSetLayout(self.device, p.set_layout, None)
            vk.vkDestroyShaderModule(self.device, p.module, None)
        self._pipelines.clear()
        vk.vkDestroyFence(self.device, self.fence, None)
        vk.vkDestroyDescriptorPool(self.device, self.descriptor_pool, None)
        vk.vkDestroyCommandPool(self.device, self.command_pool, None)
        vk.vkDestroyDevice(self.device, None)
        vk.vkDestroyInstance(self.instance, None)


_DEVICE: _Device | None = None
_UNAVAILABLE: str | None = None


def device() -> _Device:
    """The process-wide device, created on first use (VulkanKernelError if there is none)."""
    global _DEVICE
    if _DEVICE is None:
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())   # silences Mesa's WSI warning
        try:
            _DEVICE = _Device()
        except VulkanKernelError:
            raise
        except ImportError:  # the `vulkan` package (the vulkan extra) is not installed
            raise VulkanKernelError("our Vulkan kernels need the vulkan extra: pip install 'chat-pipeline[vulkan]'") \
                from None
        except Exception as e:  # noqa: BLE001 -- the loader's own errors (no libvulkan, no ICD) come as cffi/Vk exceptions
            raise VulkanKernelError(f"cannot open a Vulkan device: {type(e).__name__}: {e} "
                                    "(apt-get install libvulkan1 mesa-vulkan-drivers for lavapipe)") from None
        atexit.register(_close)
    return _DEVICE


def _close() -> None:
    global _DEVICE
    if _DEVICE is not None:
        _DEVICE.close()
        _DEVICE = None


def unavailable_reason() -> str | None:
    """None if our kernels can run here, else one line saying what is missing."""
    global _UNAVAILABLE
    if _DEVICE is not None:
        return None
    if _UNAVAILABLE is None:
        try:
            if shutil.which("glslc") is None:
                raise ShaderCompileError("glslc not found on PATH (apt-get install glslc)")
            device()
        except VulkanKernelError as e:
            _UNAVAILABLE = str(e)
            return _UNAVAILABLE
    return _UNAVAILABLE


def available() -> bool:
    """True if a Vulkan device and glslc are there, so adamw_step and ternary_matmul can run."""
    return unavailable_reason() is None


# ---------------------------------------------------------------------------------------------------------
# Kernels

def _f32(name: str, a: np.ndarray) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous float32 numpy array, got "
                         f"{type(a).__name__} {getattr(a, 'dtype', '')}")
    return a


def adamw_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, *, lr: float, beta1: float,
               beta2: float, eps: float, weight_decay: float, step: int) -> None:
    """One torch.optim.AdamW step (step counts from 1, as torch's state['step'] after its increment).

    param, m (exp_avg) and v (exp_avg_sq) are updated IN PLACE; grad is read. All four are C-contiguous float32
    arrays of one size (any shape). Arrays larger than the device's storage-buffer range go in chunks.
    """
    arrays = {"param": param, "grad": grad, "m": m, "v": v}
    for name, a in arrays.items():
        _f32(name, a)
        if not a.flags.writeable and name != "grad":
            raise ValueError(f"{name}: read-only array, it is updated in place")
    if len({a.size for a in arrays.values()}) != 1:
        raise ValueError(f"adamw_step: sizes differ: { {k: a.size for k, a in arrays.items()} }")
    if step < 1:
        raise ValueError(f"adamw_step: step must be >= 1 (got {step})")
    n = param.size
    if n == 0:
        return
    dev = device()
    p = dev.pipeline(SHADER_DIR / "adamw.comp", 4, 32)
    # scalar factors in float64 (Python floats), rounded to float32 once: what torch's AdamW passes its kernels
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    factors = (1.0 - lr * weight_decay, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, math.sqrt(bc2), eps)
    chunk = min(n, dev.max_range // 4, MAX_CHUNK_ELEMS)
    bufs = [dev.scratch(f"adamw.{name}", chunk * 4) for name in arrays]
    flats = [a.reshape(-1) for a in arrays.values()]
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        for buf, flat in zip(bufs, flats):
            buf.upload(flat[start:start + count])
        push = struct.pack("<7fI", *factors, count)
        groups = min(math.ceil(count / _WG_ADAMW), dev.max_groups[0])
        dev.dispatch(p, [(b, count * 4) for b in bufs], push, (groups, 1, 1))
        for buf, flat, name in zip(bufs, flats, arrays):
            if name != "grad":
                flat[start:start + count] = buf.view(np.float32, count)


def ternary_matmul(x: np.ndarray, packed, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """y[M, N] = x[M, K] @ W.T, W = kernels.ternary_codes.unpack_ternary(packed, scale, shape) decoded in the shader.

    packed: the uint8 codes from model.quant.pack_ternary (numpy array, or a CPU torch tensor), >= ceil(N*K/4)
    bytes; shape: (N, K), the [out, in] weight shape. x: C-contiguous float32 [M, K]. Returns a new float32 [M, N].
    """
    x = _f32("x", x)
    n_out, k = (int(d) for d in shape)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"ternary_matmul: x must be [M, {k}] for weight shape {tuple(shape)}, got {x.shape}")
    codes = np.ascontiguousarray(np.asarray(packed).reshape(-1))
    if codes.dtype != np.uint8:
        raise ValueError(f"ternary_matmul: packed must be uint8, got {codes.dtype}")
    need = -(-n_out * k // 4)
    if codes.size < need:
        raise ValueError(f"ternary_matmul: packed has {codes.size} bytes, shape {tuple(shape)} needs {need}")
    m_rows = x.shape[0]
    y = np.empty((m_rows, n_out), dtype=np.float32)
    if y.size == 0:
        return y
    if k == 0:
        y.fill(0.0)
        return y
    dev = device()
    words = -(-need // 4) + 1   # + 1 zero word: the shader's two-word window may read one past the last code
    if words * 4 > dev.max_range or n_out * k >= 2**32:
        raise VulkanKernelError(f"ternary_matmul: weight {tuple(shape)} is larger than one storage buffer "
                                f"({dev.max_range} bytes) allows")
    # rows of x per dispatch: x and y blocks must fit a storage buffer, and the y grid the workgroup limit
    rows = min(m_rows, min(dev.max_range // 4, MAX_CHUNK_ELEMS) // max(k, n_out), dev.max_groups[1] * _TILE)
    if rows == 0 or math.ceil(n_out / _TILE) > dev.max_groups[0]:
        raise VulkanKernelError(f"ternary_matmul: x {x.shape} / weight {tuple(shape)} too large for one dispatch")
    p = dev.pipeline(SHADER_DIR / "ternary_matmul.comp", 3, 16)
    wbuf = dev.scratch("tmm.codes", words * 4)
    wbuf.bytes[:need] = codes[:need]
    wbuf.bytes[need:words * 4] = 0
    xbuf, ybuf = dev.scratch("tmm.x", rows * k * 4), dev.scratch("tmm.y", rows * n_out * 4)
    for start in range(0, m_rows, rows):
        count = min(rows, m_rows - start)
        xbuf.upload(x[start:start + count])
        push = struct.pack("<3If", count, n_out, k, scale)
        dev.dispatch(p, [(xbuf, count * k * 4), (wbuf, words * 4), (ybuf, count * n_out * 4)], push,
                     (math.ceil(n_out / _TILE), math.ceil(count / _TILE), 1))
        y[start:start + count] = ybuf.view(np.float32, count * n_out).reshape(count, n_out)
    return y
