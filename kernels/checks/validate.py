"""Argument checks shared by every launcher.

Kernels never see bad shapes: Numba does no bounds checks, so a wrong index is
silent memory corruption. Everything is checked here, once, at the public
boundary, and every error names the argument, what it got and what it needs.
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Activation codes understood by the kernels. Every one of them has a derivative
# that can be written in terms of its own output y = act(v), which is what lets
# the backward pass work from saved activations alone.
ACTIVATIONS = {
    "tanh": 0,
    "relu": 1,
    "sigmoid": 2,
    "linear": 3,
    "hard_sigmoid": 4,
}


def activation_code(name, argname="activation"):
    """Map an activation name (or None, meaning linear) to its kernel code."""
    if name is None:
        return ACTIVATIONS["linear"]
    if not isinstance(name, str):
        raise TypeError(
            f"{argname} must be one of {sorted(ACTIVATIONS)} or None, got {name!r} "
            f"of type {type(name).__name__}"
        )
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(
            f"{argname}={name!r} is not supported by the fastrnn kernels; "
            f"use one of {sorted(ACTIVATIONS)} (None means linear)"
        )
    return ACTIVATIONS[key]


def float_array(value, name, dtype=None, xp=np):
    """Check `value` is a float32/float64 ndarray of module `xp` (of `dtype` when given).

    Non-contiguous and Fortran-ordered arrays are copied to C order. Returns
    the C-contiguous array.
    """
    if not isinstance(value, xp.ndarray):
        module = xp.__name__
        hint = ""
        if module == "numpy" and type(value).__module__.split(".")[0] == "cupy":
            hint = " (x is a NumPy array: pass every array as NumPy, or all as CuPy for the GPU)"
        elif module == "cupy":
            hint = " (x is a CuPy array: every array of one call must live on the GPU)"
        raise TypeError(
            f"{name} must be a {module}.ndarray of float32 or float64, got "
            f"{type(value).__module__.split('.')[0]}.{type(value).__name__}{hint}"
        )
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got dtype {value.dtype}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {value.dtype} but x has dtype {dtype}; all float arrays "
            f"must share one dtype (cast with .astype(np.{dtype}))"
        )
    if not value.flags.c_contiguous:
        value = xp.ascontiguousarray(value)
    return value


def expect_shape(value, name, shape, meaning):
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} {meaning}, got shape {value.shape}")


def check_x(x, xp=np, empty_batch=False):
    """x as a C-contiguous float [B, T, I]. `empty_batch`: B = 0 is allowed (the
    public entry points answer it without running a kernel, see kernels.entry.dispatch);
    an empty time or feature axis never is."""
    x = float_array(x, "x", xp=xp)
    if x.ndim != 3:
        raise ValueError(f"x must have rank 3, [batch, time, features], got shape {x.shape}")
    if empty_batch and x.shape[0] == 0:
        if 0 in x.shape[1:]:
            raise ValueError(f"x must have time and feature sizes >= 1 (an empty batch is "
                             f"allowed), got shape {x.shape}")
    elif 0 in x.shape:
        raise ValueError(
            f"x must have batch, time and feature sizes >= 1, got shape {x.shape}"
        )
    return x


def check_mask(mask, batch, time, xp=np):
    """Return the mask as a C-contiguous bool [B, T] array, or None."""
    if mask is None:
        return None
    if not isinstance(mask, xp.ndarray):
        raise TypeError(f"mask must be a {xp.__name__}.ndarray of bool or None, got "
                        f"{type(mask).__module__.split('.')[0]}.{type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must have dtype bool, got dtype {mask.dtype} (use mask.astype(bool))")
    expect_shape(mask, "mask", (batch, time), "[batch, time] matching x")
    return xp.ascontiguousarray(mask)


def check_state(state, name, batch, units, dtype, xp=np):
    """Return the initial state as C-contiguous [B, H], zeros when None."""
    if state is None:
        return xp.zeros((batch, units), dtype=dtype)
    state = float_array(state, name, dtype, xp)
    expect_shape(state, name, (batch, units), "[batch, units]")
    return state


def check_weights(x, kernel, recurrent_kernel, gates, bias, bias_shape, xp=np):
    """Validate kernel [I, G*H], recurrent_kernel [H, G*H] (if given) and bias.

    `recurrent_kernel` may be None for cells without one (minGRU), in which
    case H is taken from the kernel's columns. Returns (kernel,
    recurrent_kernel, bias, units).
    """
    dtype = x.dtype
    features = x.shape[2]
    kernel = float_array(kernel, "kernel", dtype, xp)
    if kernel.ndim != 2 or kernel.shape[0] != features or kernel.shape[1] % gates:
        raise ValueError(
            f"kernel must have shape [input_features, {gates} * units] = [{features}, {gates}*H], "
            f"got shape {kernel.shape}"
        )
    units = kernel.shape[1] // gates
    if units == 0:
        raise ValueError(f"kernel must have at least {gates} columns (units >= 1), got shape {kernel.shape}")
    if recurrent_kernel is not None:
        recurrent_kernel = float_array(recurrent_kernel, "recurrent_kernel", dtype, xp)
        expect_shape(
            recurrent_kernel, "recurrent_kernel", (units, gates * units),
            f"[units, {gates} * units] (units={units} from kernel)",
        )
    if bias is not None:
        bias = float_array(bias, "bias", dtype, xp)
        expect_shape(bias, "bias", bias_shape(units), f"(units={units} from kernel)")
    return kernel, recurrent_kernel, bias, units


def check_recurrent_mask(mask, batch, width, dtype, xp=np, meaning="[batch, units]"):
    """Recurrent dropout mask [B, width] in x's dtype (width H, or G*H: one mask per
    gate side by side); an empty [0, 0] array when None."""
    if mask is None:
        return xp.zeros((0, 0), dtype)
    mask = float_array(mask, "recurrent_mask", dtype, xp)
    expect_shape(mask, "recurrent_mask", (batch, width), meaning)
    return mask


def check_grad(value, name, shape, dtype, xp=np):
    """Upstream gradient: None means zeros; else same dtype and shape."""
    if value is None:
        return xp.zeros(shape, dtype=dtype)
    value = float_array(value, name, dtype, xp)
    expect_shape(value, name, shape, "matching the forward output")
    return value


def check_saved(saved, cls, fn):
    # The exact class: the CUDA `saved` classes subclass the CPU ones.
    if type(saved) is not cls:
        raise TypeError(
            f"saved must be the third value returned by {fn}, got {type(saved).__name__}"
        )
