"""The cores' call table and ABI (abi) and Numba's disk cache stamped with the source trees (cache)."""
