"""``resrl-inspect``: look at which tokens of failed completions ResRL penalises and which it spares.

    resrl-inspect --output_dir outputs/inspect                         # embedded model, 4 arithmetic prompts
    resrl-inspect --model Qwen/Qwen3-4B --adapter outputs/run --dataset ../shared/data/math/test.parquet

For each prompt it samples a group of completions, scores them with the reward, reads the policy's hidden states at
the layer training reads (``output_hidden_states[-2]`` by default, aligned with the logits that score each token),
and computes ResRL's weights with the same function and settings training uses. It writes ``inspect.html`` (each
negative completion's tokens coloured by weight, the group's positives beside them, energies in the tooltips) and
``inspect.png`` (the same colours, one row per negative, with each group's residual energies and the ``q_low`` /
``q_high`` quantiles that bound the weight map), and ``weights.json`` with every number shown.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .residual import SubspaceSettings, build_group_subspaces, compute_residual_weights, token_energies

__all__ = ["SampledGroups", "inspect_weights", "main", "sample_groups", "write_html", "write_png"]

HTML_FILE, PNG_FILE, JSON_FILE = "inspect.html", "inspect.png", "weights.json"
Reward = Callable[..., list[float | None]]


@dataclass
class SampledGroups:
    """Completions sampled in groups, scored, with the hidden states ResRL reads. Rows are grouped by prompt."""

    prompts: list[str]
    """The user message of each group's prompt."""
    solutions: list[str]
    completion_ids: torch.Tensor
    """``(B, T)`` completion token ids, right-padded."""
    completion_mask: torch.Tensor
    """``(B, T)`` bool: tokens up to and including the first end-of-sequence token."""
    group_ids: torch.Tensor
    """``(B,)`` index of each row's prompt."""
    rewards: torch.Tensor
    """``(B,)`` float rewards (NaN where the reward could not score)."""
    texts: list[str]
    hidden: torch.Tensor
    """``(B, T, H)`` hidden states at the positions whose logits score each completion token."""
    final_hidden: torch.Tensor | None = None
    """``(B, T, H)`` the output head's inputs at those positions (with ``with_head``)."""
    logits: torch.Tensor | None = None
    """``(B, T, V)`` the head's outputs there (with ``with_head``)."""


def _completion_mask(ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """Tokens up to and including the first end-of-sequence token (as TRL masks completions)."""
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= ids == eos
    after_eos = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) > 0
    return ~after_eos


