"""Verbalized learning of the guiding questions (the paper's Algorithm 1).

- ``optimizer_prompt``: the optimizer's prompt and reading new questions
  from its answer.
- ``loop``: the training loop (learner, optimizer, validation, selection),
  resumable, and why it runs on Lightning Fabric rather than the ``Trainer``.
- ``sampling``: which frames of a training video the learner sees (uniform,
  random, TSN), drawn reproducibly.
- ``distributed``: the Fabric plumbing: processes and collectives, JSON
  checkpoints, one CSV log per run.
"""
