"""The TRL internals ResRL hooks into are where resrl_trl/trl_compat.py says; a change is reported by name."""

from __future__ import annotations

import pytest
from conftest import make_trainer
from trl import GRPOTrainer

from resrl_trl.trl_compat import TESTED_TRL, check_trainer_state, check_trl_internals


def test_installed_trl_has_every_internal_resrl_uses(tmp_path, tokenizer, prompts_dataset):
    import trl

    assert trl.__version__.startswith(TESTED_TRL)
    check_trl_internals()
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset)
    batch = trainer._generate_and_score_completions(list(prompts_dataset.select(range(2))) * 4)
    check_trainer_state(trainer, batch)


def test_a_changed_internal_is_named_with_the_fix():
    class NextRelease(GRPOTrainer):
        def _compute_loss(self, model, batch, extra):  # renamed parameter  # noqa: ANN001, ANN202
            raise NotImplementedError

        _prepare_inputs = None  # removed

    with pytest.raises(RuntimeError) as error:
        check_trl_internals(NextRelease)
    text = str(error.value)
    assert "NextRelease._compute_loss takes ('model', 'batch')" in text and "(B, T)" in text
    assert "NextRelease._prepare_inputs is gone" in text
    assert "trl~=1.16.0" in text and "trl_compat.py" in text


def test_missing_state_is_named():
    class Bare:
        _metrics = {"train": {}}

    with pytest.raises(RuntimeError, match="lacks the attribute 'num_generations'(.|\n)*not keyed by"):
        check_trainer_state(Bare(), {"prompt_ids": None})
