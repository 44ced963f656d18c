"""``resrl-inspect``: look at which tokens of failed completions ResRL penalises and which it spares.

    resrl-inspect --output_dir outputs/inspect                         # embedded model, 4 arithmetic prompts
    resrl-inspect --model Qwen/Qwen3-4B --adapter outputs/run --dataset ../shared/data/math/test.parquet
    resrl-inspect --dataset files_demo --max_tokens 96 --output_dir outputs/inspect_agent    # multi-turn rollouts

For each prompt it samples a group of completions, scores them with the reward, reads the policy's hidden states at
the layer training reads (``output_hidden_states[-2]`` by default, aligned with the logits that score each token),
and computes ResRL's weights with the same function and settings training uses. It writes ``inspect.html`` (each
negative completion's tokens coloured by weight, the group's positives beside them, energies in the tooltips) and
``inspect.png`` (the same colours, one row per negative, with each group's residual energies and the ``q_low`` /
``q_high`` quantiles that bound the weight map), and ``weights.json`` with every number shown.

With an agent dataset (:mod:`resrl_trl.agent_tasks`) a group is multi-turn rollouts in their environments, built as
TRL's tool loop builds them; the tool turns' tokens are shown grey in place: the model reads them, but they are not
its own, so they get no weight and stay out of the subspace (as in training, through TRL's ``tool_mask``).
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .analysis import divergence_positions
from .capture import capture_outputs, decoder_block
from .residual import (
    WEIGHT_POSITIONS,
    SubspaceSettings,
    build_group_subspaces,
    completion_states,
    compute_residual_weights,
    token_energies,
)

__all__ = [
    "add_group_sampling_arguments",
    "load_policy_and_prompts",
    "SampledGroups",
    "block_states",
    "concatenate",
    "inspect_weights",
    "iter_agent_groups",
    "iter_groups",
    "main",
    "sample_groups",
    "write_html",
    "write_inspection",
    "write_png",
]

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
    states: torch.Tensor
    """``(B, T + 1, H)`` float32 outputs of the decoder block training reads, from the prompt's last position to the
    completion's last: both readings of :data:`~resrl_trl.residual.WEIGHT_POSITIONS` are slices of it."""
    weight_position: str = "previous"
    """The reading :attr:`hidden` gives (``resrl_weight_position``)."""
    final_states: torch.Tensor | None = None
    """``(B, T + 1, H)`` the output head's inputs at the same positions (with ``with_head``); no logits are kept."""
    tool_output: torch.Tensor | None = None
    """``(B, T)`` bool, multi-turn rollouts only: the tool turns' tokens inside a completion (TRL's ``tool_mask``
    0). They are read by the model but are not its own: outside ``completion_mask``, so out of the subspaces and
    without weights."""

    @property
    def hidden(self) -> torch.Tensor:
        """``(B, T, H)`` the state each completion token's weight is read from, as training reads it."""
        return self.hidden_at(self.weight_position)

    def hidden_at(self, position: str) -> torch.Tensor:
        return completion_states(self.states, self.completion_ids.shape[1], position)

    @property
    def final_hidden(self) -> torch.Tensor | None:
        """``(B, T, H)`` the head's inputs at the positions whose logits score each completion token."""
        if self.final_states is None:
            return None
        return completion_states(self.final_states, self.completion_ids.shape[1], "previous")


def _completion_mask(ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """Tokens up to and including the first end-of-sequence token (as TRL masks completions)."""
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= ids == eos
    after_eos = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) > 0
    return ~after_eos


