"""validation_rows: the server's count of a site's validation slice equals what the site's
own split holds out (the server checks an agent's reported validation_n against it)."""

from __future__ import annotations

import numpy as np
import pytest

from fedhealth.ml.federation import split_site
from fedhealth.ml.personalize import validation_split
from fedhealth.ml.sitework import validation_rows


@pytest.mark.parametrize("test_fraction", [0.05, 0.2, 0.25, 0.33, 0.5])
@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.1, 0.2, 0.35, 0.5])
def test_the_count_matches_the_split_at_every_size(test_fraction, fraction):
    rng = np.random.default_rng(0)
    for rows in [*range(40, 90), 97, 160, 1001]:
        X = rng.normal(size=(rows, 3)).astype(np.float32)
        y = (np.arange(rows) % 3 == 0).astype(np.float32)
        split = split_site("s", X, y, test_fraction=test_fraction, seed=rows)
        held = validation_split(split.X_train, split.y_train, fraction=fraction, seed=rows)[3]

        assert validation_rows(rows, test_fraction=test_fraction, validation_fraction=fraction) == len(held)


def test_a_single_label_site_counts_the_same():
    y = np.ones(40, dtype=np.float32)
    split = split_site("referral", np.zeros((40, 2), np.float32), y, test_fraction=0.25, seed=3)

    assert validation_rows(40, test_fraction=0.25, validation_fraction=0.2) == len(
        validation_split(split.X_train, split.y_train, fraction=0.2, seed=3)[3]
    ) == 6
