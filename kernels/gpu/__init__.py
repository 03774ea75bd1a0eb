"""CUDA support: detection, CuPy/numba-cuda interop and the simulator switch (cuda), and the block-level primitives the CUDA kernels share (block)."""
