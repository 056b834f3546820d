"""A model's ``sampler``: which training rows an epoch sees, drawn anew every epoch (the
validation fold is never sampled). Keras-free.

``balance: classes`` draws every class equally often, with replacement, as many rows as the fold
trains on; ``balance: {negatives_per_positive: N}`` (binary) keeps every positive and draws
``N`` negatives per positive without replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foldstack.core.config import SamplerConfig


@dataclass(frozen=True)
class Sampler:
    """Draws an epoch's rows among ``index`` by their classes.

    Attributes:
        index: the rows a fold trains on (values that index the image array).
        classes: each row's class (aligned with ``index``).
        negatives_per_positive: None to balance the classes.
    """

    index: np.ndarray
    classes: np.ndarray
    negatives_per_positive: float | None = None

    @property
    def size(self) -> int:
        """How many rows each epoch draws."""
        if self.negatives_per_positive is None:
            return len(self.index)
        positives = int((self.classes == 1).sum())
        return positives + min(len(self.index) - positives, round(self.negatives_per_positive * positives))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One epoch's rows, shuffled."""
        if self.negatives_per_positive is None:
            present = np.unique(self.classes)
            share = np.full(len(present), self.size // len(present))
            share[rng.choice(len(present), self.size % len(present), replace=False)] += 1
            rows = [rng.choice(self.index[self.classes == c], n, replace=True) for c, n in zip(present, share)]
        else:
            positives, negatives = self.index[self.classes == 1], self.index[self.classes != 1]
            rows = [positives, rng.choice(negatives, self.size - len(positives), replace=False)]
        return rng.permutation(np.concatenate(rows))


def sampler(config: SamplerConfig | None, index: np.ndarray, targets: np.ndarray) -> Sampler | None:
    """The model's sampler over the training rows ``index``, whose classes are the arg-max of
    their ``targets`` (one-hot, distilled or pseudo-labelled rows alike; an ordinal grade's
    rounded score); None without a ``sampler``."""
    if config is None:
        return None
    rows = np.asarray(targets)[index]
    classes = np.rint(rows[:, 0]).astype(int) if rows.shape[1] == 1 else rows.argmax(axis=1)
    balance = config.balance
    return Sampler(np.asarray(index), classes, None if balance == "classes" else balance.negatives_per_positive)
