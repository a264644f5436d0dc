"""The two-step temperature search of Sec. 4.2.

Step 1: substitutes trained on natural data with soft labels at several T; T_max is
the smallest T whose substitute's clean accuracy falls below the threshold.
Step 2: the best T in [1, T_max) by a criterion measured on a validation split.
"""

from __future__ import annotations

CRITERIA = {"pgd_accuracy": max, "eq9_loss": min}


def find_tmax(substitutes: list[tuple[float, float]], threshold: float) -> float | None:
    """``substitutes``: (T, clean accuracy) pairs. None if no substitute falls below the
    threshold (then the search is bounded only by the grid)."""
    below = [t for t, acc in substitutes if acc < threshold]
    return min(below) if below else None


def choose(candidates: list[tuple[float, float]], tmax: float | None, criterion: str) -> float:
    """``candidates``: (T, criterion value) for the grid's students; the best T < T_max.
    Ties go to the lower T (closer to one-hot labels, the safer side)."""
    if criterion not in CRITERIA:
        raise ValueError(f"temperature_search.criterion: unknown {criterion!r}; expected one of {sorted(CRITERIA)}")
    allowed = sorted((t, v) for t, v in candidates if tmax is None or t < tmax)
    if not allowed:
        raise ValueError(f"no grid temperature lies below T_max={tmax}: nothing to choose from")
    best = CRITERIA[criterion](v for _, v in allowed)
    return next(t for t, v in allowed if v == best)
