"""VERA: explainable video anomaly detection by verbalized learning of a frozen VLM.

The package is organised by capability, in the order of the paper's pipeline:

- ``vera.data``: datasets and their annotations, the 16-frame segment grid,
  frame reading (JPEG folders or video files) and frame extraction.
- ``vera.features``: ImageBind vision features per segment (Step 2's similarity).
- ``vera.vlm``: the frozen vision-language model: backends, prompts, answer
  parsing, tiny offline models, and Step 1 (one answer per segment).
- ``vera.learning``: verbalized learning of the guiding questions (training).
- ``vera.scoring``: segment score files, Steps 2 and 3, metrics and evaluation.

Shared mechanisms live at the top: ``vera.options`` (every command-line option,
defined once), ``vera.runs`` (output folders: identity, refusal, resume),
``vera.io`` (atomic writes, clear read errors), ``vera.errors`` (one-line
errors), ``vera.devices`` and ``vera.constants`` (the method's constants). The
command lines are the top-level scripts (``Preprocessing/``, ``Inference/``,
``training.py``, ``detect.py``, ``Data/``): each holds its options and a ``main``
that reads as its stage.
"""

__version__ = "0.2.0"
