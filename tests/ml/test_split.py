"""fedhealth.ml.split draws exactly what scikit-learn's train_test_split draws."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from fedhealth.ml.split import split_indices


def _sklearn(y, test, seed, stratify):
    index = np.arange(len(y))
    train, held = train_test_split(
        index, test_size=test, random_state=seed, stratify=y if stratify else None
    )
    return train, held


@pytest.mark.parametrize("stratify", [True, False])
@pytest.mark.parametrize("test", [0.25, 0.2, 0.5, 0.01, 7, 1])
@pytest.mark.parametrize("seed", [0, 12345, 2**31 - 1])
@pytest.mark.parametrize("n,classes", [(101, 2), (5000, 2), (37, 3), (64, 2)])
def test_same_indices_as_sklearn(n, classes, seed, test, stratify):
    # Prepare: imbalanced labels, so the per-class counts need the remainder step
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n, p=np.linspace(1, 2, classes) / np.linspace(1, 2, classes).sum())
    y[: 2 * classes] = np.repeat(np.arange(classes), 2)  # every class holds at least 2 rows
    try:
        expected_train, expected_held = _sklearn(y, test, seed, stratify)
    except ValueError:
        # A test set too small to hold every class: refused by both
        with pytest.raises(ValueError, match="cannot each hold all"):
            split_indices(y, test=test, seed=seed, stratify=stratify)
        return
    # Execute
    train, held = split_indices(y, test=test, seed=seed, stratify=stratify)
    # Assert
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(held, expected_held)


def test_float_labels_and_ties_as_sklearn():
    y = np.array([0.0, 1.0] * 10 + [1.0] * 3, dtype=np.float32)
    for seed in range(20):
        train, held = split_indices(y, test=0.3, seed=seed)
        expected_train, expected_held = _sklearn(y, 0.3, seed, True)
        np.testing.assert_array_equal(train, expected_train)
        np.testing.assert_array_equal(held, expected_held)


@pytest.mark.parametrize(
    "y,test,message",
    [
        (np.array([0, 0, 0, 1]), 0.5, "only 1 row"),
        (np.array([0, 1] * 5), 0.0, "between 0 and 1"),
        (np.array([0, 1] * 5), 1.0, "between 0 and 1"),
        (np.array([0, 1] * 5), 10, "between 1 and 9"),
        (np.array([0, 1] * 5), 1, "cannot each hold all 2 classes"),
        (np.zeros((4, 2)), 0.5, "1-D"),
    ],
)
def test_refuses_what_cannot_be_split(y, test, message):
    with pytest.raises(ValueError, match=message):
        split_indices(y, test=test, seed=0)
