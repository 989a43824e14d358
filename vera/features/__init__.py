"""Segment features for Step 2: ImageBind-huge vision embeddings.

- ``imagebind``: the vision branch of ImageBind on current PyTorch and
  LAVAD's segment views.
- ``extraction``: resumable per-video feature extraction (``<key>.npy``).
"""
