"""Our own GLSL compute kernels (adamw.comp, ternary_matmul.comp) on Vulkan; see runtime.py for why and how.

Tested building blocks on no runtime path today: nothing in model, tasks or serve dispatches them (the Vulkan
training step, tasks/train/backends/vulkan.py, has IREE compile its whole step, AdamW included);
tests/test_vulkan_kernels.py runs them on lavapipe. Importing this package needs nothing optional; running a
kernel needs the vulkan extra (pip install 'chat-pipeline[vulkan]'), glslc and a Vulkan device
(`available()`, `unavailable_reason()`).
"""
from chatpipe.kernels.vulkan.runtime import (
                                    ShaderCompileError,
                                    VulkanKernelError,
                                    adamw_step,
                                    available,
                                    compile_shader,
                                    ternary_matmul,
                                    unavailable_reason,
)

__all__ = ["ShaderCompileError", "VulkanKernelError", "adamw_step", "available", "compile_shader",
           "ternary_matmul", "unavailable_reason"]
