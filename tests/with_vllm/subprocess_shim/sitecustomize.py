"""On a subprocess's PYTHONPATH (the recipe run by the vLLM tests): puts the CPU patch for vLLM in place at start."""

from resrl_trl.testing import vllm_cpu

vllm_cpu.install()