@torch.no_grad()
def sample_groups(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    solutions: Sequence[str],
    reward: Reward,
    *,
    num_generations: int = 8,
    max_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    hidden_layer: int = -2,
    with_head: bool = False,
) -> SampledGroups:
    """Sample ``num_generations`` completions per prompt, score them with ``reward`` (a TRL reward function:
    ``reward(completions=[...], solution=[...])``), and capture the hidden states of a second forward pass over
    prompt + completion, exactly where training reads them."""
    device = next(model.parameters()).device
    configured = getattr(model.generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    eos_ids = {e for e in [tokenizer.eos_token_id, *configured] if e is not None}
    rows: list[dict[str, Any]] = []
    for group, (prompt, solution) in enumerate(zip(prompts, solutions, strict=True)):
        encoded = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_ids = encoded["input_ids"].to(device)
        torch.manual_seed(seed * 1_000_003 + group)
        output = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_tokens,
            num_return_sequences=num_generations,
            pad_token_id=tokenizer.pad_token_id,
        )
        completions = output[:, prompt_ids.shape[1] :]
        mask = _completion_mask(completions, eos_ids)
        texts = [tokenizer.decode(ids[m], skip_special_tokens=True) for ids, m in zip(completions, mask, strict=True)]
        scores = reward(completions=texts, solution=[solution] * len(texts))
        forward = model(
            output,
            attention_mask=torch.cat([torch.ones_like(prompt_ids).expand(len(output), -1), mask.long()], 1),
            output_hidden_states=True,
        )
        start, end = prompt_ids.shape[1] - 1, output.shape[1] - 1  # position t-1 scores token t
        rows.append(
            {
                "prompt": prompt[-1]["content"],
                "ids": completions.cpu(),
                "mask": mask.cpu(),
                "rewards": [math.nan if s is None else float(s) for s in scores],
                "texts": texts,
                "hidden": forward.hidden_states[hidden_layer][:, start:end].float().cpu(),
                "final": forward.hidden_states[-1][:, start:end].float().cpu() if with_head else None,
                "logits": forward.logits[:, start:end].float().cpu() if with_head else None,
            }
        )
    width = max(row["ids"].shape[1] for row in rows)

    def stack(key: str, fill: float | int | bool) -> torch.Tensor:
        parts = []
        for row in rows:
            value = row[key]
            pad = width - value.shape[1]
            parts.append(torch.cat([value, value.new_full((value.shape[0], pad, *value.shape[2:]), fill)], 1))
        return torch.cat(parts)

    return SampledGroups(
        prompts=[row["prompt"] for row in rows],
        solutions=list(solutions),
        completion_ids=stack("ids", tokenizer.pad_token_id or 0),
        completion_mask=stack("mask", False),
        group_ids=torch.arange(len(rows)).repeat_interleave(num_generations),
        rewards=torch.tensor([r for row in rows for r in row["rewards"]]),
        texts=[t for row in rows for t in row["texts"]],
        hidden=stack("hidden", 0.0),
        final_hidden=stack("final", 0.0) if with_head else None,
        logits=stack("logits", 0.0) if with_head else None,
    )


def inspect_weights(
    groups: SampledGroups, settings: SubspaceSettings, positive_threshold: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """ResRL's weights, energies and quantile bounds for sampled groups (the function training calls)."""
    is_positive = groups.rewards > positive_threshold  # NaN compares False: an unscored completion is negative
    num_groups = len(groups.prompts)
    result = compute_residual_weights(
        groups.hidden, groups.completion_mask, groups.group_ids, is_positive, settings, group_seed=seed,
        num_groups=num_groups,
    )  # fmt: skip
    # The weights come from the function the step placement calls in training; the subspaces are built again (same
    # seed, same result) only to show each token's energy and its group's quantile bounds.
    subspaces, _ = build_group_subspaces(
        groups.hidden, groups.completion_mask, groups.group_ids, is_positive, settings, num_groups=num_groups,
        group_seed=seed,
    )  # fmt: skip
    energy, _, has_subspace = token_energies(groups.hidden, groups.group_ids, subspaces)
    bounds = {
        group: (low, high)
        for group, low, high in zip(
            subspaces.group_ids.tolist(), subspaces.low.tolist(), subspaces.high.tolist(), strict=True
        )
    }
    return {
        "weights": result.weights,
        "energy": energy,
        "is_positive": is_positive,
        "weighted": groups.completion_mask & (~is_positive & has_subspace)[:, None],
        "bounds": bounds,
    }


def _token_strings(tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(i)]) for i, m in zip(ids, mask, strict=True) if m]


def _colour(weight: float, min_weight: float) -> tuple[float, float, float]:
    """Red for a full penalty (weight 1), fading to pale blue for a spared token (the smallest weight)."""
    share = 0.0 if min_weight >= 1 else min(max((weight - min_weight) / (1 - min_weight), 0.0), 1.0)
    spared, penalised = (0.80, 0.88, 1.00), (0.90, 0.15, 0.12)
    return tuple(s + (p - s) * share for s, p in zip(spared, penalised, strict=True))  # type: ignore[return-value]


