"""The two-step temperature search of Sec. 4.2.

Step 1: substitutes trained on natural data with soft labels at several T; T_max is
the smallest T whose substitute's clean accuracy falls below the threshold.
Step 2: the best T in [1, T_max) on a validation split. A masked model must not win:
the paper's own T = 15 and 20 (94.7 % clean, 0 % AutoAttack) lie below its T_max = 50,
and PGD accuracy, which masking inflates, would rank them first. So candidates the
gradient-masking diagnostics flag are dropped, and the rest are ranked by

* ``robust_accuracy``: AutoAttack (``temperature_search.attacks``, APGD-CE and APGD-T by
  default; APGD-T's DLR loss is scale-invariant) accuracy, maximised; or
* ``eq9_kl``: the Eq. 9 objective with its natural term as KL(q_T || f) = CE(q_T, f) -
  H(q_T), minimised. CE(q_T, f) >= H(q_T), which grows with T, so plain CE values are
  not comparable between candidates of different T; the KL removes that floor.
"""

from __future__ import annotations

CRITERIA = {"robust_accuracy": max, "eq9_kl": min}


def find_tmax(substitutes: list[tuple[float, float]], threshold: float) -> float | None:
    """``substitutes``: (T, clean accuracy) pairs. None if no substitute falls below the
    threshold (then the search is bounded only by the grid)."""
    below = [t for t, acc in substitutes if acc < threshold]
    return min(below) if below else None


def choose(candidates: list[dict], tmax: float | None, criterion: str) -> tuple[float, list[dict]]:
    """The chosen T and, per candidate (by T), whether it was kept and why.

    ``candidates``: validation results, each with ``temperature``, the criterion's value
    and ``flags`` (the masking diagnostics that fired). Candidates at or above T_max are
    dropped, then flagged ones; the best criterion value among the rest wins; ties go
    to the lower T (closer to one-hot labels, the safer side)."""
    if criterion not in CRITERIA:
        raise ValueError(f"temperature_search.criterion: unknown {criterion!r}; expected one of {sorted(CRITERIA)}")
    decisions = []
    for c in sorted(candidates, key=lambda c: c["temperature"]):
        t = c["temperature"]
        d = {"T": t, criterion: c[criterion], "flags": list(c["flags"]), "kept": False}
        if tmax is not None and t >= tmax:
            d["reason"] = f"dropped: T >= T_max = {tmax:g}"
        elif c["flags"]:
            d["reason"] = "dropped: gradient masking (" + ", ".join(c["flags"]) + ")"
        else:
            d["kept"], d["reason"] = True, "kept"
        decisions.append(d)
    kept = [d for d in decisions if d["kept"]]
    if not kept:
        raise ValueError(f"no candidate below T_max={tmax} is free of gradient-masking flags: "
                         + "; ".join(f"T={d['T']:g} {d['reason']}" for d in decisions))
    best = CRITERIA[criterion](d[criterion] for d in kept)
    chosen = next(d for d in kept if d[criterion] == best)
    chosen["reason"] = f"chosen: best {criterion} ({'highest' if CRITERIA[criterion] is max else 'lowest'}) " \
                       "of the kept candidates"
    return chosen["T"], decisions
