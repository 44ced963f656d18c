"""Training callbacks that are not the method: the run's metrics on disk, and its training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["METRICS_FILE", "CURVES_FILE", "TrainingCurvesCallback"]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"


class TrainingCurvesCallback(TrainerCallback):
    """Appends every log of the run to ``<output_dir>/metrics.jsonl`` (one JSON object per line, with its ``step``)
    and draws ``<output_dir>/training_curves.png`` (reward, completion length, ResRL's token-weight statistics) when
    training ends. On resume, the lines of steps after the checkpoint are dropped: they are about to be run again.

    ``label`` names the run in the picture (default: the method, from ``advantage_mode``).
    """

    def __init__(self, label: str | None = None) -> None:
        self.label = label

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        path = Path(args.output_dir) / METRICS_FILE
        if not state.is_world_process_zero or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= state.global_step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut short when the run was killed
                continue
        path.write_text("".join(f"{line}\n" for line in kept))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        path = Path(args.output_dir) / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as sink:
            sink.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        from .plot import METHOD_LABELS, plot_training_curves, read_metrics

        folder = Path(args.output_dir)
        records = read_metrics(folder / METRICS_FILE) if (folder / METRICS_FILE).exists() else []
        if not records:
            return
        mode = getattr(args, "advantage_mode", "grpo")
        label = self.label or METHOD_LABELS.get(mode, mode)
        plot_training_curves([records], [label], folder / CURVES_FILE)
