"""ResRLTrainer on tiny models: the hook, the per-token advantages, GRPO equivalence, batching, training."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    COMMON,
    grpo_twin,
    hand_batch,
    make_model,
    make_trainer,
    parity_reward,
    record_token_weights,
    reference_hidden,
)
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from resrl_trl import ResRLConfig, ResRLTrainer, SubspaceSettings, compute_residual_weights
from resrl_trl.advantages import sequence_advantages
from resrl_trl.placement import shuffle_groups
from resrl_trl.trainer import GROUP_IDS_KEY, IS_POSITIVE_KEY


@pytest.mark.parametrize("variant", ["plain", "lora", "gradient_checkpointing", "lora+gradient_checkpointing"])
def test_hook_captures_second_to_last_block_at_aligned_positions(
    variant, tmp_path, tokenizer, prompts_dataset, monkeypatch
):
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if "lora" in variant else None
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        peft_config=peft,
        gradient_checkpointing="gradient_checkpointing" in variant,
    )
    if peft is not None:  # make LoRA change the forward, so a capture from the wrong model would show
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    checkpointing = "gradient_checkpointing" in variant
    if checkpointing and not trainer.model.is_activation_checkpointing:
        trainer.model.activation_checkpointing_enable()  # Trainer.train() would do this; the test calls the step
    seen = record_token_weights(trainer.placement)
    batch = hand_batch(tokenizer)
    hooks_before = dict(trainer.placement.block._forward_hooks)  # transformers keeps hooks of its own there
    layer_calls = []
    counter = trainer.placement.block.register_forward_hook(lambda *args: layer_calls.append(1))
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, batch)
    assert dict(trainer.placement.block._forward_hooks) == {
        **hooks_before,
        counter.id: counter.hooks_dict_ref()[counter.id],
    }
    loss.backward()
    counter.remove()
    # transformers checkpoints `forward` inside `__call__`, so module hooks run once even when checkpointing
    assert trainer.placement.block.gradient_checkpointing == checkpointing
    assert len(layer_calls) == 1
    assert len(seen) == 1
    assert dict(trainer.placement.block._forward_hooks) == hooks_before  # ResRL's hook is gone after the step
    trainer.model.eval()
    torch.testing.assert_close(seen[0]["hidden"], reference_hidden(trainer.model, batch), atol=1e-5, rtol=1e-5)
    assert batch["advantages"].dim() == 1  # the caller's (buffered) batch is untouched


@pytest.mark.parametrize("position", ["previous", "own"])
def test_hook_reads_the_configured_weight_position(position, tmp_path, tokenizer, prompts_dataset, monkeypatch):
    """resrl_weight_position: the state before each completion token (whose logits chose it) or at the token."""
    trainer = make_trainer(
        tmp_path, tokenizer, prompts_dataset, gradient_checkpointing=False, resrl_weight_position=position
    )
    seen = record_token_weights(trainer.placement)
    batch = hand_batch(tokenizer)
    trainer._compute_loss(trainer.model, batch)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        states = trainer.model(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-2]
    tokens, length = batch["completion_ids"].size(1), input_ids.size(1)
    start = length - tokens - (position == "previous")
    torch.testing.assert_close(seen[0]["hidden"], states[:, start : start + tokens], atol=1e-5, rtol=1e-5)


def test_hook_uses_first_forward_when_the_block_runs_again(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    """Some checkpointing wrappers re-enter the block's __call__ on recomputation: only the first run counts."""
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, gradient_checkpointing=False)
    seen = record_token_weights(trainer.placement)
    real = trainer._get_per_token_logps_and_entropies

    def run_twice(model, input_ids, *args, **kwargs):
        with torch.no_grad():
            model(input_ids=input_ids * 0 + 5)  # a second, different run of every block
        return real(model, input_ids, *args, **kwargs)

    batch = hand_batch(tokenizer)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", run_twice)
    trainer._compute_loss(trainer.model, batch)
    assert len(seen) == 1
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    with torch.no_grad():
        first = trainer.model(input_ids=input_ids * 0 + 5, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(seen[0]["hidden"], first[:, -batch["completion_ids"].size(1) - 1 : -1])


@pytest.mark.parametrize("mode", ["resrl", "resrl_tokens_only"])
def test_per_token_advantages_equal_grpo_loss_with_those_advantages(mode, tmp_path, tokenizer, prompts_dataset):
    """The loss reads the rollout's sequence advantages (positives scaled for resrl) times the token weights."""
    resrl = make_trainer(
        tmp_path, tokenizer, prompts_dataset, resrl_rank=4, gradient_checkpointing=False, advantage_mode=mode
    )
    grpo = grpo_twin(tmp_path, tokenizer, prompts_dataset, resrl)
    batch = hand_batch(tokenizer)
    positive = batch[IS_POSITIVE_KEY]
    batch["advantages"] = sequence_advantages(mode, batch["advantages"], positive.float(), positive, pos_weight=0.1)
    resrl.seeds.advance("train", num_groups=2)  # as a rollout of the batch's two groups would
    hidden = reference_hidden(resrl.model, batch)
    expected = compute_residual_weights(
        hidden,
        batch["completion_mask"].bool(),
        batch[GROUP_IDS_KEY],
        positive,
        SubspaceSettings(rank=4),
        group_seed=resrl.seeds.group_seed("train"),
    )
    assert ((expected.weights < 1) & (expected.weights >= 0.1)).any()  # the test exercises real weights
    per_token = dict(batch, advantages=batch["advantages"][:, None] * expected.weights)

    loss_resrl = resrl._compute_loss(resrl.model, batch)
    loss_grpo = grpo._compute_loss(grpo.model, per_token)
    torch.testing.assert_close(loss_resrl, loss_grpo, atol=1e-6, rtol=1e-5)
    plain = grpo._compute_loss(grpo.model, batch)
    assert not torch.allclose(loss_resrl, plain)  # ResRL really changes the loss


def test_unit_weights_reproduce_grpo_loss_and_gradients(tmp_path, tokenizer, prompts_dataset):
    resrl = make_trainer(
        tmp_path, tokenizer, prompts_dataset, resrl_pos_weight=1.0, resrl_min_weight=1.0, gradient_checkpointing=False
    )
    grpo = grpo_twin(tmp_path, tokenizer, prompts_dataset, resrl)
    batch = hand_batch(tokenizer)
    loss_a = resrl._compute_loss(resrl.model, batch)
    loss_b = grpo._compute_loss(grpo.model, batch)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b, atol=0, rtol=1e-6)
    grads_a = {n: p.grad for n, p in resrl.model.named_parameters()}
    for name, param in grpo.model.named_parameters():
        torch.testing.assert_close(grads_a[name], param.grad, atol=1e-7, rtol=1e-5)


