"""Reports a person can read: score curves, the highest-scoring segments and the model's explanations.

``inputs`` reads and checks what a page shows, ``pages`` renders the HTML
(self-contained, offline), ``build`` writes the folder (``Inference/report.py``,
``detect.py``).
"""
