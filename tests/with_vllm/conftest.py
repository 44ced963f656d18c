"""Fixtures of the vLLM tests, which `make test-vllm` runs in their own environment (vLLM pins its own transformers).

They run on vLLM's CPU build with a patch (resrl_trl/testing/vllm_cpu.py) and the embedded SmolLM2-135M-Instruct,
written out once as a plain model folder, since vLLM does not load the GGUF.
"""

from __future__ import annotations

import os

import pytest
from vllm_support import VLLM_CPU_ENV, release_trainers

from resrl_trl.models import CACHE_ENV, plain_model_folder
from resrl_trl.testing import vllm_cpu

os.environ.update(VLLM_CPU_ENV)


@pytest.fixture(scope="session", autouse=True)
def vllm_cpu_shim() -> None:
    vllm_cpu.install()


@pytest.fixture(autouse=True)
def release_engines() -> None:
    yield
    release_trainers()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The embedded model as a plain folder, in a cache that the subprocesses of the tests share."""
    os.environ.setdefault(CACHE_ENV, str(tmp_path_factory.mktemp("resrl-trl-cache")))
    return plain_model_folder()
