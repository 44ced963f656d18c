"""Two processes on the CPU (``accelerate launch --multi_gpu --num_processes 2`` with ``use_cpu``: torch.distributed
over gloo): the weights each process computes equal those of one process holding both processes' rows, whether
each process holds whole groups (in-step subspaces) or half a group (rollout subspaces), and metrics are summed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resrl_trl import SubspaceSettings, compute_residual_weights

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def launch_two_processes(out: Path, *worker_args: str) -> list[list[dict]]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [*LAUNCH, str(ROOT / "tests" / "distributed_worker.py"), "--out", str(out), *worker_args]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"records-{rank}.pt") for rank in (0, 1)]


@pytest.mark.parametrize(
    "subspace, batch_size, split_groups",
    [("step", 8, False), ("rollout", 2, True)],
)
def test_two_processes_weight_as_one(tmp_path, subspace, batch_size, split_groups):
    ranks = launch_two_processes(tmp_path, "--per_device_train_batch_size", str(batch_size))
    assert json.loads((tmp_path / "config.json").read_text())["resrl_subspace"] == subspace  # "auto" chose it
    history = {h["step"]: h for h in json.loads((tmp_path / "log_history.json").read_text()) if "loss" in h}
    steps = sorted({record["step"] for records in ranks for record in records})
    assert len(steps) == 2 and all(
        len([r for r in records if r["step"] == s]) == 1 for records in ranks for s in steps
    )
    weighted = 0
    for step in steps:
        parts = [next(r for r in records if r["step"] == step) for records in ranks]
        groups = [set(part["group_ids"].tolist()) for part in parts]
        if split_groups:
            assert groups[0] == groups[1], "each process should hold half of the same group"
        else:
            assert not groups[0] & groups[1]
            for part in parts:  # in-step subspaces need whole groups in every micro-batch
                assert torch.unique(part["group_ids"], return_counts=True)[1].tolist() == [4] * len(groups[0])
        assert parts[0]["group_seed"] == parts[1]["group_seed"]
        joined = {
            key: torch.cat([part[key] for part in parts])
            for key in ("hidden", "valid", "group_ids", "is_positive", "weights")
        }
        one_process = compute_residual_weights(
            joined["hidden"],
            joined["valid"],
            joined["group_ids"],
            joined["is_positive"],
            SubspaceSettings(rank=4),
            group_seed=parts[0]["group_seed"],
        )
        torch.testing.assert_close(joined["weights"], one_process.weights, atol=1e-4, rtol=0)
        weighted += int(one_process.stats.weighted_tokens)
        # Metrics are over both processes, each row counted once.
        logged = history[step + 1]
        assert logged["resrl/positives"] == int(joined["is_positive"].sum())
        assert logged["resrl/positives"] + logged["resrl/negatives"] == 2 * batch_size
        if one_process.stats.weighted_tokens > 0:
            expected = float(one_process.stats.weight_sum / one_process.stats.weighted_tokens)
            assert logged["resrl/neg_token_weight_mean"] == pytest.approx(expected, abs=1e-4)
    assert weighted > 0, "the parity reward should give mixed groups"
