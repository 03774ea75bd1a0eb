"""Matrix products: OpenBLAS' sgemm/dgemm bound for @njit code (binding) and the small-row micro-kernels (microgemm)."""
