"""Math the CPU cores share: fast sigmoid/tanh (functions), activations, time-major layout and masks (common), recurrent dropout's products (dropout)."""