@torch.no_grad()
def block_states(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: int, hidden_layer: int,
    with_head: bool, rows_per_forward: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The last ``positions`` outputs of the decoder block that ``output_hidden_states[hidden_layer]`` names (read by
    a forward hook, as training reads them), and of the final norm with ``with_head``. Only the decoder runs: no
    logits, no other layer's states are kept, and ``rows_per_forward`` rows go through at a time."""
    block = decoder_block(model, hidden_layer)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()  # a PEFT model's adapters sit inside the base model's modules
    captured: list[torch.Tensor] = []
    states, finals = [], []
    with capture_outputs(block, lambda hidden: captured.append(hidden[:, -positions:].float().cpu())):
        for start in range(0, len(input_ids), rows_per_forward):
            rows = slice(start, start + rows_per_forward)
            output = decoder(input_ids=input_ids[rows], attention_mask=attention_mask[rows], use_cache=False)
            states.append(captured.pop())
            if with_head:
                finals.append(output.last_hidden_state[:, -positions:].float().cpu())
    return torch.cat(states), torch.cat(finals) if with_head else None


def iter_groups(
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
    weight_position: str = "previous",
    with_head: bool = False,
    rows_per_forward: int = 8,
    first_group: int = 0,
) -> Iterator[SampledGroups]:
    """One group at a time: sample ``num_generations`` completions of a prompt, score them with ``reward`` (a TRL
    reward function: ``reward(completions=[...], solution=[...])``), and read the hidden states of a second forward
    over prompt + completion exactly where training reads them. Group ``i`` gets id ``first_group + i`` and sampling
    seed ``seed * 1_000_003 + first_group + i``. Memory is one group's: ``(G, T + 1, H)`` states, twice with
    ``with_head``."""
    device = next(model.parameters()).device
    configured = getattr(model.generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    eos_ids = {e for e in [tokenizer.eos_token_id, *configured] if e is not None}
    for offset, (prompt, solution) in enumerate(zip(prompts, solutions, strict=True)):
        group = first_group + offset
        encoded = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_ids = encoded["input_ids"].to(device)
        torch.manual_seed(seed * 1_000_003 + group)
        with torch.no_grad():
            output = model.generate(
                prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True, temperature=temperature,
                top_p=1.0, top_k=0, max_new_tokens=max_tokens, num_return_sequences=num_generations,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        completions = output[:, prompt_ids.shape[1] :]
        mask = _completion_mask(completions, eos_ids)
        texts = [tokenizer.decode(ids[m], skip_special_tokens=True) for ids, m in zip(completions, mask, strict=True)]
        scores = reward(completions=texts, solution=[solution] * len(texts))
        attention_mask = torch.cat([torch.ones_like(prompt_ids).expand(len(output), -1), mask.long()], 1)
        states, finals = block_states(
            model, output, attention_mask, completions.shape[1] + 1, hidden_layer, with_head, rows_per_forward
        )
        yield SampledGroups(
            prompts=[prompt[-1]["content"]],
            solutions=[solution],
            completion_ids=completions.cpu(),
            completion_mask=mask.cpu(),
            group_ids=torch.full((len(output),), group),
            rewards=torch.tensor([math.nan if s is None else float(s) for s in scores]),
            texts=texts,
            states=states,
            weight_position=weight_position,
            final_states=finals,
        )


def iter_agent_groups(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    factories: dict[str, Callable[[], Any]],
    *,
    num_generations: int = 8,
    max_tokens: int = 96,
    max_turns: int = 2,
    temperature: float = 1.0,
    seed: int = 0,
    hidden_layer: int = -2,
    weight_position: str = "previous",
    with_head: bool = False,
    rows_per_forward: int = 8,
    first_group: int = 0,
) -> Iterator[SampledGroups]:
    """:func:`iter_groups` for agent tasks (rows of :func:`resrl_trl.agent_tasks.load_agent_tasks`): each group is
    ``num_generations`` multi-turn rollouts of one task in their own environments (``factories``), built token by
    token as TRL's tool loop builds them and scored by the agent reward. ``completion_mask`` holds the model's own
    tokens only; the tool turns' tokens are :attr:`SampledGroups.tool_output`: the forward reads them, ResRL does
    not."""
    from argparse import Namespace

    from .agent_eval import TransformersGenerator, run_rollouts

    generator = TransformersGenerator(model, tokenizer, Namespace(temperature=temperature, top_p=1.0))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    for offset, row in enumerate(rows):
        group = first_group + offset
        environments = [factories[row["environment"]]() for _ in range(num_generations)]
        records = run_rollouts(
            generator, tokenizer, row, environments, max_turns, max_tokens, seed * 1_000_003 + group
        )
        width = max(1, *(len(r["completion_ids"]) for r in records))
        ids = torch.full((len(records), width), pad, dtype=torch.long)
        own = torch.zeros(len(records), width, dtype=torch.bool)
        tool = torch.zeros_like(own)
        for index, record in enumerate(records):
            length = len(record["completion_ids"])
            ids[index, :length] = torch.tensor(record["completion_ids"], dtype=torch.long)
            marks = torch.tensor(record["tool_mask"], dtype=torch.bool)
            own[index, :length], tool[index, :length] = marks, ~marks
        prompt = torch.tensor(records[0]["prompt_ids"], dtype=torch.long)[None].expand(len(records), -1)
        input_ids = torch.cat([prompt, ids], 1).to(device)
        attention_mask = torch.cat([torch.ones_like(prompt), (own | tool).long()], 1).to(device)
        states, finals = block_states(
            model, input_ids, attention_mask, width + 1, hidden_layer, with_head, rows_per_forward
        )
        task = json.loads(row["task"]) if str(row["task"]).startswith("{") else {}
        yield SampledGroups(
            prompts=[row["prompt"][-1]["content"]],
            solutions=["; ".join(task["target"]) if task.get("target") else "(the task's goal)"],
            completion_ids=ids,
            completion_mask=own,
            group_ids=torch.full((len(records),), group),
            rewards=torch.tensor([float(r["reward"]) for r in records]),
            texts=[tokenizer.decode(r["completion_ids"], skip_special_tokens=True) for r in records],
            states=states,
            weight_position=weight_position,
            final_states=finals,
            tool_output=tool,
        )


def concatenate(parts: Sequence[SampledGroups], pad_token_id: int = 0) -> SampledGroups:
    """Several groups (of :func:`iter_groups`) as one batch, right-padded to the longest completion."""
    width = max(part.completion_ids.shape[1] for part in parts)

    def stack(values: list[torch.Tensor], fill: float | int | bool, extra: int = 0) -> torch.Tensor:
        padded = []
        for value in values:
            pad = width + extra - value.shape[1]
            padded.append(torch.cat([value, value.new_full((value.shape[0], pad, *value.shape[2:]), fill)], 1))
        return torch.cat(padded)

    with_head = parts[0].final_states is not None
    return SampledGroups(
        prompts=[p for part in parts for p in part.prompts],
        solutions=[s for part in parts for s in part.solutions],
        completion_ids=stack([part.completion_ids for part in parts], pad_token_id),
        completion_mask=stack([part.completion_mask for part in parts], False),
        group_ids=torch.cat([part.group_ids for part in parts]),
        rewards=torch.cat([part.rewards for part in parts]),
        texts=[t for part in parts for t in part.texts],
        states=stack([part.states for part in parts], 0.0, extra=1),
        weight_position=parts[0].weight_position,
        final_states=stack([part.final_states for part in parts], 0.0, extra=1) if with_head else None,
        tool_output=(stack([part.tool_output for part in parts], False) if parts[0].tool_output is not None else None),
    )


def sample_groups(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    solutions: Sequence[str],
    reward: Reward,
    **options: Any,
) -> SampledGroups:
    """Every group of :func:`iter_groups` (same options) in one batch: for a few short groups; use
    :func:`iter_groups` at real lengths."""
    parts = list(iter_groups(model, tokenizer, prompts, solutions, reward, **options))
    return concatenate(parts, tokenizer.pad_token_id or 0)


def inspect_weights(
    groups: SampledGroups, settings: SubspaceSettings, positive_threshold: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """ResRL's weights, energies, quantile bounds and divergence tokens for sampled groups (the weights come from
    the function training calls, on the states :attr:`SampledGroups.hidden` reads)."""
    is_positive = groups.rewards > positive_threshold  # NaN compares False: an unscored completion is negative
    hidden, mask, group_ids = groups.hidden, groups.completion_mask, groups.group_ids
    result = compute_residual_weights(hidden, mask, group_ids, is_positive, settings, group_seed=seed)
    # The subspaces are built again (same seed, same result) only to show each token's energy and the quantiles.
    subspaces, _ = build_group_subspaces(
        hidden, mask, group_ids, is_positive, settings, num_groups=int(group_ids.max()) + 1, group_seed=seed
    )
    energy, _, has_subspace = token_energies(hidden, group_ids, subspaces)
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
        "weighted": mask & (~is_positive & has_subspace)[:, None],
        "bounds": bounds,
        "divergence": divergence_positions(groups.completion_ids, mask, group_ids, is_positive),
    }


# GPT-2-style byte-level tokenizers spell each byte as one printable character; the inverse gives a token's bytes.
def _byte_alphabet() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {chr(b): b for b in printable}, 0
    for byte in range(256):
        if byte not in printable:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


BYTE_ALPHABET = _byte_alphabet()


def token_label(tokenizer: Any, token_id: int) -> str:
    """A token as text; a token that holds only part of a multi-byte character (decoding to U+FFFD) is shown with
    that part as escaped bytes, e.g. ``\\xe2\\x89``, instead of a replacement character."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    raw = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(raw, str) and raw and all(c in BYTE_ALPHABET for c in raw):
        return bytes(BYTE_ALPHABET[c] for c in raw).decode("utf-8", errors="backslashreplace")
    return str(raw)  # e.g. SentencePiece's byte fallback, already spelled "<0xE2>"


def _token_strings(tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [token_label(tokenizer, int(i)) for i, m in zip(ids, mask, strict=True) if m]


def _colour(weight: float, min_weight: float) -> tuple[float, float, float]:
    """Red for a full penalty (weight 1), fading to pale blue for a spared token (the smallest weight)."""
    share = 0.0 if min_weight >= 1 else min(max((weight - min_weight) / (1 - min_weight), 0.0), 1.0)
    spared, penalised = (0.80, 0.88, 1.00), (0.90, 0.15, 0.12)
    return tuple(s + (p - s) * share for s, p in zip(spared, penalised, strict=True))  # type: ignore[return-value]


def _own_values(values: torch.Tensor, shown: torch.Tensor, tool: torch.Tensor) -> list[float | None]:
    """The shown tokens' values, None for a tool turn's token."""
    return [None if t else v for v, t in zip(values[shown].tolist(), tool[shown].tolist(), strict=True)]


def _group_rows(groups: SampledGroups, found: dict[str, Any], tokenizer: Any) -> list[dict[str, Any]]:
    """Per group, what the page shows: positives' texts, and each negative's tokens with weight, energy and
    divergence token."""
    out = []
    for index, prompt in enumerate(groups.prompts):
        group = int(groups.group_ids.unique()[index])
        rows = (groups.group_ids == group).nonzero().flatten().tolist()
        negatives = []
        for row in rows:
            if bool(found["is_positive"][row]):
                continue
            mask = groups.completion_mask[row]
            # multi-turn: the tool turns' tokens are shown in place, without a weight (None)
            tool = groups.tool_output[row] if groups.tool_output is not None else torch.zeros_like(mask)
            shown = mask | tool
            weights = _own_values(found["weights"][row], shown, tool)
            energy = _own_values(found["energy"][row], shown, tool) if bool(found["weighted"][row].any()) else None
            divergence = int(found["divergence"][row])
            negatives.append(
                {
                    "tokens": _token_strings(tokenizer, groups.completion_ids[row], shown),
                    "weights": weights,
                    "energy": energy,
                    "reward": float(groups.rewards[row]),
                    "divergence": divergence if divergence >= 0 else None,
                }
            )
        out.append(
            {
                "prompt": prompt,
                "solution": groups.solutions[index],
                "positives": [groups.texts[r] for r in rows if bool(found["is_positive"][r])],
                "negatives": negatives,
                "bounds": found["bounds"].get(group),
            }
        )
    return out


def reading_note(position: str) -> str:
    """Which hidden state a token's weight is read from, in words (the page and the picture say it)."""
    if position == "previous":
        return (
            "Each token's weight is read from the hidden state at the position before it, the state whose logits "
            "chose the token (the reference's reading, resrl_weight_position='previous'). That state has not read "
            "the token: a failed completion's divergence token (outlined), the first where it leaves every "
            "successful completion's text, is read from a state a successful completion shares, and is spared."
        )
    return (
        "Each token's weight is read from the hidden state at the token's own position, which has read it "
        "(resrl_weight_position='own', an ablation; the reference reads the position before). The divergence token "
        "(outlined) is the first where a failed completion leaves every successful completion's text."
    )


def write_html(path: Path, groups: list[dict[str, Any]], settings: SubspaceSettings, position: str) -> None:
    """The inspection page: per group, the positives, then each negative's tokens coloured by weight."""

    def swatch(weight: float) -> str:
        r, g, b = _colour(weight, settings.min_weight)
        return f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})"

    parts = [
        "<!doctype html><meta charset='utf-8'><title>ResRL token weights</title><style>"
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        ".tok{font-family:monospace;white-space:pre-wrap;padding:1px 0;border-radius:2px}"
        ".div{outline:2px solid #000;outline-offset:0}"
        ".pos{background:#e8f6e8;padding:4px;margin:2px 0;font-family:monospace;white-space:pre-wrap}"
        ".neg{margin:6px 0;line-height:1.8}.note{color:#555}"
        ".tool{background:#e6e6e6;color:#666;font-style:italic}</style>",
        "<h1>Which tokens of failed completions ResRL penalises</h1>",
        "<p>Each failed completion's tokens are coloured by their weight on the negative advantage: "
        f"<span class='tok' style='background:{swatch(1.0)}'>&nbsp;1.0 full penalty&nbsp;</span> to "
        f"<span class='tok' style='background:{swatch(settings.min_weight)}'>&nbsp;{settings.min_weight} "
        "spared (its state lies close to the successful completions' subspace)&nbsp;</span>. "
        f"{html.escape(reading_note(position))} Hover a token for its weight and residual energy. A token that holds "
        "part of a character shows that part as escaped bytes, \\xe2\\x89. In a multi-turn rollout the tool turns' "
        "tokens are <span class='tok tool'>grey and italic</span>: the model reads them but did not write them, so "
        "they get no weight and stay out of the subspace. Settings: rank "
        f"{settings.rank}, max_pos_tokens {settings.max_pos_tokens}, q_low {settings.q_low}, q_high "
        f"{settings.q_high}, min_weight {settings.min_weight}.</p>",
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
            for position_, (token, weight) in enumerate(zip(negative["tokens"], negative["weights"], strict=True)):
                if weight is None:  # a tool turn's token: read by the model, not its own
                    spans.append(
                        f"<span class='tok tool' title='tool output: not the model&#39;s token, no weight, not in "
                        f"the subspace'>{html.escape(token)}</span>"
                    )
                    continue
                energy = "" if negative["energy"] is None else f", energy {negative['energy'][position_]:.4g}"
                diverges = position_ == negative["divergence"]
                note = ", divergence token" if diverges else ""
                css = "tok div" if diverges else "tok"
                spans.append(
                    f"<span class='{css}' style='background:{swatch(weight)}' "
                    f"title='weight {weight:.3f}{energy}{note}'>{html.escape(token)}</span>"
                )
            parts.append(f"<div class='neg'>{''.join(spans)}</div>")
    path.write_text("\n".join(parts))


PNG_TOKENS, PNG_CELL_CHARS, PNG_POSITIVES, PNG_POSITIVE_CHARS = 24, 7, 3, 150


def write_png(path: Path, groups: list[dict[str, Any]], settings: SubspaceSettings, position: str) -> None:
    """Per group with token weights: its positives (green), one row per negative completion (tokens as cells coloured
    by weight, the divergence token outlined), and the negatives' residual energies with the quantiles that bound
    the weight map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    shown = [g for g in groups if g["bounds"] is not None] or groups[:1]
    heights = [min(len(g["positives"]), PNG_POSITIVES) + max(len(g["negatives"]), 1) + 1.6 for g in shown]
    figure, axes = plt.subplots(
        len(shown), 2, figsize=(16, 0.4 * sum(heights) + 2.2), squeeze=False, layout="constrained",
        gridspec_kw={"width_ratios": [4.2, 1], "height_ratios": heights},
    )  # fmt: skip
    colours = LinearSegmentedColormap.from_list(
        "weight", [_colour(settings.min_weight, settings.min_weight), _colour(1.0, settings.min_weight)]
    )
    for (tokens_axis, energy_axis), group in zip(axes, shown, strict=True):
        positives = group["positives"][:PNG_POSITIVES]
        for row, text in enumerate(positives):
            tokens_axis.add_patch(plt.Rectangle((0, row), PNG_TOKENS, 0.9, color=(0.87, 0.96, 0.87)))
            shown_text = " ".join(text.split())
            if len(shown_text) > PNG_POSITIVE_CHARS:
                shown_text = shown_text[: PNG_POSITIVE_CHARS - 1] + "…"
            tokens_axis.text(0.2, row + 0.45, shown_text, va="center", fontsize=7, color=(0.1, 0.4, 0.1))
        labels = [f"pos {r}" for r in range(len(positives))]
        for index, negative in enumerate(group["negatives"]):
            row = len(positives) + index
            labels.append(f"neg {index}")
            cells = zip(negative["tokens"][:PNG_TOKENS], negative["weights"][:PNG_TOKENS], strict=False)
            for column, (token, weight) in enumerate(cells):
                colour = (0.88, 0.88, 0.88) if weight is None else _colour(weight, settings.min_weight)
                tokens_axis.add_patch(plt.Rectangle((column, row), 0.96, 0.9, color=colour))
                if column == negative["divergence"]:
                    tokens_axis.add_patch(plt.Rectangle((column, row), 0.96, 0.9, fill=False, lw=1.6, ec="k"))
                label = token.replace("\n", "\\n").strip() or "\u2423"
                label = label if len(label) <= PNG_CELL_CHARS else label[: PNG_CELL_CHARS - 1] + "…"
                tokens_axis.text(column + 0.48, row + 0.45, label, ha="center", va="center", fontsize=7)
        tokens_axis.set_xlim(0, PNG_TOKENS)
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
        energies = [e for n in group["negatives"] if n["energy"] is not None for e in n["energy"] if e is not None]
        if energies and group["bounds"] is not None:
            energy_axis.hist(energies, bins=20, color="0.6")
            low, high = group["bounds"]
            energy_axis.axvline(low, color="tab:blue", linestyle="--", linewidth=1.2, label=f"q_low {settings.q_low}")
            energy_axis.axvline(
                high, color="tab:red", linestyle="--", linewidth=1.2, label=f"q_high {settings.q_high}"
            )
            energy_axis.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
            energy_axis.set_xlabel("residual energy of negative tokens", fontsize=8)
            energy_axis.set_ylabel("tokens", fontsize=8)
            energy_axis.tick_params(labelsize=7)
        else:
            energy_axis.axis("off")
            energy_axis.text(0.0, 0.5, "no token weights in this group:\nevery weight is 1", fontsize=8, va="center")
    mappable = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(settings.min_weight, 1.0))
    bar = figure.colorbar(mappable, ax=axes[:, 0].tolist(), orientation="horizontal", fraction=0.03, aspect=60)
    bar.set_label(
        "weight on the negative advantage: 1 = full penalty, low = spared (close to the positives' subspace); "
        "outlined: the divergence token; grey: tool output (not the model's tokens, no weight)"
    )
    mixed = sum(g["bounds"] is not None for g in groups)
    reading = "the state before each token" if position == "previous" else "each token's own state"
    lines = [
        f"ResRL token weights of failed completions, read from {reading}: {mixed} of {len(groups)} groups have token "
        "weights (the others hold no positive or no negative completion and keep weight 1)",
        f"Shown: each negative's first {PNG_TOKENS} tokens, at most {PNG_CELL_CHARS} characters per cell (… marks a "
        f"cut); up to {PNG_POSITIVES} positives per group, at most {PNG_POSITIVE_CHARS} characters each;",
        "\\xe2: a byte of a token that holds part of a character. inspect.html shows every token.",
    ]
    figure.suptitle("\n".join(lines), fontsize=10)
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
    weight_position: str = "previous",
    positive_threshold: float = 0.0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Sample, weight and write ``inspect.html``, ``inspect.png`` and ``weights.json``, one group at a time (only
    one group's hidden states are held); returns the groups shown."""
    sampled = iter_groups(
        model, tokenizer, prompts, solutions, reward, num_generations=num_generations, max_tokens=max_tokens,
        temperature=temperature, seed=seed, hidden_layer=hidden_layer, weight_position=weight_position,
    )  # fmt: skip
    return write_inspection(
        sampled, tokenizer, output_dir, settings or SubspaceSettings(), weight_position, positive_threshold, seed,
        total=len(prompts) if progress else None,
    )  # fmt: skip


def write_inspection(
    sampled: Iterable[SampledGroups],
    tokenizer: Any,
    output_dir: str | Path,
    settings: SubspaceSettings,
    weight_position: str = "previous",
    positive_threshold: float = 0.0,
    seed: int = 0,
    total: int | None = None,
) -> list[dict[str, Any]]:
    """Weight each sampled group (of :func:`iter_groups` or :func:`iter_agent_groups`) as it comes and write
    ``inspect.html``, ``inspect.png`` and ``weights.json``; says how far it got when given the ``total``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    shown: list[dict[str, Any]] = []
    for index, group in enumerate(sampled):
        shown += _group_rows(group, inspect_weights(group, settings, positive_threshold, seed), tokenizer)
        if total is not None:
            print(f"group {index + 1} of {total} sampled and weighted", flush=True)
    write_html(output / HTML_FILE, shown, settings, weight_position)
    write_png(output / PNG_FILE, shown, settings, weight_position)
    summary = {"settings": vars(settings), "weight_position": weight_position, "groups": shown}
    (output / JSON_FILE).write_text(json.dumps(summary, indent=1))
    return shown


def add_group_sampling_arguments(parser: Any, num_prompts: int, max_tokens: int) -> None:
    """The flags of the scripts that sample groups from a policy (experiments/): the policy (as resrl-eval names it),
    the prompts and the sampling."""
    from .evaluation import add_policy_arguments

    add_policy_arguments(parser)
    parser.add_argument("--dataset", default="arithmetic")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_prompts", type=int, default=num_prompts)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=max_tokens)
    parser.add_argument("--temperature", type=float, default=1.0, help="training's sampling temperature")
    parser.add_argument("--seed", type=int, default=0)


def load_policy_and_prompts(opts: Any) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, rows)`` for :func:`add_group_sampling_arguments`' flags: the model (with its adapter) in
    evaluation mode on the GPU when there is one, and the first ``num_prompts`` rows of the dataset."""
    from .data import load_math_dataset
    from .models import load_policy_for_sampling

    rows = load_math_dataset(opts.dataset, opts.split, seed=opts.seed)
    rows = rows.select(range(min(opts.num_prompts, len(rows))))
    model, tokenizer = load_policy_for_sampling(opts.model, opts.gguf_file, opts.adapter)
    return model, tokenizer, rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resrl-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="Hub id or folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--gguf_file", default=None)
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply")
    parser.add_argument(
        "--dataset",
        default="arithmetic",
        help="'arithmetic', a .parquet/.json/.jsonl file, or an agent dataset (files_demo, bfcl_multi_turn_base, "
        "text_games, ...: multi-turn rollouts in their environments)",
    )
    parser.add_argument("--max_turns", type=int, default=2, help="agent datasets: replies that may call tools")
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
    parser.add_argument(
        "--weight_position", default="previous", choices=WEIGHT_POSITIONS, help="as resrl_weight_position in training"
    )
    parser.add_argument("--positive_threshold", type=float, default=0.0)
    parser.add_argument("--output_dir", default="outputs/inspect")
    return parser


def main(argv: list[str] | None = None) -> None:
    from .agent_tasks import AGENT_DATASETS, environment_factories, load_agent_tasks
    from .data import load_math_dataset
    from .models import load_policy_for_sampling
    from .rewards import math_reward

    opts = build_parser().parse_args(argv)
    try:
        settings = SubspaceSettings(
            opts.rank, opts.max_pos_tokens, opts.q_low, opts.q_high, opts.min_weight, opts.niter
        )
    except ValueError as error:
        raise SystemExit(f"resrl-inspect: {error}") from None
    model, tokenizer = load_policy_for_sampling(opts.model, opts.gguf_file, opts.adapter)
    try:  # the same check training makes: the layer must be a decoder block's output
        decoder_block(model, opts.hidden_layer)
    except ValueError as error:
        raise SystemExit(f"resrl-inspect: {error}") from None
    sampling = {
        "num_generations": opts.num_generations, "max_tokens": opts.max_tokens, "temperature": opts.temperature,
        "seed": opts.seed, "hidden_layer": opts.hidden_layer, "weight_position": opts.weight_position,
    }  # fmt: skip
    if opts.dataset in AGENT_DATASETS:
        from .tool_chat import add_tool_calling

        tasks = load_agent_tasks(opts.dataset, opts.split, opts.seed, opts.num_prompts)
        rows = [tasks[i] for i in range(min(opts.num_prompts, len(tasks)))]
        tokenizer = add_tool_calling(tokenizer)
        factories = environment_factories(tasks)
        sampled = iter_agent_groups(model, tokenizer, rows, factories, max_turns=opts.max_turns, **sampling)
        shown = write_inspection(
            sampled, tokenizer, opts.output_dir, settings, opts.weight_position, opts.positive_threshold, opts.seed,
            total=len(rows),
        )  # fmt: skip
    else:
        dataset = load_math_dataset(opts.dataset, opts.split, seed=opts.seed)
        dataset = dataset.select(range(min(opts.num_prompts, len(dataset))))
        shown = inspect(
            model, tokenizer, dataset["prompt"], dataset["solution"], math_reward, opts.output_dir, settings,
            positive_threshold=opts.positive_threshold, progress=True, **sampling,
        )  # fmt: skip
    weighted = sum(g["bounds"] is not None for g in shown)
    output = Path(opts.output_dir)
    print(f"{weighted} of {len(shown)} groups got token weights; wrote {output / HTML_FILE} and {output / PNG_FILE}")


if __name__ == "__main__":
    main()
