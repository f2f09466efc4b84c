"""The three federations docs/quality.md measures on, as ``SiteSplit`` lists.

1. ``breast_cancer``: scikit-learn's Wisconsin breast-cancer data (569 rows, 30
   features), label ``malignant`` (1 = malignant), over 3 sites of very unequal size and
   balance: a large hospital (469 rows, 35% malignant), a small clinic (60 rows, 17%
   malignant) and a referral centre (40 rows, all malignant).
2. ``diabetes``: scikit-learn's diabetes data (442 rows, 10 features), label
   ``progression_high`` (disease progression after a year above 140), over 4 sites by
   age quartile: a real covariate shift (and a label shift with it).
3. ``synthetic``: ``fedhealth.ml.synthetic.generate_sites`` in non-IID mode (3 sites,
   the ``generate_sample --non-iid`` recipe, 300 rows each: small sites).

Each case has its own ``Schema`` (``Schema.from_columns`` over the dataset's columns);
every site holds out a stratified ``TEST_FRACTION`` of its rows, seeded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes

from fedhealth.ml.federation import SiteSplit, split_site
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.synthetic import generate_sites

TEST_FRACTION = 0.3


def _column(name: str) -> str:
    return name.replace(" ", "_")


def breast_cancer_schema() -> Schema:
    return Schema.from_columns(
        [_column(n) for n in load_breast_cancer().feature_names], label="malignant"
    )


def diabetes_schema() -> Schema:
    return Schema.from_columns(list(load_diabetes().feature_names), label="progression_high")


def breast_cancer(seed: int) -> tuple[Schema, list[SiteSplit]]:
    """3 sites: large (162 malignant + 307 benign), clinic (10 + 50), referral (40 + 0)."""
    data = load_breast_cancer()
    X, y = data.data, 1 - data.target  # sklearn's target is 1 for benign
    rng = np.random.default_rng(seed)
    malignant = rng.permutation(np.flatnonzero(y == 1))
    benign = rng.permutation(np.flatnonzero(y == 0))
    rows = {
        "referral": malignant[:40],
        "clinic": np.concatenate([malignant[40:50], benign[:50]]),
        "hospital": np.concatenate([malignant[50:], benign[50:]]),
    }
    sites = [
        split_site(name, X[idx], y[idx], test_fraction=TEST_FRACTION, seed=seed)
        for name, idx in rows.items()
    ]
    return breast_cancer_schema(), sites


def diabetes(seed: int) -> tuple[Schema, list[SiteSplit]]:
    """4 sites by age quartile (``age-q1`` the youngest)."""
    data = load_diabetes()
    X, y = data.data, (data.target > 140).astype(np.int64)
    edges = np.quantile(X[:, 0], [0.25, 0.5, 0.75])
    quartile = np.searchsorted(edges, X[:, 0], side="right")
    sites = [
        split_site(
            f"age-q{q + 1}",
            X[quartile == q],
            y[quartile == q],
            test_fraction=TEST_FRACTION,
            seed=seed,
        )
        for q in range(4)
    ]
    return diabetes_schema(), sites


def synthetic(seed: int) -> tuple[Schema, list[SiteSplit]]:
    """3 generated non-IID sites of 300 rows (label ``healthy``, the default vitals)."""
    schema = DEFAULT_SCHEMA
    frames = generate_sites(3, 300, seed=seed, non_iid=True)
    sites = [
        split_site(
            name,
            frame[schema.feature_names].to_numpy(np.float64),
            frame[schema.label].to_numpy(np.int64),
            test_fraction=TEST_FRACTION,
            seed=seed,
        )
        for name, frame in frames.items()
    ]
    return schema, sites


CASES: dict[str, Callable[[int], tuple[Schema, list[SiteSplit]]]] = {
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
    "synthetic": synthetic,
}
