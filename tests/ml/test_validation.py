"""CSV validation: every problem kind with its line/column/value, both policies, all sources."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedhealth.ml import validation as v
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.validation import Policy, Problem, validate_csv, validate_frame

HEADER = "heart_rate,systolic_bp,diastolic_bp,spo2,healthy"
GOOD_ROWS = ["72,120,80,98,1", "88,135,85,95,0", "64,110,70,99,1"]


def csv(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def only(problems: list[Problem], kind: str) -> Problem:
    matching = [p for p in problems if p.kind == kind]
    assert len(matching) == 1, problems
    return matching[0]


def as_source(kind: str, data: bytes, tmp_path: Path) -> Any:
    if kind == "path":
        path = tmp_path / "upload.csv"
        path.write_bytes(data)
        return path
    if kind == "str-path":
        path = tmp_path / "upload.csv"
        path.write_bytes(data)
        return str(path)
    return io.BytesIO(data) if kind == "file" else data


SOURCES = ["bytes", "path", "str-path", "file"]


@pytest.mark.parametrize("source_kind", SOURCES)
def test_good_file_loads_float32_arrays_in_schema_order(source_kind: str, tmp_path: Path) -> None:
    # Prepare: columns shuffled in the file, whitespace around header names
    data = csv(
        "1 , 98 ,72,80,120",
        "0,95,88,85,135",
        header="healthy, spo2,heart_rate,diastolic_bp,systolic_bp",
    )

    # Execute
    result = validate_csv(as_source(source_kind, data, tmp_path), DEFAULT_SCHEMA)

    # Assert
    assert result.report.ok, result.report.format()
    assert result.data is not None
    assert result.data.X.dtype == np.float32 and result.data.y.dtype == np.float32
    np.testing.assert_array_equal(result.data.X, [[72, 120, 80, 98], [88, 135, 85, 95]])
    np.testing.assert_array_equal(result.data.y, [1, 0])
    assert (result.report.rows_total, result.report.rows_valid, result.report.rows_dropped) == (
        2,
        2,
        0,
    )
    assert result.report.problems == [] and result.report.counts == {}


def test_labels_may_be_written_as_floats_or_quoted() -> None:
    # Execute
    result = validate_csv(
        csv('72,120,80,98,"1"', "88,135,85,95,0.0", "70,120,80,97,1.0", "70,120,80,97,-0")
    )

    # Assert
    assert result.data is not None
    np.testing.assert_array_equal(result.data.y, [1, 0, 1, 0])
    assert not np.signbit(result.data.y).any()


@pytest.mark.parametrize("n_features", [13, 30])
def test_wider_schemas_from_columns_need_no_code_change(n_features: int) -> None:
    # Prepare
    names = [f"f{i}" for i in range(n_features)]
    schema = Schema.from_columns(names, label="outcome")
    rng = np.random.default_rng(n_features)
    X = rng.normal(size=(50, n_features)).round(3)
    y = np.arange(50) % 2
    frame = pd.DataFrame(X, columns=names).assign(outcome=y)

    # Execute
    result = validate_csv(frame.to_csv(index=False).encode(), schema)

    # Assert
    assert result.report.ok, result.report.format()
    assert result.data is not None
    assert result.data.X.shape == (50, n_features)
    np.testing.assert_allclose(result.data.X, X.astype(np.float32))
    np.testing.assert_array_equal(result.data.y, y)


@pytest.mark.parametrize(
    ("row", "kind", "column", "value"),
    [
        ("72,120,80,abc,1", v.NON_NUMERIC, "spo2", "abc"),
        ("72,120,80,98%,1", v.NON_NUMERIC, "spo2", "98%"),
        ("72,inf,80,98,1", v.NON_NUMERIC, "systolic_bp", "inf"),
        ("72,120,80,1e999,1", v.NON_NUMERIC, "spo2", "1e999"),
        ("72,120,true,98,1", v.NON_NUMERIC, "diastolic_bp", "true"),
        ("72,120,80,,1", v.EMPTY_VALUE, "spo2", ""),
        ("72,120,80,  ,1", v.EMPTY_VALUE, "spo2", "  "),
        ("nan,120,80,98,1", v.EMPTY_VALUE, "heart_rate", "nan"),
        ("NaN,120,80,98,1", v.EMPTY_VALUE, "heart_rate", "NaN"),
        ("72,120,80,98,", v.EMPTY_VALUE, "healthy", ""),
        ("72,120,80,98", v.EMPTY_VALUE, "healthy", ""),
        ("72,120,80,101,1", v.OUT_OF_RANGE, "spo2", "101"),
        ("0,120,80,98,1", v.OUT_OF_RANGE, "heart_rate", "0"),
        ("72,120,80,98,2", v.INVALID_LABEL, "healthy", "2"),
        ("72,120,80,98,0.5", v.INVALID_LABEL, "healthy", "0.5"),
        ("72,120,80,98,yes", v.INVALID_LABEL, "healthy", "yes"),
        ("72,120,80,98,True", v.INVALID_LABEL, "healthy", "True"),
    ],
)
def test_each_cell_problem_names_kind_line_column_and_value(
    row: str, kind: str, column: str, value: str
) -> None:
    # Prepare: the bad row is the third data row, so file line 4
    data = csv(GOOD_ROWS[0], GOOD_ROWS[1], row, GOOD_ROWS[2])

    # Execute
    result = validate_csv(data)

    # Assert
    assert not result.report.ok and result.data is None
    problem = only(result.report.problems, kind)
    assert (problem.line, problem.column, problem.value) == (4, column, value)
    assert problem.message.startswith(f"line 4, column {column!r}")
    assert result.report.counts == {kind: 1}
    assert result.report.rows_valid == 3 and result.report.rows_dropped == 0


@pytest.mark.parametrize(
    ("data", "kind", "line"),
    [
        (b"", v.EMPTY_FILE, None),
        (b"\n \n\r\n", v.EMPTY_FILE, None),
        (csv(), v.HEADER_ONLY, None),
        (csv("", " "), v.HEADER_ONLY, None),
        (csv(*GOOD_ROWS, header=HEADER.replace(",", ";")), v.WRONG_DELIMITER, 1),
        (csv(*GOOD_ROWS, header=HEADER.replace(",", "\t")), v.WRONG_DELIMITER, 1),
        (csv(*GOOD_ROWS, header=HEADER.replace(",", "|")), v.WRONG_DELIMITER, 1),
        (csv(GOOD_ROWS[0], "88,135,85,95,0,7", GOOD_ROWS[2]), v.MALFORMED_ROW, 3),
        (csv("72,120,80,98,1,7", GOOD_ROWS[1]), v.MALFORMED_ROW, 2),  # pandas would only warn
        (csv(GOOD_ROWS[0], '88,135,85,"95,0', GOOD_ROWS[2]), v.MALFORMED_ROW, 3),
        (b"heart_rate\n72\n", v.MISSING_COLUMN, 1),
    ],
)
@pytest.mark.parametrize("policy", list(Policy))
def test_file_level_problems_fail_under_every_policy(
    data: bytes, kind: str, line: int | None, policy: Policy
) -> None:
    # Execute
    result = validate_csv(data, policy=policy)

    # Assert
    assert not result.report.ok and result.data is None
    assert kind in result.report.counts
    assert result.report.problems[0].kind == kind
    assert result.report.problems[0].line == line
    assert result.report.file_errors == sorted(result.report.counts)


def test_duplicate_header_names_the_column() -> None:
    # Execute
    result = validate_csv(csv("72,120,80,98,1,99", header=HEADER + ",spo2"))

    # Assert
    problem = only(result.report.problems, v.DUPLICATE_HEADER)
    assert (problem.line, problem.column) == (1, "spo2")
    assert "2 times" in problem.message


def test_missing_columns_are_each_reported() -> None:
    # Execute
    result = validate_csv(csv("72,1", header="heart_rate,healthy"))

    # Assert
    assert [p.column for p in result.report.problems] == ["systolic_bp", "diastolic_bp", "spo2"]
    assert result.report.counts == {v.MISSING_COLUMN: 3}


def test_wrong_delimiter_reports_the_header_as_written() -> None:
    # Execute
    result = validate_csv(csv("72;120;80;98;1", header=HEADER.replace(",", ";")))

    # Assert
    problem = only(result.report.problems, v.WRONG_DELIMITER)
    assert problem.value == HEADER.replace(",", ";")
    assert "semicolon" in problem.message


def test_not_utf8_reports_offset_and_line_of_the_first_bad_byte() -> None:
    # Prepare: latin-1 "é" on line 3
    data = csv(GOOD_ROWS[0], "88,135,85,95,0") + "70,120,80,97,1,café\n".encode("latin-1")
    offset = data.index(b"\xe9")

    # Execute
    result = validate_csv(data)

    # Assert
    problem = only(result.report.problems, v.NOT_UTF8)
    assert problem.line == 4
    assert f"offset {offset}" in problem.message and "0xe9" in problem.message


def test_not_utf8_split_across_read_buffers_is_found(tmp_path: Path) -> None:
    # Prepare: a 2-byte sequence cut in half exactly at the 1 MiB read boundary
    filler = "72,120,80,98,1\n" * (v._CHUNK // 15 + 1)
    head = (HEADER + "\n" + filler).encode()[: v._CHUNK - 1]
    path = tmp_path / "big.csv"
    path.write_bytes(head + b"\xc3" + b"x\n")

    # Execute
    result = validate_csv(path)

    # Assert
    assert only(result.report.problems, v.NOT_UTF8).line is not None


@pytest.mark.parametrize("source_kind", SOURCES)
def test_file_too_large_is_refused_before_parsing(source_kind: str, tmp_path: Path) -> None:
    # Prepare
    data = csv(*GOOD_ROWS)

    # Execute
    result = validate_csv(as_source(source_kind, data, tmp_path), max_bytes=len(data) - 1)

    # Assert
    problem = only(result.report.problems, v.FILE_TOO_LARGE)
    assert f"limit is {len(data) - 1} bytes" in problem.message


def test_file_object_is_read_at_most_max_bytes_plus_one() -> None:
    # Prepare
    stream = io.BytesIO(b"x" * 1000)

    # Execute
    validate_csv(stream, max_bytes=100)

    # Assert
    assert stream.tell() == 101


def test_file_exactly_at_the_limit_is_accepted() -> None:
    # Prepare
    data = csv(*GOOD_ROWS)

    # Execute
    result = validate_csv(data, max_bytes=len(data))

    # Assert
    assert result.report.ok


def test_unexpected_columns_warn_but_pass() -> None:
    # Prepare
    data = csv("p1,72,120,80,98,1,x", "p2,88,135,85,95,0,y", header="id," + HEADER + ",note")

    # Execute
    result = validate_csv(data)

    # Assert
    assert result.report.ok and result.data is not None
    assert result.data.X.shape == (2, 4)
    assert [(w.kind, w.column) for w in result.report.warnings] == [
        (v.UNEXPECTED_COLUMN, "id"),
        (v.UNEXPECTED_COLUMN, "note"),
    ]
    assert result.report.problems == [] and result.report.counts == {}


def test_reject_fails_on_any_bad_cell_and_reports_every_kind() -> None:
    # Prepare
    data = csv(
        GOOD_ROWS[0], "72,120,80,abc,1", "72,120,80,101,0", "72,,80,98,2", GOOD_ROWS[1]
    )  # 101: impossible SpO2

    # Execute
    result = validate_csv(data, policy=Policy.REJECT)

    # Assert
    report = result.report
    assert not report.ok and result.data is None
    assert report.counts == {
        "non_numeric": 1,
        "empty_value": 1,
        "out_of_range": 1,
        "invalid_label": 1,
    }
    assert (report.rows_total, report.rows_valid, report.rows_dropped) == (5, 2, 0)


def test_drop_invalid_rows_keeps_the_good_ones() -> None:
    # Prepare
    data = csv(GOOD_ROWS[0], "72,120,80,abc,1", "72,120,80,101,0", GOOD_ROWS[1], "72,,80,98,2")

    # Execute
    result = validate_csv(data, policy=Policy.DROP_INVALID_ROWS)

    # Assert
    report = result.report
    assert report.ok and result.data is not None
    assert (report.rows_total, report.rows_valid, report.rows_dropped) == (5, 2, 3)
    assert [(p.kind, p.line) for p in report.problems] == [
        (v.NON_NUMERIC, 3),
        (v.EMPTY_VALUE, 6),
        (v.OUT_OF_RANGE, 4),
        (v.INVALID_LABEL, 6),
    ]
    np.testing.assert_array_equal(result.data.X, [[72, 120, 80, 98], [88, 135, 85, 95]])
    np.testing.assert_array_equal(result.data.y, [1, 0])


def test_policy_accepts_its_string_value() -> None:
    # Execute
    result = validate_csv(csv(GOOD_ROWS[0], "1,2,3,4,5"), policy="drop-invalid-rows")  # type: ignore[arg-type]

    # Assert
    assert result.report.policy == "drop-invalid-rows"


@pytest.mark.parametrize("policy", list(Policy))
def test_single_class_is_a_warning_and_the_rows_load(policy: Policy) -> None:
    # Execute: a referral centre where every patient carries the same label
    result = validate_csv(csv(GOOD_ROWS[0], GOOD_ROWS[2]), policy=policy)

    # Assert: the site takes part; the report says which metrics will be n/a
    warning = only(result.report.warnings, v.SINGLE_CLASS)
    assert (warning.line, warning.column, warning.value) == (None, "healthy", "1")
    assert "n/a" in warning.message and "AUROC" in warning.message
    assert result.report.ok and result.data is not None
    assert result.report.counts == {v.SINGLE_CLASS: 1} and result.report.file_errors == []
    np.testing.assert_array_equal(result.data.y, [1, 1])


def test_single_class_is_judged_after_dropping_rows() -> None:
    # Prepare: the only 0-labelled row is invalid
    data = csv(GOOD_ROWS[0], "88,135,85,abc,0", GOOD_ROWS[2])

    # Execute
    result = validate_csv(data, policy=Policy.DROP_INVALID_ROWS)

    # Assert
    assert result.report.counts == {v.NON_NUMERIC: 1, v.SINGLE_CLASS: 1}
    assert result.report.ok and result.report.file_errors == []


@pytest.mark.parametrize("source_kind", ["bytes", "path"])
def test_values_outside_the_expected_range_are_kept_and_flagged(
    source_kind: str, tmp_path: Path
) -> None:
    # Prepare: heart rate 130 and SpO2 88 are real patients (the seed's ranges refused them);
    # a blank line before them checks the line numbers of the fast path
    data = csv(GOOD_ROWS[0], "", "130,120,80,88,0", GOOD_ROWS[2])

    # Execute
    result = validate_csv(as_source(source_kind, data, tmp_path))

    # Assert
    report = result.report
    assert report.ok and result.data is not None and report.rows_valid == 3
    assert report.counts == {v.OUTSIDE_EXPECTED: 2}
    assert [(w.kind, w.line, w.column, w.value) for w in report.warnings] == [
        (v.OUTSIDE_EXPECTED, 4, "heart_rate", "130"),
        (v.OUTSIDE_EXPECTED, 4, "spo2", "88"),
    ]
    assert "expected range [50, 120] bpm; kept" in report.warnings[0].message
    np.testing.assert_array_equal(result.data.X[1], [130, 120, 80, 88])


@pytest.mark.parametrize(
    "row, column, value",
    [
        ("0,120,80,98,1", "heart_rate", "0"),
        ("72,120,80,101,1", "spo2", "101"),
        ("72,120,80,30,1", "spo2", "30"),
        ("350,120,80,98,1", "heart_rate", "350"),
    ],
)
def test_a_value_outside_the_hard_limits_rejects_the_row_naming_it(
    row: str, column: str, value: str
) -> None:
    # Execute
    result = validate_csv(csv(GOOD_ROWS[0], GOOD_ROWS[1], row))

    # Assert
    assert not result.report.ok and result.data is None
    problem = only(result.report.problems, v.OUT_OF_RANGE)
    assert (problem.line, problem.column, problem.value) == (4, column, value)
    assert (
        f"line 4, column {column!r}: value {value!r} is outside the hard limits" in problem.message
    )


def test_hard_limits_and_flags_under_drop_invalid_rows() -> None:
    # Execute: one impossible row dropped, one unusual row kept and flagged
    result = validate_csv(
        csv(GOOD_ROWS[0], "0,120,80,98,0", "130,120,80,98,0"), policy=Policy.DROP_INVALID_ROWS
    )

    # Assert
    report = result.report
    assert report.ok and (report.rows_valid, report.rows_dropped) == (2, 1)
    assert report.counts == {v.OUT_OF_RANGE: 1, v.OUTSIDE_EXPECTED: 1}
    assert [(w.line, w.column) for w in report.warnings] == [(4, "heart_rate")]


def test_a_stored_schema_with_only_min_max_reads_them_as_the_expected_range() -> None:
    # Prepare: a schema stored before hard limits existed
    old = Schema.from_dict(
        {"features": [{"name": "a", "unit": "", "min": 0, "max": 1}], "label": "y"}
    )

    # Execute
    result = validate_csv(b"a,y\n5,1\n0.5,0\n", old)

    # Assert: kept and flagged, not refused; the positive class stays y = 1
    assert result.report.ok and result.report.counts == {v.OUTSIDE_EXPECTED: 1}
    assert (old.features[0].hard_min, old.features[0].hard_max) == (None, None)
    assert old.positive_value == 1 and old.positive_name == "y = 1"


def test_no_valid_rows_when_every_row_is_dropped() -> None:
    # Execute
    result = validate_csv(csv("1,2,3,4,5", "x,y,z,w,v"), policy=Policy.DROP_INVALID_ROWS)

    # Assert
    assert not result.report.ok
    assert only(result.report.problems, v.NO_VALID_ROWS).message == "none of the 2 rows is valid"
    assert result.report.rows_dropped == 2


def test_examples_are_capped_per_kind_but_counts_are_total() -> None:
    # Prepare
    data = csv(*(["72,120,80,abc,1"] * 30), *(["72,120,80,,0"] * 3))

    # Execute
    result = validate_csv(data, max_examples=5)

    # Assert
    assert result.report.counts == {v.NON_NUMERIC: 30, v.EMPTY_VALUE: 3}
    assert [p.line for p in result.report.problems if p.kind == v.NON_NUMERIC] == [2, 3, 4, 5, 6]
    assert len([p for p in result.report.problems if p.kind == v.EMPTY_VALUE]) == 3


def test_line_numbers_count_blank_lines_crlf_and_bom() -> None:
    # Prepare: BOM, CRLF endings, a blank line and a whitespace-only line before the bad row
    text = "\ufeff" + HEADER + "\r\n72,120,80,98,1\r\n\r\n   \r\n88,135,85,abc,0\r\n"

    # Execute
    result = validate_csv(text.encode())

    # Assert
    assert only(result.report.problems, v.NON_NUMERIC).line == 5


def test_a_bad_row_deep_in_a_large_file_gets_its_line() -> None:
    # Prepare
    rows = [GOOD_ROWS[i % 2] for i in range(20_000)]
    rows[15_000] = "72,120,80,98,7"

    # Execute
    result = validate_csv(csv(*rows), policy=Policy.DROP_INVALID_ROWS)

    # Assert
    assert only(result.report.problems, v.INVALID_LABEL).line == 15_002
    assert result.data is not None and result.data.X.shape == (19_999, 4)


def test_report_to_dict_is_json_with_stable_keys() -> None:
    # Prepare
    result = validate_csv(csv(GOOD_ROWS[0], "72,120,80,abc,0", header=HEADER + ",id"))

    # Execute
    d = json.loads(json.dumps(result.report.to_dict()))

    # Assert
    assert list(d) == [
        "ok", "policy", "rows_total", "rows_valid", "rows_dropped",
        "counts", "file_errors", "problems", "warnings", "columns_dropped", "identifier_columns",
    ]  # fmt: skip
    assert d["problems"][0] == {
        "kind": "non_numeric",
        "message": "line 3, column 'spo2': value 'abc' is not a number",
        "line": 3,
        "column": "spo2",
        "value": "abc",
    }
    assert d["warnings"][0]["column"] == "id"
    assert d["columns_dropped"] == d["identifier_columns"] == ["id"]


def test_format_lists_counts_examples_and_warnings() -> None:
    # Prepare
    data = csv(*(["72,120,80,abc,1"] * 3), GOOD_ROWS[1], header=HEADER + ",id")

    # Execute
    text = validate_csv(data, max_examples=2).report.format()

    # Assert
    assert text.splitlines() == [
        "FAILED (policy reject): 4 rows, 1 valid, 0 dropped",
        "non_numeric: 3",
        "  line 2, column 'spo2': value 'abc' is not a number",
        "  line 3, column 'spo2': value 'abc' is not a number",
        "  ... and 1 more",
        "warnings: 1",
        "  unexpected_column: line 1: column 'id' is not in the schema and looks like a patient "
        "identifier; it is dropped and never stored (remove it from your export)",
    ]


def test_validate_frame_accepts_numeric_and_text_columns() -> None:
    # Prepare
    df = pd.DataFrame(
        {
            "heart_rate": [72.0, 88.0, np.nan],
            "systolic_bp": ["120", "135", "130"],
            "diastolic_bp": [80, 85, 82],
            "spo2": [98, 95, 96],
            "healthy": [1, 0, 1],
        }
    )

    # Execute
    result = validate_frame(df, DEFAULT_SCHEMA, policy=Policy.DROP_INVALID_ROWS)

    # Assert
    assert result.report.ok and result.data is not None
    np.testing.assert_array_equal(result.data.X, [[72, 120, 80, 98], [88, 135, 85, 95]])
    problem = only(result.report.problems, v.EMPTY_VALUE)
    assert (problem.line, problem.column, problem.value) == (4, "heart_rate", "")


def test_validate_frame_reports_missing_columns() -> None:
    # Execute
    result = validate_frame(pd.DataFrame({"heart_rate": [72]}), DEFAULT_SCHEMA)

    # Assert
    assert result.report.counts == {v.MISSING_COLUMN: 4}


def test_fast_path_and_diagnosis_agree_on_a_valid_file() -> None:
    # Prepare: "+5"-style and exponent notation go through the fast path; a stray "true" in
    # an ignored column forces the diagnosis path on the same values
    rows = ["72,1.2e2,+80,98.5,1,a", "88,135,85,95,0,b"]
    fast = validate_csv(csv(*rows, header=HEADER + ",note"))
    slow = validate_csv(csv(*rows[:1], rows[1][:-1] + "true", header=HEADER + ",note"))

    # Assert
    assert fast.data is not None and slow.data is not None
    np.testing.assert_array_equal(fast.data.X, slow.data.X)
    np.testing.assert_array_equal(fast.data.y, slow.data.y)


def test_diagnosis_in_chunks_keeps_lines_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: chunks of 4 rows, bad cells on both sides of chunk boundaries
    monkeypatch.setattr(v, "_DIAGNOSE_ROWS", 4)
    rows = [GOOD_ROWS[i % 2] for i in range(20)]
    rows[3], rows[4], rows[17] = "72,120,80,x3,1", "72,120,80,x4,0", "72,120,80,x17,1"

    # Execute
    result = validate_csv(csv(*rows), policy=Policy.DROP_INVALID_ROWS)

    # Assert
    assert [(p.line, p.value) for p in result.report.problems] == [
        (5, "x3"),
        (6, "x4"),
        (19, "x17"),
    ]
    assert result.data is not None and result.data.X.shape == (17, 4)


def test_old_mac_cr_line_endings_are_lines_too() -> None:
    # Prepare
    text = HEADER + "\r72,120,80,98,1\r\r88,135,85,abc,0\r70,120,80,97,0\r"

    # Execute
    result = validate_csv(text.encode(), policy=Policy.DROP_INVALID_ROWS)

    # Assert
    assert only(result.report.problems, v.NON_NUMERIC).line == 4
    assert result.data is not None
    np.testing.assert_array_equal(result.data.y, [1, 0])


def test_validate_frame_with_no_rows_has_no_valid_rows() -> None:
    # Prepare
    df = pd.DataFrame({name: pd.Series([], dtype=float) for name in DEFAULT_SCHEMA.columns})

    # Execute
    result = validate_frame(df, DEFAULT_SCHEMA)

    # Assert
    assert result.report.counts == {v.NO_VALID_ROWS: 1}
    assert result.data is None


def test_a_large_path_goes_through_the_parallel_parser(tmp_path: Path) -> None:
    # Prepare: over 5 MB, so pandas parses the path on several threads
    rows = "72,120,80,98,1\n88,135,85,95,0\n" * 200_000
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(HEADER + "\n" + rows)
    bad.write_text(HEADER + "\n" + rows + "72,120,80,98,5\n")

    # Execute
    loaded, refused = validate_csv(good), validate_csv(bad)

    # Assert
    assert loaded.data is not None and loaded.data.X.shape == (400_000, 4)
    np.testing.assert_array_equal(loaded.data.X[-1], [88, 135, 85, 95])
    assert only(refused.report.problems, v.INVALID_LABEL).line == 400_002
