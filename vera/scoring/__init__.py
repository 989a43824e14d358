"""From segment answers to frame scores and metrics.

- ``score_files``: reading and checking Step 1's per-video score files.
- ``steps``: Step 2 (scene context) and Step 3 (smoothing, position
  weighting), in the ``released`` and ``paper`` protocols.
- ``metrics``: ROC AUC, AP, false-alarm rate, curves.
- ``evaluate``: the whole evaluation behind ``Inference/compute_auc.py``.
- ``synthetic``: synthetic scores and features for smoke runs and benchmarks.
"""
