"""One process of a multi-process ResRL run on the CPU, launched by tests/test_distributed.py with
``accelerate launch --cpu --num_processes 2``. Trains a tiny model for a few steps and saves, per training
micro-batch, what the weights were computed from and what they came out as, plus the logged metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import COMMON, make_model, make_prompts_dataset, make_tokenizer, parity_reward  # noqa: E402

from resrl_trl import ResRLConfig, ResRLTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--resrl_subspace", default="auto")
    opts = parser.parse_args()
    out = Path(opts.out)
    records: list[dict] = []
    tokenizer = make_tokenizer()
    args = ResRLConfig(
        output_dir=str(out / "run"),
        **{
            **COMMON,  # the single-process tests' settings
            "per_device_train_batch_size": opts.per_device_train_batch_size,
            "resrl_subspace": opts.resrl_subspace,
            "resrl_rank": 4,  # a truncated randomised PCA: its random start matters
        },
    )
    trainer = ResRLTrainer(
        model=make_model(tokenizer),
        reward_funcs=parity_reward,
        args=args,
        train_dataset=make_prompts_dataset(),
        processing_class=tokenizer,
    )
    token_weights = trainer.placement.token_weights

    def recording(hidden, valid, group_ids, is_positive, mode):  # the placement's seam: states in, weights out
        result = token_weights(hidden, valid, group_ids, is_positive, mode)
        records.append(
            {
                "step": trainer.state.global_step,
                "hidden": hidden.clone(),
                "valid": valid.clone(),
                "group_ids": group_ids,
                "is_positive": is_positive,
                "weights": result.weights,
                "group_seed": trainer.seeds.group_seed(mode),
            }
        )
        return result

    trainer.placement.token_weights = recording
    trainer.train()
    rank = trainer.accelerator.process_index
    torch.save(records, out / f"records-{rank}.pt")
    if rank == 0:
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history))
        (out / "config.json").write_text(json.dumps({"resrl_subspace": trainer.args.resrl_subspace}))


if __name__ == "__main__":
    main()
