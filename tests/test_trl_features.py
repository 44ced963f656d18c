"""TRL's GRPO features keep working with ResRLTrainer: every loss type reads ResRL's per-token advantages, and the
training options users combine with it run end to end."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import checksum_reward, grpo_twin, hand_batch, make_model, make_trainer, parity_reward, reference_hidden
from peft import LoraConfig

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.advantages import sequence_advantages
from resrl_trl.residual import SubspaceSettings, compute_residual_weights
from resrl_trl.trainer import GROUP_IDS_KEY, IS_POSITIVE_KEY

LOSS_TYPES = [
    ("grpo", {}),
    ("bnpo", {}),
    ("dr_grpo", {}),
    ("dapo", {}),
    ("cispo", {}),
    ("sapo", {}),
    ("luspo", {"importance_sampling_level": "sequence"}),
    ("bnpo", {"delta": 3.0}),  # the reference's dual clip
]


@pytest.mark.parametrize("loss_type, extra", LOSS_TYPES)
def test_every_loss_type_uses_the_per_token_advantages(loss_type, extra, tmp_path, tokenizer, prompts_dataset):
    """ResRL's loss equals TRL's own loss of the same type fed the per-token advantages ResRL computes."""
    settings = {"loss_type": loss_type, "gradient_checkpointing": False, **extra}
    resrl = make_trainer(tmp_path, tokenizer, prompts_dataset, resrl_rank=4, **settings)
    grpo = grpo_twin(tmp_path, tokenizer, prompts_dataset, resrl)
    for name, value in settings.items():
        setattr(grpo.args, name, value)
    grpo.loss_type, grpo.importance_sampling_level = loss_type, extra.get("importance_sampling_level", "token")
    resrl.importance_sampling_level = grpo.importance_sampling_level
    batch = hand_batch(tokenizer)
    positive = batch[IS_POSITIVE_KEY]
    batch["advantages"] = sequence_advantages("resrl", batch["advantages"], positive.float(), positive, pos_weight=0.1)
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
    loss = resrl._compute_loss(resrl.model, batch)
    torch.testing.assert_close(
        loss, grpo._compute_loss(grpo.model, dict(batch, advantages=batch["advantages"][:, None] * expected.weights))
    )
    assert not torch.allclose(loss, grpo._compute_loss(grpo.model, batch))  # the weights change this loss type


def two_rewards(completions, **kwargs) -> list[float]:
    """A second verifiable reward: the completion is short."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(t) < 6) for t in texts]


FEATURES = {
    "num_iterations=2": {"num_iterations": 2},
    "steps_per_generation=2": {"steps_per_generation": 2},
    "accumulation 2, steps_per_generation 4": {"gradient_accumulation_steps": 2, "steps_per_generation": 4},
    "top_entropy_quantile=0.5": {"top_entropy_quantile": 0.5},
    "beta>0 (reference model)": {"beta": 0.04, "from_folder": True},
    "beta>0 with LoRA": {"beta": 0.04, "peft": True},
    "gradient checkpointing": {"gradient_checkpointing": True},
    "scale_rewards=batch": {"scale_rewards": "batch"},
    "two rewards, normalize_then_sum": {"rewards": 2, "multi_objective_aggregation": "normalize_then_sum"},
    "two weighted rewards, sum_then_normalize": {"rewards": 2, "reward_weights": [1.0, 0.5]},
    "head interference logged, LoRA": {"resrl_log_interference": True, "peft": True},
    "rollout placement, num_iterations=2": {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "num_iterations": 2,
    },
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_trl_feature_trains_with_token_weights(feature, tmp_path, tokenizer, prompts_dataset):
    settings = dict(FEATURES[feature])
    peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if settings.pop("peft", False) else None
    rewards = [checksum_reward, two_rewards] if settings.pop("rewards", 1) == 2 else checksum_reward
    model = None
    if settings.pop("from_folder", False):  # TRL loads a full fine-tuning run's reference model by name
        make_model(tokenizer).save_pretrained(tmp_path / "model")
        model = str(tmp_path / "model")
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        model=model,
        peft_config=peft,
        reward_funcs=rewards,
        resrl_rank=4,
        **settings,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    weighted = [h for h in logs if h.get("resrl/neg_token_weight_mean") is not None]
    assert weighted and all(0.1 <= h["resrl/neg_token_weight_mean"] <= 1.0 for h in weighted)
    if settings.get("resrl_log_interference"):
        cosines = [h["resrl/head_cosine_weighted"] for h in logs if "resrl/head_cosine_weighted" in h]
        assert cosines and all(-1 <= c <= 1 for c in cosines if not math.isnan(c))
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "the run did not update the trained parameters"


def test_masked_truncated_completions_take_no_part(tmp_path, tokenizer, prompts_dataset):
    """The random tiny model does not stop within 6 tokens at first: with mask_truncated_completions every completion
    of the first step is masked, so no token is weighted (no NaN from an empty set) and the loss is 0."""
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        reward_funcs=checksum_reward,
        mask_truncated_completions=True,
        max_completion_length=6,
        max_steps=1,
        resrl_rank=4,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["loss"] == 0.0 for h in logs)
    assert all(h.get("resrl/neg_token_weight_mean") is None for h in logs)


