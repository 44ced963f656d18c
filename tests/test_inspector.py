"""resrl-inspect on the embedded SmolLM2-135M: the weights it shows are training's, and its page and picture exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from resrl_trl.capture import decoder_block
from resrl_trl.data import arithmetic_dataset
from resrl_trl.inspector import (
    HTML_FILE,
    JSON_FILE,
    PNG_FILE,
    inspect,
    inspect_weights,
    main,
    sample_groups,
    token_label,
)
from resrl_trl.residual import SubspaceSettings, compute_residual_weights

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def embedded() -> tuple:
    from resrl_trl.models import load_model_and_tokenizer

    try:
        model, tokenizer = load_model_and_tokenizer()
    except ModuleNotFoundError as error:
        pytest.skip(str(error))
    return model.eval(), tokenizer


def alternate(completions: list[str], **_: object) -> list[float]:
    """Every other completion is 'correct': every group is mixed, whatever the model writes."""
    return [float(index % 2 == 0) for index in range(len(completions))]


def test_hidden_states_are_those_training_reads(embedded: tuple) -> None:
    model, tokenizer = embedded
    rows = arithmetic_dataset("test", size=2)
    groups = sample_groups(
        model, tokenizer, rows["prompt"], rows["solution"], alternate, num_generations=4, max_tokens=10
    )
    assert groups.hidden.shape[:2] == groups.completion_ids.shape
    # Training's capture: the output of the decoder block named by resrl_hidden_layer=-2, sliced at the positions
    # whose logits score the completion tokens (the placement's training_forward).
    captured = []
    handle = decoder_block(model, -2).register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output)
    )
    prompt = tokenizer.apply_chat_template(rows["prompt"][0], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]  # fmt: skip
    completion = groups.completion_ids[:4]
    mask = groups.completion_mask[:4]
    with torch.no_grad():
        model(
            torch.cat([prompt.expand(4, -1), completion], 1),
            attention_mask=torch.cat([torch.ones(4, prompt.shape[1], dtype=torch.long), mask.long()], 1),
        )
    handle.remove()
    total, length = prompt.shape[1] + completion.shape[1], completion.shape[1]
    training_hidden = captured[0][:, total - length - 1 : total - 1]
    torch.testing.assert_close(groups.hidden[:4][mask], training_hidden[mask].float(), rtol=1e-4, atol=1e-4)
    own = groups.hidden_at("own")[:4]  # resrl_weight_position="own": one position later
    torch.testing.assert_close(own[mask], captured[0][:, total - length :][mask].float(), rtol=1e-4, atol=1e-4)

    settings = SubspaceSettings(rank=8)
    found = inspect_weights(groups, settings, seed=3)
    expected = compute_residual_weights(
        groups.hidden, groups.completion_mask, groups.group_ids, groups.rewards > 0, settings, group_seed=3,
        num_groups=2,
    ).weights  # fmt: skip
    torch.testing.assert_close(found["weights"], expected)
    assert bool((found["weights"][found["weighted"]] < 1).any())


def test_page_and_picture(embedded: tuple, tmp_path: Path) -> None:
    import matplotlib.image

    model, tokenizer = embedded
    rows = arithmetic_dataset("test", size=2)
    settings = SubspaceSettings(rank=8)
    shown = inspect(
        model, tokenizer, rows["prompt"], rows["solution"], alternate, tmp_path, settings, num_generations=4,
        max_tokens=10, seed=1,
    )  # fmt: skip
    assert all(group["bounds"] is not None for group in shown)  # every group mixed by construction
    page = (tmp_path / HTML_FILE).read_text()
    titles = re.findall(r"title='weight ([0-9.]+), energy ([0-9.e+-]+)(, divergence token)?'", page)
    negatives = [n for group in shown for n in group["negatives"]]
    assert len(titles) == sum(len(n["tokens"]) for n in negatives)
    page_weights = [float(w) for w, _, _ in titles]
    # each negative that leaves the positives' text has its divergence token outlined, and the page says why
    diverging = [n for n in negatives if n["divergence"] is not None]
    assert diverging and sum(bool(marked) for _, _, marked in titles) == len(diverging)
    assert page.count("class='tok div'") == len(diverging) and "the position before it" in page
    shown_weights = [w for n in negatives for w in n["weights"]]
    assert page_weights == pytest.approx(shown_weights, abs=5e-4)
    assert all(0.1 - 1e-6 <= w <= 1 + 1e-6 for w in shown_weights) and min(shown_weights) < 0.5
    assert "Positive completions (2)" in page and "q_low = " in page
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert saved["settings"]["rank"] == 8 and len(saved["groups"]) == 2
    picture = matplotlib.image.imread(tmp_path / PNG_FILE)
    assert picture.shape[0] > 200 and picture.shape[1] > 800


def test_command_line(embedded: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--num_prompts", "2", "--num_generations", "4", "--max_tokens", "8", "--output_dir", str(tmp_path)])
    assert "groups got token weights" in capsys.readouterr().out
    for name in (HTML_FILE, PNG_FILE, JSON_FILE):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / JSON_FILE).read_text())
    assert saved["weight_position"] == "previous"
    assert saved["settings"] == {"rank": 64, "max_pos_tokens": 4096, "q_low": 0.2, "q_high": 0.8, "min_weight": 0.1,
                                 "niter": 4}  # fmt: skip
    assert len(saved["groups"]) == 2
    for group in saved["groups"]:
        assert len(group["positives"]) + len(group["negatives"]) == 4  # --num_generations
        for negative in group["negatives"]:  # a group without token weights leaves every weight at 1
            assert group["bounds"] is not None or set(negative["weights"]) == {1.0}
    with pytest.raises(SystemExit, match="q_low"):
        main(["--q_low", "0.9", "--q_high", "0.5", "--output_dir", str(tmp_path)])


def test_a_token_holding_part_of_a_character_is_shown_as_its_bytes(embedded: tuple) -> None:
    _, tokenizer = embedded
    ids = tokenizer.encode("\u2260", add_special_tokens=False)  # "≠": three UTF-8 bytes, split over two tokens here
    labels = [token_label(tokenizer, i) for i in ids]
    assert "\ufffd" not in "".join(labels)
    if len(ids) > 1:
        assert "".join(labels) == "\\xe2\\x89\\xa0"
    assert token_label(tokenizer, tokenizer.encode(" x", add_special_tokens=False)[0]) == " x"
