"""How close two models' outputs are: the arithmetic the builder's accuracy gate and the
server's canary mirroring share, so a figure means the same in a manifest and on a dashboard."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def cosine(a: Array, b: Array) -> float:
    """Cosine similarity of two flat vectors; two zero vectors agree (1), one alone does not."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def max_abs_error(a: Array, b: Array) -> float:
    """Largest element-wise absolute difference (0 for empty arrays)."""
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def top1_matches(reference: Array, candidate: Array) -> tuple[int, int]:
    """(rows whose arg-max over the last axis agrees, rows): rows are all leading indices."""
    agree = int(np.sum(reference.argmax(-1) == candidate.argmax(-1)))
    return agree, reference.reshape(-1, reference.shape[-1]).shape[0]
