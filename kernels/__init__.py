"""kernels: our own low-level code, below model/ (kernels imports nothing from model, tasks, flows or serve).

On a runtime path today:
    cuda/rmsnorm.py, cuda/cross_entropy.py   Triton RMSNorm and linear + cross-entropy: the model runs every
                                             RMSNorm and its LM head + loss through them when training on CUDA
                                             with `train.kernels: triton` (model/transformer.py `use_kernels`;
                                             the default, `torch`, uses none of our kernels)
    cross_entropy.py                         the same linear + cross-entropy in plain torch, chunked (any
                                             device, `train.kernels: chunked`): never the batch's fp32 logits
    ternary_codes.py                         the 2-bit packed ternary weight format and the activations' int8
                                             codes (pure torch): model/quant.py packs a ternary model's bundle
                                             and quantizes BitLinear's inputs with it
    ternary_matmul.py                        ternary linears on integer codes by device type: a served ternary
                                             model (model/ternary_linear.py) runs every block linear through
    ternary_cpu.py, ternary_cpu.c            the CPU entry: a C kernel on the packed codes (AVX-512 VNNI),
                                             compiled at first use; torch._int_mm without a C compiler
    cuda/ternary_matmul.py                   the CUDA entry: Triton matmul reading the 2-bit packed codes

Tested building blocks, on no runtime path today (nothing in model, tasks or serve calls them):
    vulkan/adamw.comp, ternary_matmul.comp   GLSL compute shaders, compiled with glslc and dispatched by
                                             vulkan/runtime.py; tests/kernels/test_vulkan_kernels.py. The Vulkan
                                             training step (tasks/train/backends/vulkan.py) does not use them:
                                             IREE compiles its whole step, AdamW included.

cuda/ needs the cuda extra (triton; on CPU tensors the kernels run in Triton's interpreter, which is how the
tests check them without a GPU); vulkan/ needs the vulkan extra (the `vulkan` package) plus glslc and a
Vulkan device. `import kernels`, kernels.cross_entropy, kernels.ternary_codes and the CPU ternary kernel need
neither (the C kernel wants a C compiler, `cc` or $CC, and falls back to torch without one).
"""
