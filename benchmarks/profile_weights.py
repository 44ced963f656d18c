"""Where the time of `compute_residual_weights` goes: a torch.profiler table on synthetic hidden states.

python benchmarks/profile_weights.py --device cuda --hidden 576 --groups 4 --length 1024
"""

from __future__ import annotations

import argparse

import torch
from common import median_seconds, sync
from torch.profiler import ProfilerActivity, profile

from resrl_trl.residual import compute_residual_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16")
    opts = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batch = opts.groups * opts.group_size
    hidden = torch.randn(batch, opts.length, opts.hidden, generator=g).to(opts.device, getattr(torch, opts.dtype))
    lengths = torch.randint(opts.length // 2, opts.length + 1, (batch,), generator=g)
    valid = (torch.arange(opts.length)[None] < lengths[:, None]).to(opts.device)
    group_ids = (torch.arange(batch) // opts.group_size).to(opts.device)
    is_positive = ((torch.arange(batch) % opts.group_size) < opts.group_size // 3).to(opts.device)
    gen = torch.Generator(device=opts.device).manual_seed(0)

    def run() -> None:
        compute_residual_weights(hidden, valid, group_ids, is_positive, generator=gen)

    print(f"median {median_seconds(run, 10, opts.device, warmup=3) * 1e3:.2f} ms over 10 runs")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if opts.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        run()
        sync(opts.device)
    sort = "cuda_time_total" if opts.device.startswith("cuda") else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=18))


if __name__ == "__main__":
    main()
