"""Argument validation of the public entry points (validate) and the float64 references' shared masked time loop (reference)."""