def test_positive_means_a_positive_weighted_sum_of_the_rewards(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    """With several reward functions, a completion is positive when TRL's weighted sum of its rewards is above the
    threshold, whatever the aggregation TRL uses for the advantages."""
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        reward_funcs=[parity_reward, two_rewards],
        max_steps=1,
        reward_weights=[1.0, -2.0],
        resrl_positive_threshold=0.5,
    )
    seen = []
    real = type(trainer)._generate_and_score_completions

    def spy(self, inputs):
        output = real(self, inputs)
        texts = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
        total = torch.tensor(parity_reward(texts)) - 2.0 * torch.tensor(two_rewards(texts))
        seen.append((output[IS_POSITIVE_KEY].cpu(), total > 0.5))
        return output

    monkeypatch.setattr(type(trainer), "_generate_and_score_completions", spy)
    trainer.train()
    assert seen
    for flags, expected in seen:
        assert torch.equal(flags, expected)


def test_reward_funcs_may_be_omitted_as_in_trl(tmp_path, tokenizer, prompts_dataset):
    """TRL lets an environment own the reward (reward_funcs omitted); without one it refuses with its own message,
    not a TypeError from ResRLTrainer's signature."""
    args = ResRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=4, report_to="none")
    with pytest.raises(ValueError, match="No reward source provided"):
        ResRLTrainer(make_model(tokenizer), args=args, train_dataset=prompts_dataset, processing_class=tokenizer)


def test_logged_head_interference_matches_the_analysis(tmp_path, tokenizer, prompts_dataset):
    """resrl_log_interference logs analysis.interference of the training forward's head inputs and logits."""
    from resrl_trl.analysis import interference

    trainer = make_trainer(
        tmp_path, tokenizer, prompts_dataset, resrl_rank=4, resrl_log_interference=True, gradient_checkpointing=False
    )
    trainer.seeds.advance("train", num_groups=2)
    batch = hand_batch(tokenizer)
    trainer._compute_loss(trainer.model, batch)
    logged = trainer._metrics["train"]
    plain, weighted = logged["resrl/head_cosine_plain"][-1], logged["resrl/head_cosine_weighted"][-1]

    hidden = reference_hidden(trainer.model, batch)
    final = reference_hidden(trainer.model, batch, index=-1)  # the head's input: the final-normed states
    logits = trainer.model.get_output_embeddings()(final) / trainer.temperature
    weights = compute_residual_weights(
        hidden, batch["completion_mask"].bool(), batch[GROUP_IDS_KEY], batch[IS_POSITIVE_KEY],
        SubspaceSettings(rank=4), group_seed=trainer.seeds.group_seed("train"),
    ).weights  # fmt: skip
    expected = interference(
        final, logits, batch["completion_ids"], batch["completion_mask"].bool(), batch["advantages"],
        batch[IS_POSITIVE_KEY], weights,
    )  # fmt: skip
    assert plain == pytest.approx(expected[0], abs=1e-4) and weighted == pytest.approx(expected[1], abs=1e-4)
    assert plain != pytest.approx(weighted, abs=1e-6)  # the weights change the negatives' gradient


def test_head_interference_is_refused_without_token_weights(tmp_path):
    with pytest.raises(ValueError, match="resrl_log_interference"):
        ResRLConfig(
            output_dir=str(tmp_path), use_cpu=True, bf16=False, advantage_mode="grpo", resrl_log_interference=True
        )
