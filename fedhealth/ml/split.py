"""The stratified, seeded train/test split every door uses (simulate, hosted workers, agents).

It draws exactly what scikit-learn's ``train_test_split(..., stratify=y, random_state=seed)``
draws (``StratifiedShuffleSplit``: per-class counts from the approximate mode of the
multivariate hypergeometric, then one ``RandomState`` consumed in the same order), so the
split is unchanged from earlier versions, which called sklearn; a test holds the two to
identical indices. Written out because importing scikit-learn (and SciPy under it) cost
about 1.5 s of every ``simulate`` start and of every agent's, for thirty lines of NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["split_indices"]


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """Rows per class for ``n_draws`` draws: the floored proportional share, the rest
    given to the largest remainders, ties broken at random (sklearn's ``_approximate_mode``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def split_indices(
    y: npt.ArrayLike, *, test: float | int, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)`` into ``y``: a seeded hold-out.

    Args:
        y: (n,) labels.
        test: a fraction in (0, 1) (``ceil(test * n)`` rows are held out) or a row count
            in [1, n).
        seed: the ``RandomState`` seed.
        stratify: each class in proportion (sklearn's ``stratify=y``); False: a plain
            random hold-out (``ShuffleSplit``).

    Raises:
        ValueError: ``test`` out of range, a class with a single row, or (stratified) a
            train or test set too small to hold every class.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {labels.shape}")
    n = labels.shape[0]
    if isinstance(test, int | np.integer) and not isinstance(test, bool):
        if not 0 < test < n:
            raise ValueError(
                f"a test set of {test} rows must be between 1 and {n - 1} with {n} rows"
            )
        n_test = int(test)
    elif isinstance(test, float) and 0.0 < test < 1.0:
        n_test = math.ceil(test * n)
    else:
        raise ValueError(f"test fraction must be between 0 and 1, got {test}")
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(f"with {n} rows and a test fraction of {test} the training set is empty")
    rng = np.random.RandomState(seed)
    if not stratify:
        permutation = rng.permutation(n)
        return permutation[n_test:], permutation[:n_test]
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError(
            f"the least populated class has only 1 row (classes {classes[class_counts < 2].tolist()}); "
            "a stratified split needs at least 2 of each"
        )
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"{n_train} training and {n_test} test rows cannot each hold all {len(classes)} classes"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    held: list[int] = []
    for i in range(len(classes)):
        shuffled = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        held.extend(shuffled[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(held)
