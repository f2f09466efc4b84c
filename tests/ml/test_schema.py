"""Feature schemas: defaults, JSON round trip, and clear errors on inconsistent schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedhealth.ml.schema import DEFAULT_SCHEMA, Feature, Schema, SchemaError


def test_default_schema_has_the_four_vitals_with_units_and_ranges() -> None:
    # Execute
    features = {f.name: (f.unit, f.min, f.max) for f in DEFAULT_SCHEMA.features}

    # Assert
    assert DEFAULT_SCHEMA.feature_names == ["heart_rate", "systolic_bp", "diastolic_bp", "spo2"]
    assert features["heart_rate"] == ("bpm", 50, 120)
    assert features["systolic_bp"] == ("mmHg", 90, 160)
    assert features["diastolic_bp"] == ("mmHg", 60, 100)
    assert features["spo2"] == ("%", 90, 100)
    assert DEFAULT_SCHEMA.label == "healthy"
    assert DEFAULT_SCHEMA.columns == [*DEFAULT_SCHEMA.feature_names, "healthy"]


def test_to_dict_is_json_and_round_trips() -> None:
    # Execute
    text = json.dumps(DEFAULT_SCHEMA.to_dict())
    restored = Schema.from_dict(json.loads(text))

    # Assert
    assert restored == DEFAULT_SCHEMA


def test_from_dict_defaults_unit_range_and_label() -> None:
    # Execute
    schema = Schema.from_dict({"features": [{"name": "age"}]})

    # Assert
    assert schema == Schema(features=(Feature("age"),), label="healthy")


def test_from_columns_builds_plain_features_in_order() -> None:
    # Prepare
    names = [f"f{i}" for i in range(30)]

    # Execute
    schema = Schema.from_columns(names, label="outcome")

    # Assert
    assert schema.feature_names == names
    assert schema.label == "outcome"
    assert all(f.unit == "" and f.min is None and f.max is None for f in schema.features)


def test_schema_accepts_a_list_and_stores_a_hashable_tuple() -> None:
    # Execute
    schema = Schema(features=[Feature("a"), Feature("b")])  # type: ignore[arg-type]

    # Assert
    assert isinstance(schema.features, tuple)
    assert hash(schema) == hash(Schema.from_columns(["a", "b"]))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Schema(features=()), "at least one feature"),
        (lambda: Schema.from_columns(["a", "a", "b", "b"]), "duplicate feature names: a, b"),
        (lambda: Schema.from_columns(["a", "healthy"]), "'healthy' is also listed as a feature"),
        (lambda: Schema.from_columns(["a"], label=""), "label ''"),
        (lambda: Schema.from_columns("abc"), "not a single string"),
        (lambda: Feature("spo2", min=100, max=90), "min 100 is greater than max 90"),
        (lambda: Feature(""), "non-empty string"),
        (lambda: Feature(" spo2"), "surrounding whitespace"),
        (lambda: Feature("x", min=float("nan")), "must be finite"),
        (lambda: Feature("x", max="high"), "max must be a number"),  # type: ignore[arg-type]
        (lambda: Schema(features=("a",)), "must be Feature objects"),  # type: ignore[arg-type]
    ],
)
def test_invalid_schemas_raise_schema_error(build: Any, message: str) -> None:
    # Execute / Assert
    with pytest.raises(SchemaError, match=message):
        build()


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ([1, 2], "must be a mapping"),
        ({"features": "heart_rate"}, "must be a list of feature objects"),
        ({}, "must be a list of feature objects"),
        ({"features": [{"name": "a"}], "lable": "y"}, "unknown schema keys: lable"),
        ({"features": ["a"]}, r"features\[0\] must be an object"),
        ({"features": [{"unit": "bpm"}]}, r"features\[0\] has no 'name'"),
        ({"features": [{"name": "a", "maximum": 3}]}, r"features\[0\]: unknown keys: maximum"),
        ({"features": [{"name": "a"}, {"name": "b", "min": 5, "max": 1}]}, r"features\[1\]: "),
        ({"features": [{"name": "a"}, {"name": "a"}]}, "duplicate feature names"),
    ],
)
def test_from_dict_rejects_bad_dicts_with_a_clear_message(d: Any, message: str) -> None:
    # Execute / Assert
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict(d)


def test_schema_error_is_a_value_error() -> None:
    # Assert
    assert issubclass(SchemaError, ValueError)


def test_default_schema_names_unhealthy_as_the_positive_class_and_round_trips() -> None:
    # Execute
    d = json.loads(json.dumps(DEFAULT_SCHEMA.to_dict()))

    # Assert
    assert d["positive"] == {"value": 0, "name": "unhealthy", "other": "healthy"}
    assert d["features"][3] == {"name": "spo2", "unit": "%", "min": 90.0, "max": 100.0,
                                "hard_min": 50.0, "hard_max": 100.0}
    assert Schema.from_dict(d) == DEFAULT_SCHEMA
    assert (DEFAULT_SCHEMA.positive_value, DEFAULT_SCHEMA.positive_name) == (0, "unhealthy")
    assert DEFAULT_SCHEMA.class_name(1) == "healthy"


@pytest.mark.parametrize(
    "feature, message",
    [
        ({"name": "a", "min": 10, "max": 20, "hard_min": 15}, "expected min 10 is outside the hard limit hard_min 15"),
        ({"name": "a", "min": 10, "max": 20, "hard_max": 19}, "expected max 20 is outside the hard limit hard_max 19"),
        ({"name": "a", "hard_min": 5, "hard_max": 1}, "hard_min 5 is greater than hard_max 1"),
        ({"name": "a", "hard_max": float("inf")}, "hard_max must be finite"),
    ],
)
def test_hard_limits_must_hold_the_expected_range(feature: dict, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict({"features": [feature]})


@pytest.mark.parametrize(
    "positive, message",
    [({"value": 2}, "positive value must be 0 or 1"), ({"value": True}, "positive value must be 0 or 1"),
     ({"value": 0, "nmae": "x"}, "positive: unknown keys: nmae"), ("0", "positive must be an object")],
)
def test_a_bad_positive_class_is_refused(positive: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict({"features": [{"name": "a"}], "positive": positive})
