"""Step 2 as released, composed from the package's pieces for the hand-computed tests."""

from __future__ import annotations

import numpy as np

from vera.scoring.steps import cosine_similarity, released_neighbours, scene_context
from vera.constants import TEMPERATURE


def released_scene_context(features: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """ȳᵢ = softmax(10·S[i, Nᵢ]) · y[Nᵢ] over the k most similar segments (k = 0: all), in float32 as released."""
    scores = np.asarray(scores, dtype=np.float64)
    similarity = cosine_similarity(features)
    neighbours = released_neighbours(similarity, k)
    return scene_context(np.take_along_axis(similarity, neighbours, axis=1), scores[neighbours], TEMPERATURE, True)