def _group_rows(groups: SampledGroups, found: dict[str, Any], tokenizer: Any) -> list[dict[str, Any]]:
    """Per group, what the page shows: positives' texts, and each negative's tokens with weight and energy."""
    out = []
    for group, prompt in enumerate(groups.prompts):
        rows = (groups.group_ids == group).nonzero().flatten().tolist()
        negatives = []
        for row in rows:
            if bool(found["is_positive"][row]):
                continue
            mask = groups.completion_mask[row]
            negatives.append(
                {
                    "tokens": _token_strings(tokenizer, groups.completion_ids[row], mask),
                    "weights": found["weights"][row][mask].tolist(),
                    "energy": found["energy"][row][mask].tolist() if bool(found["weighted"][row].any()) else None,
                    "reward": float(groups.rewards[row]),
                }
            )
        out.append(
            {
                "prompt": prompt,
                "solution": groups.solutions[group],
                "positives": [groups.texts[r] for r in rows if bool(found["is_positive"][r])],
                "negatives": negatives,
                "bounds": found["bounds"].get(group),
            }
        )
    return out


def write_html(path: Path, groups: list[dict[str, Any]], settings: SubspaceSettings) -> None:
    """The inspection page: per group, the positives, then each negative's tokens coloured by weight."""

    def swatch(weight: float) -> str:
        r, g, b = _colour(weight, settings.min_weight)
        return f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})"

    parts = [
        "<!doctype html><meta charset='utf-8'><title>ResRL token weights</title><style>"
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        ".tok{font-family:monospace;white-space:pre-wrap;padding:1px 0;border-radius:2px}"
        ".pos{background:#e8f6e8;padding:4px;margin:2px 0;font-family:monospace;white-space:pre-wrap}"
        ".neg{margin:6px 0;line-height:1.8}.note{color:#555}</style>",
        "<h1>Which tokens of failed completions ResRL penalises</h1>",
        "<p>Each failed completion's tokens are coloured by their weight on the negative advantage: "
        f"<span class='tok' style='background:{swatch(1.0)}'>&nbsp;1.0 full penalty&nbsp;</span> to "
        f"<span class='tok' style='background:{swatch(settings.min_weight)}'>&nbsp;{settings.min_weight} "
        "spared (looks like the successful completions)&nbsp;</span>. Hover a token for its weight and residual "
        f"energy. Settings: rank {settings.rank}, q_low {settings.q_low}, q_high {settings.q_high}, min_weight "
        f"{settings.min_weight}.</p>",
    ]
    for index, group in enumerate(groups):
        parts.append(
            f"<h2>Group {index}</h2><p><b>Prompt:</b> {html.escape(group['prompt'])} "
            f"<b>Answer:</b> {html.escape(group['solution'])}</p>"
        )
        if group["bounds"] is None:
            why = "no positive completion" if not group["positives"] else "no negative completion"
            if group["positives"] and group["negatives"]:
                why = "fewer than 4 positive tokens"
            parts.append(f"<p class='note'>No token weights in this group ({why}): every weight is 1.</p>")
        else:
            low, high = group["bounds"]
            parts.append(
                f"<p class='note'>Residual energy quantiles of the negative tokens: q_low = {low:.4g} (weight "
                f"{settings.min_weight}), q_high = {high:.4g} (weight 1).</p>"
            )
        parts.append(f"<h3>Positive completions ({len(group['positives'])})</h3>")
        parts += [f"<div class='pos'>{html.escape(text)}</div>" for text in group["positives"]]
        parts.append(f"<h3>Negative completions ({len(group['negatives'])})</h3>")
        for negative in group["negatives"]:
            spans = []
            for position, (token, weight) in enumerate(zip(negative["tokens"], negative["weights"], strict=True)):
                energy = "" if negative["energy"] is None else f", energy {negative['energy'][position]:.4g}"
                spans.append(
                    f"<span class='tok' style='background:{swatch(weight)}' title='weight {weight:.3f}{energy}'>"
                    f"{html.escape(token)}</span>"
                )
            parts.append(f"<div class='neg'>{''.join(spans)}</div>")
    path.write_text("\n".join(parts))


