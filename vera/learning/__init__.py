"""Verbalized learning of the guiding questions (the paper's Algorithm 1).

- ``optimizer_prompt``: the optimizer's prompt and reading new questions
  from its answer.
- ``loop``: the training loop (learner, optimizer, validation, selection),
  resumable, and why it runs on Lightning Fabric rather than the ``Trainer``.
- ``sampling``: which frames of a training video the learner sees (uniform,
  random, TSN), drawn reproducibly.
- ``fabric_io``: what the loop's Lightning Fabric writes: JSON checkpoints,
  one CSV log per run (processes and collectives: ``vera.distributed``).
"""
