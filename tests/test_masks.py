"""Which completion tokens take part: padding, tool output and think spans are left out."""

from __future__ import annotations

import pytest
import torch

from resrl_trl.masks import think_span_mask, valid_completion_tokens


def test_think_span_mask():
    start, end = [7], [8, 9]
    ids = torch.tensor(
        [
            [1, 7, 2, 3, 8, 9, 4, 5],  # one span, markers included
            [1, 2, 3, 4, 5, 6, 1, 2],  # none
            [8, 9, 1, 7, 2, 2, 2, 2],  # stray end marker ignored; span left open runs to the end
            [7, 8, 9, 7, 1, 8, 9, 3],  # two spans
        ]
    )
    want = torch.tensor(
        [
            [0, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(think_span_mask(ids, start, end), want)
    with pytest.raises(ValueError):
        think_span_mask(ids, [], end)


def test_valid_tokens_leave_out_padding_tool_output_and_think_spans():
    ids = torch.tensor([[1, 7, 2, 8, 9, 4], [5, 5, 5, 5, 5, 5]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    tool_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1]])
    assert torch.equal(valid_completion_tokens(ids, completion_mask), completion_mask.bool())
    got = valid_completion_tokens(ids, completion_mask, tool_mask, ([7], [8, 9]))
    want = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, want)
