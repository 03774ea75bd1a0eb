"""Side-by-side benchmarks: fastrnn beside Keras, PyTorch and the NumPy GEMM floor.

Run ``python -m bench`` for the table, or ``pytest bench/ --benchmark-only``.
"""
