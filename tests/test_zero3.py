"""ResRL on a model partitioned by DeepSpeed ZeRO-3, on the CPU: two processes (torchrun, gloo), every weight
partitioned. The hidden states ResRL captures and the weights it computes equal those of the unpartitioned model in
one process, with in-step subspaces and with rollout subspaces for a group split between the processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_zero3_partitioned_model_gives_the_unpartitioned_weights(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "zero3_worker.py"),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"zero3-{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        for subspace in ("step", "rollout"):
            result = report[subspace]
            assert result["partitioned"], "ZeRO-3 should hold no weight whole"
            assert result["loss_finite"]
            assert result["weight_max_abs_error"] < 1e-4
    for subspace in ("step", "rollout"):
        assert sum(report[subspace]["weighted_tokens"] for report in reports) > 0
