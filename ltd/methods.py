"""The method registry: every training method, defined once.

A method is its name (as configs and run names write it), the label tables print, the
role it trains (teachers, substitutes, students), whether it learns from the teacher's
soft labels q_T (then its runs carry a temperature), which training attack of the data
set's ``attack`` section it uses, whether it needs the ``awp`` settings, its step class
(``ltd.steps``), and its cost in forward-equivalents per image of one step. Run names,
table rows, the config checks, the budget and the tests all read this table.

Adding a method = one step class in ``ltd/steps.py`` under its kind in
``ltd.steps.STEP_CLASSES`` + one entry below + config rows
(``datasets.<d>.attack.<family>``, table entries)::

    Method("mart-ltd", "MART+LTD", "mart", uses_soft_labels=True, attack="mart",
           base="mart", cost=lambda k: 2 * k + 6, note="q_T in the CE term of MART's BCE only"),

No torch here: planning the workflow's DAG reads the registry. The step classes live in
``ltd/steps.py``, which imports this module (never the other way): a job builds its step
with ``ltd.steps.build_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# A run's role, as its folder under results/<run>/ names it -> the role's config section
# (`teacher:`, `substitute:`, `student:`) and its training job's kind in ltd.budget.
ROLE_KEYS = {"teachers": "teacher", "substitutes": "substitute", "students": "student"}
ROLES = tuple(ROLE_KEYS)
ROLE_OF_KEY = {key: role for role, key in ROLE_KEYS.items()}


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    step: str  # its step's kind: a key of ltd.steps.STEP_CLASSES, built with (method, **settings)
    role: str = "students"
    uses_soft_labels: bool = False  # the natural term's target is q_T (LTD): runs carry a temperature
    attack: str | None = None  # key of datasets.<d>.attack (falls back to `default`)
    awp: bool = False  # needs `awp:` {gamma, warmup_epochs, proxy_lr}
    base: str | None = None  # for an LTD variant: the one-hot method it extends
    # Forward-equivalents per image of one step with a k-step attack (FLOPs / one
    # forward's), for the budget; tests/test_methods.py checks each against counted FLOPs.
    cost: Callable[[int], float] = field(default=lambda k: 3.0, compare=False)
    # Extra forward-equivalents per image while AWP is on (its proxy pass), for AWP methods.
    awp_cost: float = 0.0
    note: str = ""  # which label terms take q_T, for LTD variants (README, docs)


METHODS: dict[str, Method] = {m.name: m for m in [
    # Teachers: natural training (cross-entropy on one-hot labels). Substitutes (Sec. 4.2):
    # natural data, the teacher's soft labels at T.
    Method("natural", "Natural", "natural", role="teachers"),
    Method("soft", "Soft labels", "natural", role="substitutes", uses_soft_labels=True),
    # TRADES (Zhang et al. 2019, yaodongyu/TRADES): 1 + 2k (attack) + 2 x 3 (x, x' with backward).
    Method("trades", "TRADES", "trades", attack="trades", cost=lambda k: 2 * k + 7),
    Method("trades-ltd", "TRADES+LTD", "trades", uses_soft_labels=True, attack="trades", base="trades",
           cost=lambda k: 2 * k + 7, note="Eq. 9: the natural term CE(q_T, f(x)); the KL term and the attack "
                                          "need no label"),
    # TRADES-AWP (Wu et al. 2020, csdongxian/AWP): TRADES plus the proxy's forward of x and x'
    # and their backward (weights only): 2 + 4 = 6 more while AWP is on.
    Method("awp", "AWP", "awp", attack="awp", awp=True, cost=lambda k: 2 * k + 7, awp_cost=6.0),
    Method("awp-ltd", "AWP+LTD", "awp", uses_soft_labels=True, attack="awp", awp=True, base="awp",
           cost=lambda k: 2 * k + 7, awp_cost=6.0,
           note="TRADES-AWP with q_T in the natural term, in the update and in the weight-perturbation objective"),
    # Beyond the paper: LTD for other adversarial-training methods (table7).
    # PGD-AT (Madry et al. 2018) as csdongxian/AWP AT_AWP/train_cifar10.py trains it (Rice et
    # al.'s loop, AWP off): 2k (attack) + 3 (x' with backward) + 1 (the official post-update
    # forward of x, for its BN statistics). beta: unused.
    Method("pgd-at", "PGD-AT", "pgd", attack="pgd", cost=lambda k: 2 * k + 4),
    Method("pgd-at-ltd", "PGD-AT+LTD", "pgd", uses_soft_labels=True, attack="pgd", base="pgd-at",
           cost=lambda k: 2 * k + 4,
           note="the loss CE(q_T, f(x')) replaces CE(y, f(x')); the attack keeps the true label y (the "
                "paper crafts adversarial examples with the original label)"),
    # MART (Wang et al. 2020, YisenWang/MART): 2k (attack) + 2 x 3 (x and x' with backward).
    Method("mart", "MART", "mart", attack="mart", cost=lambda k: 2 * k + 6),
    Method("mart-ltd", "MART+LTD", "mart", uses_soft_labels=True, attack="mart", base="mart",
           cost=lambda k: 2 * k + 6,
           note="q_T replaces y in the cross-entropy of MART's boosted CE only, CE(q_T, f(x')); its margin "
                "term (the most probable wrong class) and the misclassification weight 1 - f_y(x) keep y, "
                "being defined by which class is true rather than by a target distribution; the attack "
                "keeps y"),
]}

# Which methods train in each role.
ROLE_METHODS = {role: [m.name for m in METHODS.values() if m.role == role] for role in ROLES}
STUDENT_METHODS = ROLE_METHODS["students"]


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def temperature_problem(method: str, temperature: Any) -> str | None:
    """The one rule on a run's temperature, for run names, table entries and the config
    checks: a method that learns from soft labels needs one (a T, or ``auto`` in a
    table), a one-hot method takes none. None when ``temperature`` fits ``method``."""
    m = get(method)
    if m.uses_soft_labels and temperature is None:
        return f"method {method!r} learns from soft labels: it needs a temperature (a T, or `auto` in a table)"
    if not m.uses_soft_labels and temperature is not None:
        ltd = next((n for n, o in METHODS.items() if o.base == method), None)
        return (f"method {method!r} uses one-hot labels: it takes no temperature"
                + (f" (its LTD variant, {ltd!r}, does)" if ltd else ""))
    return None


def forward_equivalents(method: str, attack_steps: int = 0, awp_on: bool = True) -> float:
    """Declared cost of one step per image, in forwards (AWP's proxy pass included when on)."""
    m = get(method)
    return float(m.cost(attack_steps)) + (m.awp_cost if m.awp and awp_on else 0.0)

