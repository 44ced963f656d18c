"""The placement on its own: built from explicit parts (no trainer), observed through its seams."""

from __future__ import annotations

import pytest
import torch
from conftest import hand_batch, make_model, reference_hidden

from resrl_trl.capture import decoder_block
from resrl_trl.masks import valid_completion_tokens
from resrl_trl.placement import (
    GROUP_IDS_KEY,
    IS_POSITIVE_KEY,
    Rollout,
    RolloutPlacement,
    SeedStream,
    StepPlacement,
    group_count_metrics,
)
from resrl_trl.residual import SubspaceSettings, compute_residual_weights

SETTINGS = SubspaceSettings(rank=4)


def forward(model: torch.nn.Module, batch: dict) -> None:
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)


def parts(model: torch.nn.Module, seeds: SeedStream) -> tuple:
    return decoder_block(model, -2), SETTINGS, "previous", seeds


def rollout_of(batch: dict, rows_per_forward: int) -> Rollout:
    valid = valid_completion_tokens(batch["completion_ids"], batch["completion_mask"])
    return Rollout(batch, valid, batch[IS_POSITIVE_KEY], 4, "train", rows_per_forward)


def weigh(placement, model: torch.nn.Module, batch: dict):
    """One training forward over ``batch`` inside the placement's seam; returns the inputs it changed and its yield."""
    inputs = dict(batch)
    valid = valid_completion_tokens(inputs["completion_ids"], inputs["completion_mask"])
    with placement.training_forward(inputs, valid, "train") as weighed:
        forward(model, inputs)
    return inputs, weighed


def test_step_placement_weighs_a_forward_it_did_not_run(tokenizer):
    model, seeds = make_model(tokenizer), SeedStream(3)
    seeds.advance("train", num_groups=2)
    placement = StepPlacement(*parts(model, seeds), group_sizes={"train": 4, "eval": 4})
    batch = hand_batch(tokenizer)
    assert placement.finish_rollout(rollout_of(batch, 8)) == {}  # nothing to build ahead
    hooks_before = dict(placement.block._forward_hooks)
    inputs, weighed = weigh(placement, model, batch)
    assert dict(placement.block._forward_hooks) == hooks_before  # the hook is gone with the block
    expected = compute_residual_weights(
        reference_hidden(model, batch), batch["completion_mask"].bool(), batch[GROUP_IDS_KEY],
        batch[IS_POSITIVE_KEY], SETTINGS, group_seed=seeds.group_seed("train"),
    )  # fmt: skip
    torch.testing.assert_close(weighed.weights, expected.weights, atol=1e-5, rtol=0)
    assert ((weighed.weights < 1) & (weighed.weights >= 0.1)).any()
    torch.testing.assert_close(inputs["advantages"], batch["advantages"][:, None] * weighed.weights)
    assert batch["advantages"].dim() == 1  # the caller's batch is untouched
    torch.testing.assert_close(weighed.token_sums, torch.stack(list(expected.stats))[:4], atol=1e-4, rtol=1e-5)
    assert weighed.metrics == group_count_metrics(2.0, 2.0, 0.0, 4.0, 4.0)  # both groups mixed, 4 + 4 completions


def test_rollout_placement_gives_half_groups_the_whole_groups_weights(tokenizer):
    """Subspaces built once from the whole rollout, then micro-batches of two rows (half a group each): every row
    gets the weights the step placement gives it with its whole group in one micro-batch."""
    model = make_model(tokenizer)
    batch = hand_batch(tokenizer)
    step_seeds, rollout_seeds = SeedStream(5), SeedStream(5)
    for seeds in (step_seeds, rollout_seeds):
        seeds.advance("train", num_groups=2)
    step = StepPlacement(*parts(model, step_seeds), group_sizes={"train": 4, "eval": 4})
    _, whole = weigh(step, model, batch)

    forwards = []

    def run_decoder(chunks):
        forwards.append(len(chunks))
        with torch.no_grad():
            for input_ids, attention_mask in chunks:
                model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    rollout = RolloutPlacement(*parts(model, rollout_seeds), run_decoder=run_decoder)
    rollout.start_rollout(trl_runs_old_logprob_forward=False)
    metrics = rollout.finish_rollout(rollout_of(batch, rows_per_forward=2))
    assert forwards == [4]  # its own forward, in chunks of the micro-batch size
    assert metrics == group_count_metrics(2.0, 2.0, 0.0, 4.0, 4.0)
    for start in range(0, 8, 2):
        part = {k: v[start : start + 2] if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()}
        _, weighed = weigh(rollout, model, part)
        torch.testing.assert_close(weighed.weights, whole.weights[start : start + 2], atol=1e-5, rtol=0)
        assert weighed.metrics == {}  # its groups are counted once per rollout


def test_a_forward_that_never_reaches_the_block_is_an_error(tokenizer):
    model, seeds = make_model(tokenizer), SeedStream(0)
    placement = StepPlacement(*parts(model, seeds), group_sizes={"train": 4, "eval": 4})
    batch = hand_batch(tokenizer)
    with pytest.raises(RuntimeError, match="never fired"):
        with placement.training_forward(dict(batch), batch["completion_mask"].bool(), "train"):
            pass
    batch[GROUP_IDS_KEY] = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    with pytest.raises(RuntimeError, match="partial prompt group"):
        weigh(placement, model, batch)


def test_seed_stream_counts_generations_per_mode_and_restores_them():
    seeds = SeedStream(11)
    assert seeds.num_groups("train") is None
    seeds.advance("train", num_groups=3)
    first = seeds.group_seed("train")
    seeds.advance("train", num_groups=3)
    seeds.advance("eval", num_groups=2)
    assert seeds.group_seed("train") != first and seeds.group_seed("eval") not in (first, seeds.group_seed("train"))
    assert seeds.generations == {"train": 2, "eval": 1} and seeds.num_groups("eval") == 2
    restored = SeedStream(11)
    restored.load_state_dict(seeds.state_dict())
    restored.advance("train", num_groups=3)
    seeds.advance("train", num_groups=3)
    assert restored.group_seed("train") == seeds.group_seed("train")  # a resumed run draws what the whole run did


def test_group_count_metrics_is_one_formula():
    assert group_count_metrics(4, 3, 1, 10, 6) == {
        "resrl/mixed_group_frac": 0.75,
        "resrl/skipped_groups": 1,
        "resrl/positives": 10,
        "resrl/negatives": 6,
    }
    assert group_count_metrics(0, 0, 0, 0, 0)["resrl/mixed_group_frac"] == 0.0
