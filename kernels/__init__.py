"""Our own GPU code: cuda/ (Triton kernels, testable on CPU through Triton's interpreter), vulkan/ (GLSL, later)."""