def test_shuffle_groups_keeps_groups_whole_and_draws_trl_rng():
    batch = {"x": torch.arange(12) * 10, "names": [f"n{i}" for i in range(12)], "scalar": torch.tensor(3.0)}
    torch.manual_seed(5)
    shuffled = shuffle_groups(batch, 4)
    after = torch.rand(2)
    torch.manual_seed(5)
    torch.randperm(12)
    assert torch.equal(torch.rand(2), after)  # same RNG consumption as TRL's row shuffle
    groups = (shuffled["x"] // 10).view(3, 4)
    assert (groups // 4 == groups[:, :1] // 4).all()  # each run of 4 rows is one whole group
    assert sorted(groups[:, 0].tolist()) == [0, 4, 8]
    assert shuffled["names"] == [f"n{i}" for i in (shuffled["x"] // 10).tolist()]
    assert shuffled["scalar"] is batch["scalar"]
    orders = set()
    for seed in range(40):
        torch.manual_seed(seed)
        orders.add(tuple(shuffle_groups(batch, 4)["x"][::4].tolist()))
    assert len(orders) == 6  # every order of 3 groups occurs


def test_training_steps_end_to_end(tmp_path, tokenizer, prompts_dataset):
    resrl = make_trainer(tmp_path, tokenizer, prompts_dataset, steps_per_generation=2, max_steps=4)
    before = {n: p.detach().clone() for n, p in resrl.model.named_parameters()}
    resrl.train()
    history = [h for h in resrl.state.log_history if "loss" in h]
    assert len(history) == 4
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    for key in (
        "resrl/neg_token_weight_mean",
        "resrl/residual_energy_mean",
        "resrl/neg_alignment_mean",
        "resrl/mixed_group_frac",
        "resrl/skipped_groups",
        "resrl/positives",
        "resrl/negatives",
    ):
        assert key in history[0]
    mixed = [h for h in history if h["resrl/mixed_group_frac"] > 0]
    assert mixed, "the parity reward should give mixed groups"
    assert all(0.1 <= h["resrl/neg_token_weight_mean"] <= 1.0 for h in mixed)
    assert all(h["resrl/positives"] + h["resrl/negatives"] == 8 for h in history)
    assert any(not torch.equal(p, before[n]) for n, p in resrl.model.named_parameters())


def test_same_seed_samples_same_completions_as_grpo(tmp_path, tokenizer, prompts_dataset):
    """With unit weights and one micro-batch per generation (so the group-level shuffle cannot change an update),
    ResRL's updates equal GRPO's: over several generations both runs must sample the very same completions and log
    the same losses, which shows ResRL's own randomness never touches the global RNG."""
    overrides = dict(steps_per_generation=1, max_steps=4, resrl_pos_weight=1.0, resrl_min_weight=1.0)
    resrl = make_trainer(tmp_path, tokenizer, prompts_dataset, **overrides)
    resrl.train()
    resrl_completions = list(resrl._logs["completion"])
    overrides = {k: v for k, v in overrides.items() if not k.startswith("resrl_")}
    grpo = make_trainer(tmp_path, tokenizer, prompts_dataset, cls=GRPOTrainer, **overrides)
    grpo.train()
    assert resrl_completions == list(grpo._logs["completion"])
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (resrl, grpo)]
    assert len(losses[0]) == 4
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-6, rtol=1e-4)


def test_partial_group_in_micro_batch_is_refused(tmp_path, tokenizer, prompts_dataset):
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, gradient_checkpointing=False)
    batch = hand_batch(tokenizer)
    batch[GROUP_IDS_KEY] = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    with pytest.raises(RuntimeError, match="partial prompt group"):
        trainer._compute_loss(trainer.model, batch)


def test_think_mask_removes_think_tokens(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        resrl_mask_think=True,
        resrl_think_start="[",
        resrl_think_end="]",
        gradient_checkpointing=False,
    )
    seen = record_token_weights(trainer.placement)
    batch = hand_batch(tokenizer)
    open_id, close_id = tokenizer.convert_tokens_to_ids(["[", "]"])
    batch["completion_ids"][2, 1], batch["completion_ids"][2, 4] = open_id, close_id
    trainer._compute_loss(trainer.model, batch)
    expected = batch["completion_mask"].bool().clone()
    expected[2, 1:5] = False
    assert torch.equal(seen[0]["valid"], expected)


def test_tool_output_is_neither_weighted_nor_used_for_the_basis(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, gradient_checkpointing=False)
    seen = record_token_weights(trainer.placement)
    batch = hand_batch(tokenizer)
    batch["tool_mask"] = torch.ones_like(batch["completion_mask"])
    batch["tool_mask"][3, 2:5] = 0  # tokens 2-4 of a negative completion came from a tool
    trainer._compute_loss(trainer.model, batch)
    expected = batch["completion_mask"].bool().clone()
    expected[3, 2:5] = False
    assert torch.equal(seen[0]["valid"], expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(per_device_train_batch_size=2, steps_per_generation=2, resrl_subspace="step"), "multiple of num_gen"),
        (dict(resrl_subspace="batch"), "resrl_subspace must be"),
        (dict(loss_type="vespo"), "does not take ResRL's per-token advantages"),
        (dict(w_reinforce_lambda=-0.5), "w_reinforce_lambda must be >= 0"),
        (dict(resrl_pca_niter=-1), "resrl_pca_niter"),
        (dict(advantage_mode="ppo"), "advantage_mode must be one of"),
        (dict(resrl_rank=0), "resrl_rank"),
        (dict(resrl_q_low=0.9, resrl_q_high=0.5), "resrl_q_low < resrl_q_high"),
        (dict(resrl_min_weight=1.5), "resrl_min_weight"),
        (dict(resrl_pos_weight=-1.0), "resrl_pos_weight"),
        (dict(resrl_hidden_layer=-1), "not a decoder block"),
        (dict(resrl_max_pos_tokens=2), "resrl_max_pos_tokens"),
        (dict(resrl_weight_position="current"), r"resrl_weight_position must be one of \['previous', 'own'\]"),
    ],
)
def test_bad_config_is_refused_with_the_fix(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        ResRLConfig(output_dir=str(tmp_path), **{**COMMON, **overrides})


def test_config_maps_its_fields_onto_the_subspace_settings(tmp_path):
    config = ResRLConfig(
        output_dir=str(tmp_path),
        **COMMON,
        resrl_rank=7,
        resrl_max_pos_tokens=99,
        resrl_q_low=0.1,
        resrl_q_high=0.7,
        resrl_min_weight=0.25,
        resrl_pca_niter=2,
    )
    assert config.subspace_settings == SubspaceSettings(
        rank=7, max_pos_tokens=99, q_low=0.1, q_high=0.7, min_weight=0.25, niter=2
    )
    assert ResRLConfig(output_dir=str(tmp_path), **COMMON).subspace_settings == SubspaceSettings()


def test_hidden_layer_out_of_range_for_model(tmp_path, tokenizer, prompts_dataset):
    with pytest.raises(ValueError, match=r"use an index in \[1, 2\]"):
        make_trainer(tmp_path, tokenizer, prompts_dataset, resrl_hidden_layer=5)


def test_plain_grpo_config_is_refused(tmp_path, tokenizer, prompts_dataset):
    args = GRPOConfig(output_dir=str(tmp_path), **COMMON)
    with pytest.raises(TypeError, match="ResRLConfig"):
        ResRLTrainer(
            model=make_model(tokenizer),
            reward_funcs=parity_reward,
            args=args,
            train_dataset=prompts_dataset,
            processing_class=tokenizer,
        )
