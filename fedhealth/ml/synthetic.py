"""Synthetic vitals for demos, tests and benchmarks.

The label follows a clinically plausible rule: a patient is *healthy* when a risk
score built from deviations from normal vitals (tachycardia or bradycardia,
hypertension, hypotension, low oxygen saturation) stays below a threshold. Gaussian
noise on the score blurs the boundary, so no model reaches 100 % and the task is
learnable but not trivial (a good model reaches roughly 90 % accuracy).

Non-IID mode follows the usual federated-learning benchmark recipe: each site's
label balance is drawn from a Dirichlet distribution, and each site's population is
shifted (an older population has higher blood pressure, a pulmonary ward lower
SpO2), so sites differ in both p(y) and p(x).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import DEFAULT_SCHEMA

#: Population means and standard deviations of the default vitals.
_MEAN = np.array([78.0, 124.0, 80.0, 96.5])
_STD = np.array([14.0, 15.0, 9.0, 2.2])
_LOW = np.array([f.min for f in DEFAULT_SCHEMA.features], dtype=np.float64)
_HIGH = np.array([f.max for f in DEFAULT_SCHEMA.features], dtype=np.float64)


def risk_score(X: np.ndarray) -> np.ndarray:
    """Risk score of vitals ``X`` of shape (n, 4) in schema order; higher is sicker."""
    hr, sbp, dbp, spo2 = X[:, 0], X[:, 1], X[:, 2], X[:, 3]
    return (
        np.abs(hr - 75.0) / 15.0
        + np.maximum(sbp - 130.0, 0.0) / 12.0
        + np.maximum(100.0 - sbp, 0.0) / 8.0
        + np.maximum(dbp - 85.0, 0.0) / 6.0
        + np.maximum(95.0 - spo2, 0.0) / 1.5
    )


def _draw(rng: np.random.Generator, n: int, shift: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(_MEAN + shift, _STD, size=(n, 4))
    X = np.clip(X, _LOW, _HIGH)
    # Measurements are recorded at device precision: whole bpm/mmHg, 0.1 % SpO2.
    X[:, :3] = np.round(X[:, :3])
    X[:, 3] = np.round(X[:, 3], 1)
    score = risk_score(X) + rng.normal(0.0, noise, size=n)
    y = (score < 1.6).astype(np.int64)
    return X, y


def generate_site(
    rows: int,
    *,
    seed: int,
    healthy_fraction: float | None = None,
    shift: np.ndarray | None = None,
    noise: float = 0.35,
) -> pd.DataFrame:
    """Rows of one site as a DataFrame with the default schema's columns and label.

    ``healthy_fraction`` forces the label balance (rows are drawn until each class has
    its quota); ``shift`` (4,) offsets the population means of the vitals.
    """
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    shift = np.zeros(4) if shift is None else np.asarray(shift, dtype=np.float64)
    if healthy_fraction is None:
        X, y = _draw(rng, rows, shift, noise)
    else:
        n_pos = int(round(rows * healthy_fraction))
        quotas = {1: n_pos, 0: rows - n_pos}
        parts_x, parts_y = [], []
        for label, quota in quotas.items():
            got = 0
            while got < quota:
                Xc, yc = _draw(rng, max(4 * quota, 256), shift, noise)
                keep = Xc[yc == label][: quota - got]
                parts_x.append(keep)
                parts_y.append(np.full(len(keep), label))
                got += len(keep)
        X, y = np.concatenate(parts_x), np.concatenate(parts_y)
        order = rng.permutation(len(y))
        X, y = X[order], y[order]
    frame = pd.DataFrame(X, columns=DEFAULT_SCHEMA.feature_names)
    for col in DEFAULT_SCHEMA.feature_names[:3]:
        frame[col] = frame[col].astype(np.int64)
    frame[DEFAULT_SCHEMA.label] = y
    return frame


def generate_sites(
    n_sites: int, rows: int, *, seed: int = 0, non_iid: bool = False, alpha: float = 0.5
) -> dict[str, pd.DataFrame]:
    """``n_sites`` sites named ``site-1``.. of ``rows`` rows each.

    With ``non_iid`` each site's healthy fraction is drawn from Dirichlet(alpha, alpha)
    (clipped to [0.1, 0.9] so both classes exist) and its vitals are shifted.
    """
    if n_sites <= 0:
        raise ValueError(f"sites must be positive, got {n_sites}")
    rng = np.random.default_rng(seed)
    sites: dict[str, pd.DataFrame] = {}
    for i in range(n_sites):
        site_seed = int(rng.integers(0, 2**31 - 1))
        if non_iid:
            fraction = float(np.clip(rng.dirichlet([alpha, alpha])[0], 0.1, 0.9))
            shift = rng.normal(0.0, 0.5, size=4) * _STD
            sites[f"site-{i + 1}"] = generate_site(
                rows, seed=site_seed, healthy_fraction=fraction, shift=shift
            )
        else:
            sites[f"site-{i + 1}"] = generate_site(rows, seed=site_seed)
    return sites