def write_png(path: Path, groups: list[dict[str, Any]], settings: SubspaceSettings, max_tokens: int = 24) -> None:
    """Per group with token weights: its positives (green), one row per negative completion (tokens as cells coloured
    by weight), and the negatives' residual energies with the quantiles that bound the weight map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    shown = [g for g in groups if g["bounds"] is not None] or groups[:1]
    max_positives = 3
    heights = [min(len(g["positives"]), max_positives) + max(len(g["negatives"]), 1) + 1.0 for g in shown]
    figure, axes = plt.subplots(
        len(shown), 2, figsize=(16, 0.4 * sum(heights) + 1.6), squeeze=False, layout="constrained",
        gridspec_kw={"width_ratios": [4.2, 1], "height_ratios": heights},
    )  # fmt: skip
    colours = LinearSegmentedColormap.from_list(
        "weight", [_colour(settings.min_weight, settings.min_weight), _colour(1.0, settings.min_weight)]
    )
    for (tokens_axis, energy_axis), group in zip(axes, shown, strict=True):
        positives = group["positives"][:max_positives]
        for row, text in enumerate(positives):
            tokens_axis.add_patch(plt.Rectangle((0, row), max_tokens, 0.9, color=(0.87, 0.96, 0.87)))
            shown_text = " ".join(text.split())
            tokens_axis.text(0.2, row + 0.45, shown_text[:150], va="center", fontsize=7, color=(0.1, 0.4, 0.1))
        labels = [f"pos {r}" for r in range(len(positives))]
        for index, negative in enumerate(group["negatives"]):
            row = len(positives) + index
            labels.append(f"neg {index}")
            cells = zip(negative["tokens"][:max_tokens], negative["weights"][:max_tokens], strict=True)
            for column, (token, weight) in enumerate(cells):
                colour = _colour(weight, settings.min_weight)
                tokens_axis.add_patch(plt.Rectangle((column, row), 0.96, 0.9, color=colour))
                label = token.replace("\n", "\\n").strip() or "\u2423"
                tokens_axis.text(column + 0.48, row + 0.45, label[:7], ha="center", va="center", fontsize=7)
        tokens_axis.set_xlim(0, max_tokens)
        tokens_axis.set_ylim(max(len(labels), 1), 0)
        tokens_axis.set_xticks([])
        tokens_axis.set_yticks([r + 0.45 for r in range(len(labels))], labels, fontsize=7)
        for side in ("top", "right", "bottom"):
            tokens_axis.spines[side].set_visible(False)
        title = (
            f"{group['prompt'][:90]}  (answer {group['solution']}; {len(group['positives'])} positive, "
            f"{len(group['negatives'])} negative)"
        )
        tokens_axis.set_title(title, fontsize=9, loc="left")
        energies = [e for n in group["negatives"] if n["energy"] is not None for e in n["energy"]]
        if energies and group["bounds"] is not None:
            energy_axis.hist(energies, bins=20, color="0.6")
            names = (f"q_low {settings.q_low}", f"q_high {settings.q_high}")
            for value, name in zip(group["bounds"], names, strict=True):
                energy_axis.axvline(value, color="k", linestyle="--", linewidth=1)
                energy_axis.text(value, energy_axis.get_ylim()[1] * 0.95, name, rotation=90, fontsize=7, va="top")
            energy_axis.set_xlabel("residual energy of negative tokens", fontsize=8)
            energy_axis.tick_params(labelsize=7)
        else:
            energy_axis.axis("off")
            energy_axis.text(0.0, 0.5, "no token weights in this group:\nevery weight is 1", fontsize=8, va="center")
    mappable = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(settings.min_weight, 1.0))
    bar = figure.colorbar(mappable, ax=axes[:, 0].tolist(), orientation="horizontal", fraction=0.03, aspect=60)
    bar.set_label(
        "weight on the negative advantage: 1 = full penalty, low = spared (close to the positives' subspace)"
    )
    mixed = sum(g["bounds"] is not None for g in groups)
    figure.suptitle(
        f"ResRL token weights of failed completions: {mixed} of {len(groups)} groups have token weights "
        "(the others hold no positive or no negative completion and keep weight 1)",
        fontsize=11,
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def inspect(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    solutions: Sequence[str],
    reward: Reward,
    output_dir: str | Path,
    settings: SubspaceSettings | None = None,
    *,
    num_generations: int = 8,
    max_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
    hidden_layer: int = -2,
    positive_threshold: float = 0.0,
) -> list[dict[str, Any]]:
    """Sample, weight and write ``inspect.html``, ``inspect.png`` and ``weights.json``; returns the groups shown."""
    settings = settings or SubspaceSettings()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    groups = sample_groups(
        model, tokenizer, prompts, solutions, reward, num_generations=num_generations, max_tokens=max_tokens,
        temperature=temperature, seed=seed, hidden_layer=hidden_layer,
    )  # fmt: skip
    shown = _group_rows(groups, inspect_weights(groups, settings, positive_threshold, seed), tokenizer)
    write_html(output / HTML_FILE, shown, settings)
    write_png(output / PNG_FILE, shown, settings)
    (output / JSON_FILE).write_text(json.dumps({"settings": vars(settings), "groups": shown}, indent=1))
    return shown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resrl-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="Hub id or folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--gguf_file", default=None)
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply")
    parser.add_argument("--dataset", default="arithmetic", help="'arithmetic', or a .parquet/.json/.jsonl file")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_prompts", type=int, default=6)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="training's sampling temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--max_pos_tokens", type=int, default=4096)
    parser.add_argument("--q_low", type=float, default=0.2)
    parser.add_argument("--q_high", type=float, default=0.8)
    parser.add_argument("--min_weight", type=float, default=0.1)
    parser.add_argument("--niter", type=int, default=4)
    parser.add_argument("--hidden_layer", type=int, default=-2, help="as resrl_hidden_layer in training")
    parser.add_argument("--positive_threshold", type=float, default=0.0)
    parser.add_argument("--output_dir", default="outputs/inspect")
    return parser


def main(argv: list[str] | None = None) -> None:
    from .data import load_math_dataset
    from .models import load_model_and_tokenizer
    from .rewards import math_reward
    from .trainer import decoder_layer_for_hidden_state

    opts = build_parser().parse_args(argv)
    try:
        settings = SubspaceSettings(
            opts.rank, opts.max_pos_tokens, opts.q_low, opts.q_high, opts.min_weight, opts.niter
        )
    except ValueError as error:
        raise SystemExit(f"resrl-inspect: {error}") from None
    dataset = load_math_dataset(opts.dataset, opts.split, seed=opts.seed)
    dataset = dataset.select(range(min(opts.num_prompts, len(dataset))))
    model, tokenizer = load_model_and_tokenizer(opts.model, opts.gguf_file)
    if opts.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, opts.adapter)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    try:  # the same check training makes: the layer must be a decoder block's output
        decoder_layer_for_hidden_state(model, opts.hidden_layer)
    except ValueError as error:
        raise SystemExit(f"resrl-inspect: {error}") from None
    shown = inspect(
        model, tokenizer, dataset["prompt"], dataset["solution"], math_reward, opts.output_dir, settings,
        num_generations=opts.num_generations, max_tokens=opts.max_tokens, temperature=opts.temperature,
        seed=opts.seed, hidden_layer=opts.hidden_layer, positive_threshold=opts.positive_threshold,
    )  # fmt: skip
    weighted = sum(g["bounds"] is not None for g in shown)
    output = Path(opts.output_dir)
    print(f"{weighted} of {len(shown)} groups got token weights; wrote {output / HTML_FILE} and {output / PNG_FILE}")


if __name__ == "__main__":
    main()
