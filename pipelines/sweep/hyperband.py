"""Early stopping of poor trials with epochs as the budget: successive halving and Hyperband brackets.

Pure bookkeeping, no training: `start()` says which trials run to how many epochs, `report()` takes a
trial's metric at a budget and returns the trials promoted once their rung is complete (synchronous
successive halving within a bracket; Hyperband's brackets proceed side by side). A promoted trial continues
from its own checkpoint, so a trial that reaches budget b has spent b epochs in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Request = tuple[int, int | None]  # (trial index, epoch budget; None: the target's own, no early stopping)


def budgets(min_epochs: int, max_epochs: int, eta: int, s: int) -> list[int]:
    """Rung budgets of a bracket that starts at max_epochs / eta**s and ends at max_epochs (distinct, >= min)."""
    out: list[int] = []
    for k in range(s + 1):
        b = max(min_epochs, round(max_epochs * eta ** (k - s)))
        if not out or b > out[-1]:
            out.append(b)
    return out


def bracket_count(min_epochs: int, max_epochs: int, eta: int) -> int:
    """Hyperband's s_max + 1: how many times max/min can be divided by eta, plus one."""
    return int(math.floor(math.log(max_epochs / min_epochs, eta) + 1e-9)) + 1


def bracket_shares(n: int, brackets: int, eta: int) -> list[int]:
    """Trials per bracket (most aggressive first), in proportion to Hyperband's n_s, every bracket >= 1 if n allows."""
    s_max = brackets - 1
    weights = np.array([math.ceil(brackets / (s + 1) * eta**s) for s in range(s_max, -1, -1)], dtype=float)
    raw = weights / weights.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):  # give an empty bracket one trial from the largest
        if counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return counts.tolist()


@dataclass
class Bracket:
    """Successive halving of some trials over rising budgets."""

    trials: list[int]
    rungs: list[int]
    eta: int
    mode: Literal["max", "min"]
    level: int = 0
    active: list[int] = field(default_factory=list)
    scores: dict[int, float | None] = field(default_factory=dict)

    def start(self) -> list[Request]:
        self.active = list(self.trials)
        return [(i, self.rungs[0]) for i in self.active]

    def report(self, index: int, metric: float | None) -> list[Request]:
        """Record a trial's metric at the current rung; the promotions once every active trial has reported."""
        self.scores[index] = metric
        if any(i not in self.scores for i in self.active) or self.level + 1 >= len(self.rungs):
            return []
        keep = max(1, len(self.active) // self.eta)
        sign = 1.0 if self.mode == "max" else -1.0
        ranked = sorted(self.active, key=lambda i: (self.scores[i] is None, -sign * (self.scores[i] or 0.0), i))
        self.active = [i for i in ranked[:keep] if self.scores[i] is not None]
        self.level += 1
        self.scores = {}
        return [(i, self.rungs[self.level]) for i in self.active]


class Schedule:
    """Which trial runs to which budget: all at once (no early stopping), or in halving / Hyperband brackets."""

    def __init__(
        self,
        trials: int,
        kind: Literal["none", "halving", "hyperband"] = "none",
        *,
        min_epochs: int = 1,
        max_epochs: int | None = None,
        eta: int = 3,
        mode: Literal["max", "min"] = "max",
        seed: int = 0,
    ) -> None:
        self.trials, self.kind, self.max_epochs = trials, kind, max_epochs
        self.reached: dict[int, int | None] = {}
        self.bracket_of: dict[int, Bracket] = {}
        self.brackets: list[Bracket] = []
        if kind == "none":
            return
        assert max_epochs is not None and max_epochs >= min_epochs
        count = bracket_count(min_epochs, max_epochs, eta)
        order = np.random.default_rng(seed).permutation(trials).tolist() if kind == "hyperband" else range(trials)
        shares = bracket_shares(trials, count, eta) if kind == "hyperband" else [trials]
        start = 0
        for n, s in zip(shares, range(count - 1, -1, -1), strict=False):
            members = sorted(order[start : start + n])
            start += n
            bracket = Bracket(members, budgets(min_epochs, max_epochs, eta, s), eta, mode)
            self.brackets.append(bracket)
            self.bracket_of.update(dict.fromkeys(members, bracket))

    def start(self) -> list[Request]:
        """The first requests: every trial (no early stopping) or every bracket's first rung."""
        if self.kind == "none":
            return [(i, self.max_epochs) for i in range(self.trials)]
        return [r for b in self.brackets for r in b.start()]

    def report(self, index: int, epochs: int | None, metric: float | None) -> list[Request]:
        """A trial ended at a budget with a metric (None: failed or stopped); returns the promotions it releases."""
        previous = self.reached.get(index)
        self.reached[index] = epochs if previous is None or (epochs or 0) > previous else previous
        if self.kind == "none":
            return []
        return self.bracket_of[index].report(index, metric)

    @property
    def epochs_spent(self) -> int:
        """Epochs trained in all: each trial's highest budget (it continues from its checkpoint when promoted)."""
        return sum(e or 0 for e in self.reached.values())

    @property
    def epochs_full(self) -> int:
        """Epochs every trial trained to the full budget would take."""
        return self.trials * (self.max_epochs or 0)
