"""One of two processes checking ResRL on a model that DeepSpeed ZeRO-3 has partitioned, on the CPU.

Launched by tests/test_zero3.py with ``torchrun --nproc_per_node 2``. accelerate's DeepSpeed integration needs a GPU,
so the model is partitioned by ``deepspeed.initialize`` itself (gloo, CPU accelerator, every parameter partitioned)
and ResRLTrainer's own methods run on the engine: the training forward with the capture hook (in-step subspaces),
and the rollout-time build (a group split between the processes, an uneven number of forwards to equalise) followed
by the projecting training forward. Each is compared with an unpartitioned copy of the model in one process.
Writes ``zero3-{rank}.json``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers.integrations import HfDeepSpeedConfig

sys.path.insert(0, str(Path(__file__).parent))
from conftest import (  # noqa: E402
    make_model,
    make_prompts_dataset,
    make_tokenizer,
    parity_reward,
    record_training_forwards,
)

from resrl_trl import ResRLConfig, ResRLTrainer, SubspaceSettings, compute_residual_weights  # noqa: E402
from resrl_trl.masks import valid_completion_tokens  # noqa: E402
from resrl_trl.placement import GROUP_IDS_KEY, IS_POSITIVE_KEY, Rollout  # noqa: E402

GROUP_SIZE = 4


def global_batch(tokenizer, rows: int, positives: list[bool], seed: int = 0) -> dict[str, torch.Tensor]:
    """A rollout of ``rows`` completions (all processes build the same one and keep their own slice)."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, 90, (rows, 5), generator=g)
    completion_ids = torch.randint(10, 90, (rows, 9), generator=g)
    completion_mask = torch.ones(rows, 9, dtype=torch.long)
    completion_mask[1::3, 6:] = 0
    is_positive = torch.tensor(positives)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones(rows, 5, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.where(is_positive, 1.0, -1.0),
        "num_items_in_batch": completion_mask.sum(),
        GROUP_IDS_KEY: torch.arange(rows) // GROUP_SIZE,
        IS_POSITIVE_KEY: is_positive,
    }


def local_slice(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    rows = len(next(iter(batch.values()))) // world
    return {k: (v[rank * rows : (rank + 1) * rows] if v.dim() else v) for k, v in batch.items()}


def reference_hidden(model, batch) -> torch.Tensor:
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        states = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return states[:, -batch["completion_ids"].size(1) - 1 : -1]


def main() -> None:
    out = Path(sys.argv[1])
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = make_tokenizer()
    report: dict = {"rank": rank}
    for subspace, batch_size in (("step", 8), ("rollout", 2)):
        config = {
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True,
        }
        # What accelerate's DeepSpeed plugin does: tell transformers and TRL that ZeRO-3 is on (TRL then gathers the
        # LM head around its fused log-prob kernel).
        zero3_marker = HfDeepSpeedConfig(config)
        model = make_model(tokenizer, layers=4)  # an untied LM head, partitioned like every other weight
        reference = copy.deepcopy(model).eval()
        args = ResRLConfig(
            output_dir=str(out / subspace),
            use_cpu=True,
            report_to="none",
            num_generations=GROUP_SIZE,
            per_device_train_batch_size=batch_size,
            resrl_subspace=subspace,
            resrl_rank=4,
            max_completion_length=9,
            beta=0.0,
            bf16=False,
            seed=0,
        )
        trainer = ResRLTrainer(
            model=model,
            reward_funcs=parity_reward,
            args=args,
            train_dataset=make_prompts_dataset(),
            processing_class=tokenizer,
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        partitioned = all(p.numel() == 0 for p in engine.module.parameters())  # nothing is held whole
        trainer.model = trainer.model_wrapped = engine
        trainer.current_gradient_accumulation_steps = 1
        if subspace == "step":
            # Whole groups on each process: groups 0-1 on rank 0, 2-3 on rank 1.
            full = global_batch(tokenizer, 16, [True, False, True, False, True, True, False, False] * 2)
        else:
            # Group 0 all positive (rank 0), group 1 split over the ranks, group 2 on rank 1: rank 0 holds 2 rows of
            # mixed groups and rank 1 holds 6, so their no-grad forwards (2 rows each) must be equalised.
            positives = [True] * 4 + [True, False, True, False] + [False, True, False, False]
            full = global_batch(tokenizer, 12, positives)
        local = local_slice(full, rank, world)
        trainer.seeds.advance("train", num_groups=len(full[IS_POSITIVE_KEY]) // GROUP_SIZE)
        valid = valid_completion_tokens(local["completion_ids"], local["completion_mask"])
        trainer.placement.finish_rollout(Rollout(local, valid, full[IS_POSITIVE_KEY], GROUP_SIZE, "train", batch_size))
        forwards = record_training_forwards(trainer.placement)
        engine.train()
        loss = trainer._compute_loss(engine, local)
        engine.backward(loss)
        engine.step()
        got = forwards[-1]["result"].weights
        expected = compute_residual_weights(
            reference_hidden(reference, full),
            full["completion_mask"].bool(),
            full[GROUP_IDS_KEY],
            full[IS_POSITIVE_KEY],
            SubspaceSettings(rank=4),
            group_seed=trainer.seeds.group_seed("train"),
        ).weights
        expected = local_slice({"w": expected}, rank, world)["w"]
        report[subspace] = {
            "partitioned": partitioned,
            "loss_finite": bool(torch.isfinite(loss)),
            "weight_max_abs_error": float((got - expected).abs().max()),
            "weighted_tokens": int((expected < 1).sum()),
        }
        del zero3_marker
    (out / f"zero3-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
