"""Where a training step runs: the device registry and the Vulkan step."""
