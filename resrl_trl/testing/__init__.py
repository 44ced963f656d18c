"""Offline building blocks shared by the tests and the benchmarks; nothing in the training path imports them.

- :mod:`resrl_trl.testing.tiny`: a character-level tokenizer and a tiny Llama built in memory, toy verifiable rewards,
  and a trainer with the tests' settings;
- :mod:`resrl_trl.testing.faults`: the fault scenarios of the reliability tests and of ``docs/reliability.md``;
- :mod:`resrl_trl.testing.vllm_cpu`: the patch vLLM's CPU build needs to take TRL's weight updates.

This file imports nothing, so that the vLLM patch can be loaded at interpreter start without the rest.
"""
