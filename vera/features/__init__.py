"""Segment features for Step 2: ImageBind-huge vision embeddings.

- ``imagebind``: the vision branch of ImageBind on current PyTorch and
  LAVAD's segment views (the recipe, step by step, in its docstring).
- ``feature_extraction``: resumable per-video feature extraction (``<key>.npy``).
- ``reading``: the frames of a batch of segment clips, read in the input workers.
"""
