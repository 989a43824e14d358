"""Verbalized learning of the guiding questions (the paper's Algorithm 1).

- ``optimizer_prompt``: the optimizer's prompt and reading new questions
  from its answer.
- ``loop``: the training loop (learner, optimizer, validation, selection),
  resumable and distributed with Lightning.
"""
