"""On a subprocess's PYTHONPATH (the recipe run by the vLLM tests): puts the test-only CPU shim in place at start."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpu_shim  # noqa: E402

cpu_shim.install()
