"""VERA: explainable video anomaly detection by verbalized learning of a frozen VLM.

One module per concept: ``annotations`` (datasets and labels), ``segments``
(the 16-frame grid and its windows), ``scores`` (per-video segment files),
``scoring`` (Steps 2 and 3), ``metrics`` (AUC/AP and friends), ``evaluate``
(the whole evaluation of ``Inference/compute_auc.py``).
"""

__version__ = "0.1.0"
