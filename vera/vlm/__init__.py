"""The frozen vision-language model and Step 1.

- ``backends``: how a model is run (``hf``: transformers; ``openai``: a served
  model; ``scripted``: canned answers for tests).
- ``prompts``: the learner prompt, guiding questions, frame layouts;
  ``qwen_video``: the authors' Qwen2-VL video layout.
- ``context``: the prompt's tokens counted once against the model's context.
- ``parsing``: an answer's 0/1 label, by the released rule.
- ``step1``: one answer per segment of every test video, resumable.
- ``decoding``, ``greedy``: label probabilities, the label-only mode and the
  batched greedy loop of the ``hf`` backend.
- ``input_dump``: ``--dump-inputs``, what the model is fed.
- ``convert_internvl2`` (``python -m vera.vlm.convert_internvl2``),
  ``internvl2_layout``, ``sentencepiece_fast``, ``paper_model``: the paper's
  InternVL2-8B converted to transformers' native format.
- ``tiny_model`` (``python -m vera.vlm.tiny_model``): tiny random models with
  offline tokenizers, for tests and the walkthrough.
"""
