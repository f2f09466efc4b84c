import numpy as np

from fedhealth.ml.inference import features_from_records, predict
from fedhealth.ml.model import ModelConfig, init_weights
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.stats import Normalizer, compute_stats

GOOD = {"heart_rate": 72, "systolic_bp": "118", "diastolic_bp": 76.0, "spo2": 98}


def test_good_records_become_features_in_schema_order():
    X, errors = features_from_records(
        [GOOD, GOOD | {"heart_rate": 90, "extra_id": "x"}], DEFAULT_SCHEMA
    )

    assert errors == []
    np.testing.assert_array_equal(
        X, np.array([[72, 118, 76, 98], [90, 118, 76, 98]], dtype=np.float32)
    )


def test_each_bad_field_is_named_with_its_value():
    records = [
        GOOD | {"heart_rate": "fast"},
        GOOD | {"spo2": 150},
        {k: v for k, v in GOOD.items() if k != "systolic_bp"},
    ]

    X, errors = features_from_records(records, DEFAULT_SCHEMA)

    assert X is None
    by_record = {(e.record, e.field): e for e in errors}
    assert "must be a number, got 'fast'" in by_record[(0, "heart_rate")].message
    assert "between 50 and 100 % (hard limits), got 150" in by_record[(1, "spo2")].message
    assert by_record[(2, "systolic_bp")].message == "systolic_bp is required"
    assert len(errors) == 3


def test_values_outside_the_expected_range_are_predicted_on():
    # A heart rate of 130 or an SpO2 of 88 is a patient, not a typo.
    X, errors = features_from_records([GOOD | {"heart_rate": 130, "spo2": 88}], DEFAULT_SCHEMA)

    assert errors == []
    np.testing.assert_array_equal(X, np.array([[130, 118, 76, 88]], dtype=np.float32))


def test_nan_and_booleans_are_not_numbers():
    _, errors = features_from_records(
        [GOOD | {"spo2": float("nan"), "heart_rate": True}], DEFAULT_SCHEMA
    )

    assert {e.field for e in errors} == {"spo2", "heart_rate"}


def test_predict_gives_probabilities_and_labels():
    cfg = ModelConfig(4)
    X = np.array([[72, 118, 76, 98], [119, 159, 99, 90]], dtype=np.float32)
    normalizer = Normalizer.from_stats(compute_stats(X))

    prob, labels = predict(cfg, init_weights(cfg, 0), normalizer, X)

    assert prob.shape == (2,) and ((prob >= 0) & (prob <= 1)).all()
    np.testing.assert_array_equal(labels, (prob >= 0.5).astype(int))


def test_predictor_matches_predict_and_fast_path_matches_checked_path():
    from fedhealth.ml.inference import Predictor, _checked_features

    rng = np.random.default_rng(0)
    records = [
        {
            "heart_rate": int(rng.integers(50, 121)),
            "systolic_bp": float(rng.uniform(90, 160)),
            "diastolic_bp": str(int(rng.integers(60, 101))),
            "spo2": float(rng.uniform(90, 100)),
        }
        for _ in range(200)
    ]
    cfg = ModelConfig(4)
    X, errors = features_from_records(records, DEFAULT_SCHEMA)
    X_checked, _ = _checked_features(records, DEFAULT_SCHEMA, max_errors=100)
    normalizer = Normalizer.from_stats(compute_stats(X))
    weights = init_weights(cfg, 1)

    prob, labels = Predictor(cfg, weights, normalizer).predict(X)
    expected, expected_labels = predict(cfg, weights, normalizer, X)

    assert errors == []
    np.testing.assert_array_equal(X, X_checked)
    np.testing.assert_allclose(prob, expected, rtol=1e-6)
    np.testing.assert_array_equal(labels, expected_labels)


def test_boolean_in_an_otherwise_valid_batch_is_caught():
    _, errors = features_from_records([GOOD, GOOD | {"spo2": True}], DEFAULT_SCHEMA)

    assert [(e.record, e.field) for e in errors] == [(1, "spo2")]
