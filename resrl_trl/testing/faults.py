"""The fault scenarios that tests/test_reliability.py asserts and experiments/reliability_report.py reports on."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import GRPOTrainer

CHECKPOINTED = dict(max_steps=4, save_strategy="steps", save_steps=2, resrl_rank=4)
"""Trainer settings of the resume scenario: four steps, a checkpoint every two."""


class Killed(Exception):
    """Raised by :class:`KillAtStep`: the run stops as if its process had been killed."""


class KillAtStep(TrainerCallback):
    """Stops the run dead at the end of a step, as a kill between checkpoints would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == self.step:
            raise Killed


def losses(trainer: GRPOTrainer) -> dict[int, float]:
    """The logged loss of each step."""
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


HOSTILE = {
    "power tower": r"The final answer is $\boxed{9^{9^{9^{9^{9}}}}}$",
    "huge factorial": r"$\boxed{(10^{10})!}$",
    "deep nesting": r"\boxed{" + "(" * 1500 + "1" + ")" * 1500 + "}",
    "100k characters": "7 + 5 = " + "1" * 100_000,
    "empty": "",
    "invalid UTF-8": b"\xff\xfe\xfa the answer is 12",
    "truncated": r"So we get \boxed{1",
}
"""Completions built to hang or exhaust an answer checker (the reference answer is 12)."""
