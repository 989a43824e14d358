"""Verbalized learning of the guiding questions (the paper's Algorithm 1).

- ``algorithm1``: Algorithm 1 itself: the learner pass, the optimizer's
  proposal, validation, selection of the best questions.
- ``launch``: ``train``, which starts the processes on Lightning Fabric.
- ``settings``: ``TrainingOptions``, what decides a run.
- ``training_data``: the lists, which videos form each step's batch, and
  reading their frames ahead of the model (``vera.data.loading``).
- ``sampling``: which frames of a training video the learner sees (uniform,
  random, TSN), drawn reproducibly.
- ``optimizer_prompt``: the optimizer's prompt and reading new questions
  from its answer.
- ``run_state``: identity, checkpoint, JSONL records, resume after a kill.
- ``run_log``: the CSV log's rows and the progress lines.
- ``fabric_io``: what the Fabric writes: JSON checkpoints, one CSV log per run
  (processes and collectives: ``vera.distributed``).
"""
