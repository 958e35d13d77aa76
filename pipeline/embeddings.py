"""Sentence embeddings as the guidance code uses them: unit vectors whose dot product is cosine similarity.

The port is owned here, beside its users (`pipeline.guidance`); `adapters.embeddings_onnx.OnnxSentenceEmbedder`
runs all-MiniLM-L6-v2 locally, and the composition roots (`server.py`, `cli.py`) inject it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class SentenceEmbedder(Protocol):
    """Embeds sentences; blocking CPU work, so callers on the event loop run it in a thread."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A float32 array of shape (len(texts), dim), each row L2-normalised (an empty text: a zero row)."""
        ...
