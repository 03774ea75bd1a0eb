"""The torch-backend tests: collected only in a process whose Keras backend is torch
(tests/test_torch_backend.py runs them so, in a subprocess of the main suite)."""

import os

if os.environ.get("KERAS_BACKEND") != "torch":
    collect_ignore_glob = ["test_*.py"]
