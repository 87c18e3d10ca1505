"""Our own GLSL compute kernels (adamw.comp, ternary_matmul.comp) on Vulkan; see runtime.py for why and how."""
from kernels.vulkan.runtime import (ShaderCompileError, VulkanKernelError, adamw_step, available, compile_shader,
                                    ternary_matmul, unavailable_reason)

__all__ = ["ShaderCompileError", "VulkanKernelError", "adamw_step", "available", "compile_shader",
           "ternary_matmul", "unavailable_reason"]
