"""Splitting a call's batch over the cores (parts) and the scratch buffers it reuses (pool)."""
