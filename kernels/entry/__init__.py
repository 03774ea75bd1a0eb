"""The public entry points (dispatch: NumPy to the CPU kernels, CuPy to the CUDA ones) and a call's `saved` as frameworks carry it (saved)."""
