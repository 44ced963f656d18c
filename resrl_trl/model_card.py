"""What a saved ResRL model's card says beyond TRL's own: the paper, and the ResRL and GRPO settings of the run."""

from __future__ import annotations

import dataclasses
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["RESRL_PAPER", "ModelCardMixin", "append_settings", "settings_table"]

RESRL_PAPER = {
    "title": "ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual Reinforcement Learning",
    "id": "2605.00380",
    "citation": textwrap.dedent("""\
        @inproceedings{lin2026resrl,
            title        = {{ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual
                             Reinforcement Learning}},
            author       = {Lin and others},
            booktitle    = {International Conference on Machine Learning (ICML)},
            year         = 2026,
            eprint       = {arXiv:2605.00380},
        }"""),
}

# GRPO settings that shape what ResRL sees (group size, batch layout) or how its advantages are used (the loss).
CONTEXT_FIELDS = (
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "loss_type",
    "epsilon",
    "delta",
    "beta",
    "learning_rate",
    "temperature",
    "max_completion_length",
    "use_vllm",
    "vllm_importance_sampling_correction",
    "seed",
)
HEADING = "## ResRL settings"


def settings_table(args: Any) -> str:
    """A Markdown table of the run's ResRL fields (``advantage_mode``, ``w_reinforce_lambda``, ``resrl_*``) and the
    GRPO fields that matter to it."""
    names = [f.name for f in dataclasses.fields(args)]
    resrl = [n for n in names if n.startswith("resrl_") or n in ("advantage_mode", "w_reinforce_lambda")]
    rows = [f"| `{name}` | `{getattr(args, name)}` |" for name in resrl + [n for n in CONTEXT_FIELDS if n in names]]
    return "\n".join(["| setting | value |", "| --- | --- |", *rows])


def append_settings(card: str | Path, args: Any, base_model: str | None = None) -> None:
    """Add (or replace) the settings section at the end of a model card.

    TRL's card names a base model only when it is a Hub id; for a local one (the embedded GGUF, a folder) it writes
    "None" links, which are replaced here by ``base_model`` (the name the model was loaded from) and the card's folder.
    """
    path = Path(card)
    text = path.read_text() if path.exists() else ""
    if base_model:
        text = text.replace("[None](https://huggingface.co/None)", f"`{base_model}`")
    text = text.replace('model="None"', f'model="{path.parent}"')
    text = text.split(f"\n{HEADING}\n")[0].rstrip("\n")
    section = (
        f"{HEADING}\n\nTrained with ResRL ([arXiv {RESRL_PAPER['id']}](https://arxiv.org/abs/{RESRL_PAPER['id']})) "
        f"through resrl-trl's `ResRLTrainer`, a subclass of TRL's `GRPOTrainer`.\n\n{settings_table(args)}\n"
    )
    path.write_text(f"{text}\n\n{section}" if text else section)


class ModelCardMixin:
    """For a TRL trainer: the saved model's card is TRL's (naming the trainer's ``_name`` and ``_paper``) plus the
    ResRL settings of the run, in ``output_dir`` and in every folder the model is saved to."""

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:  # noqa: ANN001
        super().create_model_card(model_name, dataset_name, tags)
        if self.is_world_process_zero():
            model = self.accelerator.unwrap_model(self.model)
            base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
            append_settings(os.path.join(self.args.output_dir, "README.md"), self.args, base)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        # PEFT and transformers write an empty template card; TRL's card (written to output_dir) replaces it.
        self.create_model_card(model_name=os.path.basename(os.path.normpath(self.args.output_dir)))
        card = os.path.join(self.args.output_dir, "README.md")
        folder = output_dir or self.args.output_dir
        # Only the first process writes the card (save_on_each_node makes other nodes save too, without a card).
        if self.is_world_process_zero() and os.path.abspath(folder) != os.path.abspath(self.args.output_dir):
            shutil.copyfile(card, os.path.join(folder, "README.md"))
