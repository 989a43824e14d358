"""From segment answers to frame scores and metrics.

- ``steps``: Steps 2 and 3 of one video (scene context, Eq. (4); smoothing and
  position weighting, Eq. (5)), in the ``released`` and ``paper`` protocols.
- ``score_files``: reading and checking Step 1's per-video score files.
- ``metrics``: ROC AUC, AP and the false-alarm rate, by scikit-learn.
- ``evaluate``: the whole evaluation behind ``Inference/compute_auc.py``.
- ``stages``: ``stages.npz``, every step's values, for the score-curve figures.
- ``sweep``, ``tables``: many settings in one pass, the paper's tables
  (``Inference/reproduce_tables.py``).
- ``unlabelled``: Steps 2-3 for videos without labels (``detect.py``).
- ``synthetic``: synthetic scores and features for smoke runs and benchmarks.
"""
