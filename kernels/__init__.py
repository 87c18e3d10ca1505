"""Our own GPU code: cuda/ (Triton kernels, testable on CPU through Triton's interpreter) and vulkan/ (GLSL
compute shaders compiled to SPIR-V with glslc, dispatched through the `vulkan` package)."""
