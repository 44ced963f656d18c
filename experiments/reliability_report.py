"""The figures of docs/reliability.md: each fault scenario run on a tiny model on the CPU, outcomes printed as
Markdown.

    python experiments/reliability_report.py > docs/runs/reliability_report.md

The same scenarios (resrl_trl/testing/faults.py) are asserted by tests/test_reliability.py; this script prints
what happened in each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from resrl_trl.rewards import MathReward
from resrl_trl.testing.faults import CHECKPOINTED, HOSTILE, KillAtStep, Killed, losses
from resrl_trl.testing.tiny import checksum_reward, make_prompts_dataset, make_tokenizer, make_trainer


def resume_rows(tmp: Path) -> list[str]:
    rows = []
    tokenizer, dataset = make_tokenizer(), make_prompts_dataset()
    for subspace in ("step", "rollout"):
        settings = dict(CHECKPOINTED, resrl_subspace=subspace)
        whole = make_trainer(tmp / subspace / "whole", tokenizer, dataset, **settings)
        whole.train()
        killed = make_trainer(tmp / subspace / "killed", tokenizer, dataset, **settings)
        killed.add_callback(KillAtStep(3))
        try:
            killed.train()
        except Killed:
            pass
        resumed = make_trainer(tmp / subspace / "killed", tokenizer, dataset, **settings)
        resumed.train(resume_from_checkpoint=True)
        a, b = losses(whole), losses(resumed)
        for step in (3, 4):
            rows.append(f"| {subspace} | {step} | {a[step]:.8f} | {b[step]:.8f} | {abs(a[step] - b[step]):.1e} |")
    return rows


def hostile_rows() -> list[str]:
    reward = MathReward(timeout_s=5.0, memory_mb=2048)
    rows = []
    for name, text in HOSTILE.items():
        start = time.perf_counter()
        answer, value, status = reward.check(text, "12")
        seconds = time.perf_counter() - start
        rows.append(f"| {name} | {len(text):,} | {status} | {value} | {seconds:.1f} |")
    return rows


def long_run_rows(tmp: Path) -> list[str]:
    trainer = make_trainer(
        tmp / "long",
        make_tokenizer(),
        make_prompts_dataset(),
        max_steps=200,
        logging_steps=50,
        max_completion_length=8,
        learning_rate=1e-6,  # slow enough that groups stay mixed, so ResRL's weights run on every step
    )
    trainer.reward_funcs, trainer.reward_func_names = [checksum_reward], ["checksum_reward"]
    model, rows = trainer.model, []

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            if state.global_step in (1, 50, 100, 150, 200):
                peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
                rows.append(f"| {state.global_step} | {peak_mib:.1f} | {hooks()} |")

    trainer.add_callback(Probe())
    trainer.train()
    mixed = [h["resrl/mixed_group_frac"] for h in trainer.state.log_history if "resrl/mixed_group_frac" in h]
    rows.append(f"\nMean share of mixed groups per logged interval: {', '.join(f'{m:.2f}' for m in mixed)}")
    return rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # the trainers' own logs
        tmp_path = Path(tmp)
        resume, hostile, long_run = resume_rows(tmp_path), hostile_rows(), long_run_rows(tmp_path)
    print("### Resume after a kill at step 3 (checkpoint every 2 steps)\n")
    print("| subspace | step | uninterrupted loss | resumed loss | difference |\n| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(resume))
    print("\n### Hostile completions (reference answer 12; time-out 5 s, 2 GiB)\n")
    print("| completion | characters | status | reward | seconds |\n| --- | ---: | --- | ---: | ---: |")
    print("\n".join(hostile))
    print("\n### 200 training steps of the tiny model (learning rate 1e-6)\n")
    print("| step | peak RSS MiB | hooks on the model |\n| ---: | ---: | ---: |")
    print("\n".join(long_run))


if __name__ == "__main__":
    main()
