"""The frozen vision-language model and Step 1.

- ``backends``: how a model is run (``hf``: transformers; ``scripted``: canned
  answers for tests).
- ``prompts``: the learner prompt, guiding questions, frame layouts.
- ``parsing``: an answer's 0/1 label, by the released rule.
- ``tiny_model``: tiny random models with offline tokenizers, for tests.
- ``step1``: one answer per segment of every test video, resumable.
"""
