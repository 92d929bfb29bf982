"""Usage import templates: definitions checked, files read, rows classified or refused.

Pure unit tests (no Redis, no PostgreSQL): the shipped switch templates read their
sample files (tests/data/mediation/) into the records written out here by hand, and
each template option is read from a small file written in the test.
"""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.errors import OcsError, Reason
from ocs.mediation.classify import CompiledTemplate, StartParser
from ocs.mediation.reader import open_file
from ocs.mediation.records import RowProblem, UsageRecord
from ocs.mediation.shipped import SHIPPED, shipped_template
from ocs.mediation.template import Template, template_from_json, template_to_json

DATA = Path(__file__).parent / "data" / "mediation"


def ms(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """Epoch milliseconds of a UTC time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * 1000


def template(**changes: Any) -> Template:
    """A header CSV template reading calls, with ``changes`` applied to its definition."""
    definition: dict[str, Any] = {
        "name": "carrier-x",
        "supplier": "carrier-x",
        "format": {"kind": "csv", "header": True},
        "columns": {
            "record_id": "id",
            "account": "acct",
            "called": "dst",
            "start": "start",
            "duration": "dur",
        },
        "start": {"format": "%Y-%m-%d %H:%M:%S", "time_zone": "UTC"},
    }
    for key, value in changes.items():
        definition[key] = value
    return template_from_json(definition)


def read(t: Template, text: str) -> tuple[list[UsageRecord | RowProblem], CompiledTemplate]:
    """Every outcome of reading ``text`` through ``t``, and the compiled template."""
    compiled = CompiledTemplate(t)
    return list(compiled.read(io.StringIO(text))), compiled


def records(outcomes: list[UsageRecord | RowProblem]) -> list[UsageRecord]:
    """The records among outcomes, failing on a problem."""
    assert all(isinstance(o, UsageRecord) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, UsageRecord)]


def shipped(name: str, file: str) -> tuple[list[UsageRecord | RowProblem], CompiledTemplate]:
    """A shipped template's reading of its sample file."""
    t = shipped_template(name)
    assert t is not None
    compiled = CompiledTemplate(t)
    with open_file(DATA / file, t.format) as stream:
        return list(compiled.read(stream)), compiled


def without_cells(outcome: UsageRecord | RowProblem) -> dict[str, object]:
    """A record's or problem's fields but its cells."""
    return {f: getattr(outcome, f) for f in outcome.__struct_fields__ if f != "cells"}


# --- the shipped templates --------------------------------------------------------------


def test_asterisk_master_csv_gives_its_answered_calls_billed_from_the_answer_time() -> None:
    outcomes, compiled = shipped("asterisk-cdr-csv", "asterisk-Master.csv")
    assert [without_cells(o) for o in outcomes] == [
        {
            "line": 1,
            "record_id": "1709287200.1",
            "account": "1001",
            "member": None,
            "caller": "15145550100",
            "called": "18005550199",
            "service": None,
            "direction": "outbound",
            "start_ms": 1_709_287_205_000,  # the answer time, 2024-03-01 10:00:05 UTC
            "quantity": 65,  # billsec
            "rate_type": None,
        },
        # Lines 2 and 3 (NO ANSWER, BUSY) are left out by the filter.
        {
            "line": 4,
            "record_id": "1709337590.7",
            "account": None,  # no accountcode: the caller says whose call it is
            "member": None,
            "caller": "15145550102",
            "called": "442071234567",
            "service": None,
            "direction": "outbound",
            "start_ms": 1_709_337_598_000,  # 2024-03-01 23:59:58 UTC
            "quantity": 602,
            "rate_type": None,
        },
        {
            "line": 5,
            "problems": (
                "record_id (column 16): empty",
                "start (column 10): '2024-02-30 11:00:02' is not a time in the format "
                "%Y-%m-%d %H:%M:%S",
                "duration (column 13): '38x' is not a number of seconds",
            ),
        },
    ]
    first = outcomes[0]
    assert len(first.cells) == 18
    assert first.cells[4] == '"Alice, Smith" <15145550100>'
    assert (compiled.rows_read, compiled.rows_filtered) == (5, 2)


def test_freeswitch_default_template_gives_answered_a_legs() -> None:
    outcomes, compiled = shipped("freeswitch-cdr-csv", "freeswitch-Master.csv")
    assert [without_cells(o) for o in outcomes] == [
        {
            "line": 1,
            "record_id": "a5c9f6c0-e752-11e3-8bfb-65b6c3cdac7d",
            "account": "1001",
            "member": None,
            "caller": "1001",
            "called": "15145550123",
            "service": None,
            "direction": "outbound",
            "start_ms": 1_709_287_200_000,  # answer_stamp 2024-03-01 10:00:00 UTC
            "quantity": 121,
            "rate_type": None,
        },
        {
            "line": 3,
            "record_id": "d2e3f4a5-e752-11e3-8bfe-65b6c3cdac7d",
            "account": None,
            "member": None,
            "caller": "1002",
            "called": "18885550100",
            "service": None,
            "direction": "outbound",
            "start_ms": 1_709_294_403_000,  # 2024-03-01 12:00:03 UTC
            "quantity": 30,
            "rate_type": None,
        },
        {
            "line": 4,
            "problems": (
                "record_id (column 10): empty",
                "duration (column 8): '1:00' is not a number of seconds",
            ),
        },
    ]
    assert (compiled.rows_read, compiled.rows_filtered) == (4, 1)


def test_kamailio_acc_cdrs_give_calls_with_durations_rounded_up() -> None:
    outcomes, compiled = shipped("kamailio-acc", "kamailio-acc_cdrs.csv")
    assert [without_cells(o) for o in outcomes] == [
        {
            "line": 2,
            "record_id": "a84b4c76e66710@10.0.0.1",
            "account": None,
            "member": "1001",
            "caller": "1001",
            "called": "15145550123",
            "service": None,
            "direction": "outbound",
            "start_ms": 1_709_287_200_000,  # 2024-03-01 10:00:00 UTC
            "quantity": 66,  # 65.500 s
            "rate_type": None,
        },
        {
            "line": 4,
            "record_id": "c84b4c76e66712@10.0.0.2",
            "account": None,
            "member": "1002",
            "caller": "1002",
            "called": "442071234567",
            "service": None,
            "direction": "outbound",
            "start_ms": 1_709_290_800_250,  # 2024-03-01 11:00:00.250 UTC
            "quantity": 31,  # 30.250 s
            "rate_type": None,
        },
        {
            "line": 5,
            "problems": (
                'record_id (column "callid"): empty',
                "start (column \"start_time\"): 'yesterday' is not an ISO 8601 time",
                "duration: 'n/a' is not a number of seconds",
                'member (column "src_user"), caller (column "src_user"): all empty; '
                "one of them must say whose usage it is",
            ),
        },
    ]
    assert compiled.header == (
        "id",
        "start_time",
        "end_time",
        "duration",
        "callid",
        "src_user",
        "src_domain",
        "dst_user",
        "dst_domain",
    )
    assert (compiled.rows_read, compiled.rows_filtered) == (4, 1)


def test_the_shipped_templates_are_listed_and_write_back_to_the_same_definition() -> None:
    assert SHIPPED == ("asterisk-cdr-csv", "freeswitch-cdr-csv", "kamailio-acc")
    for name in SHIPPED:
        t = shipped_template(name)
        assert t is not None and t.name == name
        assert template_from_json(template_to_json(t)) == t
    assert shipped_template("nortel-dms") is None


# --- CSV options ------------------------------------------------------------------------


def test_csv_delimiter_quote_skipped_lines_and_header_with_physical_line_numbers() -> None:
    t = template(
        format={"kind": "csv", "delimiter": ";", "quote": "'", "header": True, "skip_lines": 2}
    )
    text = (
        "CARRIER X usage export\n"
        "period: 2024-03\n"
        "dst;id;acct;start;dur;note\n"
        "'1514;5550100';r1;A1;2024-03-01 10:00:00;60;\n"
        "\n"
        "14165550100;r2;A1;2024-03-01 10:00:00;61;'two\nlines'\n"
        "14165550101;r3;A2;2024-03-01 10:00:00;62;\n"
    )
    outcomes, compiled = read(t, text)
    assert [(r.line, r.record_id, r.called, r.quantity) for r in records(outcomes)] == [
        (4, "r1", "1514;5550100", 60),
        (6, "r2", "14165550100", 61),  # a quoted line break: the next row starts on line 8
        (8, "r3", "14165550101", 62),
    ]
    assert compiled.header == ("dst", "id", "acct", "start", "dur", "note")
    assert compiled.render_header() == (
        "CARRIER X usage export\nperiod: 2024-03\ndst;id;acct;start;dur;note\n"
    )
    assert compiled.rows_read == 3


def test_header_less_csv_names_columns_by_index_and_quote_none_reads_quotes_as_text() -> None:
    t = template(
        format={"kind": "csv", "delimiter": "|", "quote": None},
        columns={"record_id": 0, "account": 1, "start": 2, "duration": 3},
    )
    outcomes, compiled = read(t, 'r"1|A1|2024-03-01 10:00:00|5\n')
    assert [(r.record_id, r.account, r.quantity) for r in records(outcomes)] == [('r"1', "A1", 5)]
    assert compiled.header is None and compiled.render_header() is None
    assert compiled.render(('r"1', "A1", "2024-03-01 10:00:00", "5")) == (
        'r"1|A1|2024-03-01 10:00:00|5\n'
    )


def test_a_file_in_the_templates_encoding(tmp_path: Path) -> None:
    t = template(format={"kind": "csv", "header": True, "encoding": "cp1252"})
    path = tmp_path / "usage.csv"
    path.write_bytes(
        "id,acct,dst,start,dur\nr1,Société,1514,2024-03-01 10:00:00,7\n".encode("cp1252")
    )
    compiled = CompiledTemplate(t)
    with open_file(path, t.format) as stream:
        assert [r.account for r in records(list(compiled.read(stream)))] == ["Société"]


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    t = template()  # encoding utf-8-sig by default
    path = tmp_path / "usage.csv"
    path.write_bytes(b"\xef\xbb\xbfid,acct,dst,start,dur\nr1,A1,1514,2024-03-01 10:00:00,7\n")
    compiled = CompiledTemplate(t)
    with open_file(path, t.format) as stream:
        assert [r.record_id for r in records(list(compiled.read(stream)))] == ["r1"]


def test_a_file_not_in_the_templates_encoding_is_refused_naming_where(tmp_path: Path) -> None:
    t = template()
    path = tmp_path / "usage.csv"
    path.write_bytes(b"id,acct,dst,start,dur\nr1,Soci\xe9t\xe9,1514,2024-03-01 10:00:00,7\n")
    with pytest.raises(OcsError) as caught, open_file(path, t.format) as stream:
        list(CompiledTemplate(t).read(stream))
    assert caught.value.field == "file"
    assert caught.value.message.startswith("file: unreadable after line 0: 'utf-8' codec")


def test_a_cell_over_the_csv_size_limit_is_refused_naming_where() -> None:
    text = "id,acct,dst,start,dur\nr1,A,1514,2024-03-01 10:00:00,7\n"
    text += "r2,A," + "9" * 200_000 + ",2024-03-01 10:00:00,7\n"
    compiled = CompiledTemplate(template())
    rows = compiled.read(io.StringIO(text))
    first = next(rows)
    assert isinstance(first, UsageRecord) and first.record_id == "r1"
    with pytest.raises(OcsError) as caught:
        next(rows)
    assert caught.value.field == "file"
    assert "unreadable after line 2: field larger than field limit" in caught.value.message


def test_a_quote_no_line_closes_refuses_the_file_after_the_rows_before_it() -> None:
    # The lenient csv reader read a stray quote's rest of the file as one cell, silently.
    head = "id,acct,dst,start,dur,name\nr1,A,1514,2024-03-01 10:00:00,7,x\n"
    stray = 'r2,A,1514,2024-03-01 10:00:00,7,"ACME\n'
    tail = "".join(f"r{n},A,1514,2024-03-01 10:00:00,7,Bob Bobson\n" for n in range(3, 6000))
    for text, message in (
        (
            head + stray + tail[: tail.index("r8,")],
            'file: unreadable after line 2: the row on line 3 opens a quote (") that no later'
            " line closes, so lines 3 to 8 would be one cell; close or remove the quote and"
            " import the file again",
        ),
        # Longer than the csv module's cell limit: the same, said while reading it.
        (
            head + stray + tail,
            "file: unreadable after line 2: the row on line 3 runs over 2875 lines, within a"
            ' quote (") no line closes? (field larger than field limit (131072))',
        ),
    ):
        compiled = CompiledTemplate(template())
        rows = compiled.read(io.StringIO(text, newline=""))
        first = next(rows)
        assert isinstance(first, UsageRecord) and first.record_id == "r1"
        with pytest.raises(OcsError) as caught:
            next(rows)
        assert (caught.value.field, caught.value.message) == ("file", message)
        assert compiled.rows_read == 1
    # A header whose quote no line closes.
    with pytest.raises(OcsError) as caught:
        CompiledTemplate(template()).read(io.StringIO('\nid,"acct,dst,start,dur\nr1,A\n'))
    assert caught.value.message.startswith(
        "file: unreadable after line 1: the row on line 2 opens a quote"
    )


def test_a_header_without_a_column_the_template_names_refuses_the_file() -> None:
    with pytest.raises(OcsError) as caught:
        CompiledTemplate(template()).read(io.StringIO("id,account,dst,start,dur\n"))
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == "columns.account"
    assert "the file's header has no column 'acct'" in caught.value.message


def test_an_empty_file_has_no_rows() -> None:
    outcomes, compiled = read(template(), "")
    assert outcomes == [] and compiled.rows_read == 0


# --- fixed-width ------------------------------------------------------------------------


FIXED = {
    "kind": "fixed",
    "skip_lines": 1,
    "fields": {
        "id": [0, 6],
        "acct": [6, 8],
        "dst": [14, 12],
        "when": [26, 14],
        "secs": [40, 5],
    },
}
FIXED_COLUMNS = {
    "record_id": "id",
    "account": "acct",
    "called": "dst",
    "start": "when",
    "duration": "secs",
}


def test_fixed_width_fields_are_sliced_and_stripped() -> None:
    t = template(format=FIXED, columns=FIXED_COLUMNS, start={"format": "%Y%m%d%H%M%S"})
    text = (
        "HDR 20240301\n"
        "r1    A1      15145550100 20240301100000   60\n"
        "r2    A2      14165550100 20240301235959    7\n"
    )
    outcomes, compiled = read(t, text)
    assert [
        (r.line, r.record_id, r.account, r.called, r.start_ms, r.quantity)
        for r in records(outcomes)
    ] == [
        (2, "r1", "A1", "15145550100", ms(2024, 3, 1, 10, 0, 0), 60),
        (3, "r2", "A2", "14165550100", ms(2024, 3, 1, 23, 59, 59), 7),
    ]
    assert outcomes[0].cells == ("r1    A1      15145550100 20240301100000   60",)
    assert compiled.render(outcomes[0].cells) == "r1    A1      15145550100 20240301100000   60\n"
    assert compiled.render_header() == "HDR 20240301\n"


def test_a_fixed_width_line_too_short_has_empty_fields() -> None:
    t = template(format=FIXED, columns=FIXED_COLUMNS, start={"format": "%Y%m%d%H%M%S"})
    outcomes, _ = read(t, "HDR\nr9    A1      151455\n")
    assert without_cells(outcomes[0]) == {
        "line": 2,
        "problems": ('start (column "when"): empty', 'duration (column "secs"): empty'),
    }


# --- classification ---------------------------------------------------------------------


CLASSIFIED = (
    "id,acct,caller,dst,start,dur,dir,country,trunk\n"
    "r1,A1,15145550100,18005550100,2024-03-01 10:00:00,60,I,CA,tf-east\n"
    "r2,A1,15145550100,18885550100,2024-03-01 10:00:00,60,O,CA,pstn\n"
    "r3,A1,15145550100,14165550100,2024-03-01 10:00:00,60,O,CA,pstn\n"
    "r4,A1,15145550100,12125550100,2024-03-01 10:00:00,60,O,US,pstn\n"
    "r5,A1,33612345678,442071234567,2024-03-01 10:00:00,60,O,GB,pstn\n"
    "r6,A1,15145550100,14165550100,2024-03-01 10:00:00,60,I,CA,tf-west\n"
    "r7,A1,15145550100,5550100,2024-03-01 10:00:00,60,,US,pstn\n"
)
CLASSIFIED_COLUMNS = {
    "record_id": "id",
    "account": "acct",
    "caller": "caller",
    "called": "dst",
    "start": "start",
    "duration": "dur",
    "direction": "dir",
}


def classified(rules: list[dict[str, Any]], default: str | None = None) -> list[str | None]:
    """The rate type of each row of CLASSIFIED under ``rules``."""
    t = template(
        columns=CLASSIFIED_COLUMNS,
        direction={"map": {"I": "inbound", "O": "outbound"}},
        classify=rules,
        default_rate_type=default,
    )
    return [r.rate_type for r in records(read(t, CLASSIFIED)[0])]


def test_direction_and_called_prefix_together_and_the_first_matching_rule_wins() -> None:
    rules = [
        {
            "rate_type": "Inbound Toll-free",
            "when": {"direction": "inbound", "called_prefix": ["1800", "1888"]},
        },
        {"rate_type": "Toll-free", "when": {"called_prefix": ["1800", "1888"]}},
        {"rate_type": "Inbound", "when": {"direction": "inbound"}},
    ]
    assert classified(rules) == [
        "Inbound Toll-free",
        "Toll-free",  # outbound to 1888: the first rule needs inbound
        None,
        None,
        None,
        "Inbound",
        None,  # no direction cell: the default, outbound
    ]


def test_column_value_regex_and_caller_prefix_rules_with_a_default() -> None:
    rules = [
        {"rate_type": "Canada", "when": {"cells": [{"column": "country", "equals": ["CA"]}]}},
        {"rate_type": "From France", "when": {"caller_prefix": ["33"]}},
        {"rate_type": "US trunk", "when": {"cells": [{"column": "trunk", "regex": "^pstn$"}]}},
    ]
    assert classified(rules, default="Other") == [
        "Canada",
        "Canada",
        "Canada",
        "US trunk",
        "From France",
        "Canada",
        "US trunk",
    ]


def test_conditions_of_one_rule_all_hold_and_negate_reverses_a_cell_test() -> None:
    rules = [
        {
            "rate_type": "Canada not toll-free trunk",
            "when": {
                "cells": [
                    {"column": "country", "equals": "CA"},
                    {"column": "trunk", "regex": "^tf-", "negate": True},
                ]
            },
        }
    ]
    assert (
        classified(rules)
        == [None, "Canada not toll-free trunk", "Canada not toll-free trunk"] + [None] * 4
    )


def test_usage_of_a_service_is_measured_by_its_quantity_in_whole_units() -> None:
    t = template(
        columns={
            "record_id": "id",
            "account": "acct",
            "service": "svc",
            "start": "start",
            "duration": "dur",
            "quantity": "bytes",
        },
        quantity={"divide_by": 1_048_576, "round": "up"},
        classify=[{"rate_type": "Data", "when": {"service": ["data"]}}],
    )
    text = (
        "id,acct,svc,start,dur,bytes\n"
        "d1,A1,data,2024-03-01 10:00:00,,1048577\n"  # just over 1 MiB: 2 units
        "c1,A1,,2024-03-01 10:00:00,42,\n"  # no service: a call of 42 seconds
        "d2,A1,data,2024-03-01 10:00:00,,1048576.0\n"
    )
    got = records(read(t, text)[0])
    assert [(r.record_id, r.service, r.quantity, r.rate_type) for r in got] == [
        ("d1", "data", 2, "Data"),
        ("c1", None, 42, None),
        ("d2", "data", 1, "Data"),
    ]


@pytest.mark.parametrize(
    ("rounding", "expected"), [("up", [1, 1, 2]), ("down", [0, 0, 1]), ("nearest", [0, 1, 2])]
)
def test_quantity_rounding(rounding: str, expected: list[int]) -> None:
    t = template(
        columns={"record_id": "id", "account": "acct", "start": "start", "quantity": "kb"},
        service="data-mb",
        quantity={"divide_by": 1000, "round": rounding},
    )
    text = "id,acct,start,kb\nr1,A,2024-03-01 10:00:00,499\nr2,A,2024-03-01 10:00:00,500\n"
    text += "r3,A,2024-03-01 10:00:00,1500.5\n"
    got = records(read(t, text)[0])
    assert [r.quantity for r in got] == expected
    assert {r.service for r in got} == {"data-mb"}


@pytest.mark.parametrize(
    ("unit", "cells", "expected"),
    [
        ("seconds", ["0", "60", "60.001"], [0, 60, 61]),
        ("milliseconds", ["0", "1", "60000", "60001"], [0, 1, 60, 61]),
        ("hh:mm:ss", ["0:00:00", "0:01:01", "25:00:00"], [0, 61, 90_000]),
    ],
)
def test_duration_units_are_whole_seconds_rounded_up(
    unit: str, cells: list[str], expected: list[int]
) -> None:
    t = template(duration_unit=unit, validate={"max_duration": None})
    text = "id,acct,dst,start,dur\n" + "".join(
        f"r{n},A,1514,2024-03-01 10:00:00,{cell}\n" for n, cell in enumerate(cells)
    )
    assert [r.quantity for r in records(read(t, text)[0])] == expected


def test_a_measure_a_record_cannot_hold_is_a_problem_of_its_row_not_of_the_file() -> None:
    # 3,000,000,000 units were charged, then PostgreSQL refused the row (an INTEGER), so
    # a later import charged them again; "1e1000000" took 41 s of CPU to expand; and a
    # 21-digit quantity stopped the whole import. Each is now its row's problem.
    t = template(
        columns={"record_id": "id", "account": "acct", "start": "start", "quantity": "b"},
        service="data",
        quantity={"divide_by": 1, "round": "up"},
    )
    cells = ["2147483647", "3000000000", "1e1000000", "100000000000000000000", "2.5E3"]
    text = "id,acct,start,b\n" + "".join(
        f"r{n},A,2024-03-01 10:00:00,{cell}\n" for n, cell in enumerate(cells)
    )
    outcomes = read(t, text)[0]
    assert isinstance(outcomes[0], UsageRecord) and outcomes[0].quantity == 2_147_483_647
    problems = [o for o in outcomes[1:] if isinstance(o, RowProblem)]
    assert len(problems) == 4, outcomes
    assert "more units than a record holds" in str(problems[0])
    assert "in plain digits" in str(problems[1]) and "in plain digits" in str(problems[3])
    assert "more units than a record holds" in str(problems[2])


def test_a_cell_too_long_for_a_cdrs_indexed_column_is_its_rows_problem() -> None:
    # The CDR table indexes a record's id, called number (its destination) and service
    # (its zone): a longer text than the real-time path takes made PostgreSQL refuse
    # the CDR after the debit, and the ledger writer stopped on it.
    rows = [
        ("i" * 128, "1" * 64, "d" * 200),  # at each limit: a record
        ("i" * 129, "1" * 64, ""),
        ("r2", "1" * 65, ""),
        ("r3", "", "d" * 201),
    ]
    text = "id,acct,dst,svc,start,q,dur\n" + "".join(
        f"{rid},A,{dst},{svc},2024-03-01 10:00:00,5,5\n" for rid, dst, svc in rows
    )
    t = template(
        columns={
            "record_id": "id",
            "account": "acct",
            "called": "dst",
            "service": "svc",
            "start": "start",
            "quantity": "q",
            "duration": "dur",
        },
    )
    outcomes = read(t, text)[0]
    assert isinstance(outcomes[0], UsageRecord) and outcomes[0].service == "d" * 200
    assert [o.problems for o in outcomes[1:] if isinstance(o, RowProblem)] == [
        ('record_id (column "id"): 129 characters, more than the 128 a record id may have',),
        ('called (column "dst"): 65 characters, more than the 64 a called number may have',),
        ('service (column "svc"): 201 characters, more than the 200 a service\'s name may have',),
    ]


def test_a_member_or_caller_id_longer_than_a_live_call_takes_is_its_rows_problem() -> None:
    # A member or caller id of more than 64 characters (what POST /v1/calls and a member
    # take) was charged to the row's account, its CDR keeping the whole text.
    rows = [
        ("r1", "m" * 64, "1" * 64),  # at each limit: a record
        ("r2", "m" * 65, ""),
        ("r3", "", "1" * 3_000),
        ("r4", "m" * 65, "1" * 65),
    ]
    text = "id,acct,mem,cli,dst,start,dur\n" + "".join(
        f"{rid},A,{member},{caller},15145550100,2024-03-01 10:00:00,5\n"
        for rid, member, caller in rows
    )
    t = template(
        columns={
            "record_id": "id",
            "account": "acct",
            "member": "mem",
            "caller": "cli",
            "called": "dst",
            "start": "start",
            "duration": "dur",
        }
    )
    outcomes = read(t, text)[0]
    assert isinstance(outcomes[0], UsageRecord)
    assert (outcomes[0].member, outcomes[0].caller) == ("m" * 64, "1" * 64)
    assert [(o.line, o.problems) for o in outcomes[1:] if isinstance(o, RowProblem)] == [
        (3, ('member (column "mem"): 65 characters, more than the 64 a member may have',)),
        (
            4,
            ('caller (column "cli"): 3,000 characters, more than the 64 a caller id may have',),
        ),
        (
            5,
            (
                'member (column "mem"): 65 characters, more than the 64 a member may have',
                'caller (column "cli"): 65 characters, more than the 64 a caller id may have',
            ),
        ),
    ]


def test_a_member_or_caller_id_too_long_in_a_fixed_width_file_is_its_rows_problem() -> None:
    fmt = {
        "kind": "fixed",
        "fields": {
            "id": [0, 4],
            "mem": [4, 70],
            "cli": [74, 70],
            "when": [144, 14],
            "secs": [158, 5],
        },
    }
    columns = {
        "record_id": "id",
        "member": "mem",
        "caller": "cli",
        "start": "when",
        "duration": "secs",
    }
    t = template(format=fmt, columns=columns, start={"format": "%Y%m%d%H%M%S"})
    lines = [
        ("r1", "m" * 64, "1" * 64),
        ("r2", "m" * 65, ""),
        ("r3", "", "1" * 70),
    ]
    text = "".join(
        f"{rid:<4}{member:<70}{caller:<70}20240301100000   60\n" for rid, member, caller in lines
    )
    outcomes = read(t, text)[0]
    assert isinstance(outcomes[0], UsageRecord)
    assert (outcomes[0].member, outcomes[0].caller) == ("m" * 64, "1" * 64)
    assert [(o.line, o.problems) for o in outcomes[1:] if isinstance(o, RowProblem)] == [
        (2, ('member (column "mem"): 65 characters, more than the 64 a member may have',)),
        (3, ('caller (column "cli"): 70 characters, more than the 64 a caller id may have',)),
    ]


def test_a_call_ending_after_the_year_3000_is_its_rows_problem() -> None:
    text = (
        "id,acct,dst,start,dur\n"
        "r1,A,44,2999-12-31 23:58:00,120\n"  # ends at 3000-01-01 00:00:00: kept
        "r2,A,44,2999-12-31 23:59:00,120\n"
    )
    outcomes = read(template(), text)[0]
    assert isinstance(outcomes[0], UsageRecord)
    assert isinstance(outcomes[1], RowProblem)
    assert outcomes[1].problems == (
        'duration (column "dur"): 120 seconds from its start end after the year 3000',
    )


# --- filters ----------------------------------------------------------------------------


def test_filtered_rows_are_counted_not_rejected_even_when_they_would_be_bad() -> None:
    t = template(
        filters=[
            {"column": "disposition", "equals": "ANSWERED"},
            {"column": "kind", "regex": "^(test|internal)$", "negate": True},
        ]
    )
    text = (
        "id,acct,dst,start,dur,disposition,kind\n"
        "r1,A1,1514,2024-03-01 10:00:00,60,ANSWERED,pstn\n"
        "r2,A1,1514,,,NO ANSWER,pstn\n"  # bad cells, but not a call to rate
        "r3,A1,1514,2024-03-01 10:00:00,60,ANSWERED,test\n"
        "TRAILER,2\n"  # too short: its disposition reads as empty, so it is left out
    )
    outcomes, compiled = read(t, text)
    assert [r.record_id for r in records(outcomes)] == ["r1"]
    assert (compiled.rows_read, compiled.rows_filtered) == (4, 3)


def test_counters_add_up_over_several_files() -> None:
    t = template(filters=[{"column": "dur", "regex": "[1-9]"}])
    compiled = CompiledTemplate(t)
    text = (
        "id,acct,dst,start,dur\nr1,A,1514,2024-03-01 10:00:00,5\nr2,A,1514,2024-03-01 10:00:00,0\n"
    )
    for _ in range(2):
        list(compiled.read(io.StringIO(text)))
    assert (compiled.rows_read, compiled.rows_filtered) == (4, 2)


def test_a_pattern_that_backtracks_without_end_in_python_filters_in_linear_time() -> None:
    # Python's re needs 2^n steps for ^(a+)+$ on n letters and a "!": 3.5 s at 25
    # letters, and far beyond any import at 64. RE2 answers at once (decision 0047).
    t = template(filters=[{"column": "dst", "regex": "^(a+)+$", "negate": True}])
    bad = "a" * 64 + "!"
    text = (
        f"id,acct,dst,start,dur\nr1,A,{bad},2024-03-01 10:00:00,5\n"
        "r2,A,aaaa,2024-03-01 10:00:00,5\n"
    )
    compiled = CompiledTemplate(t)
    kept = list(compiled.read(io.StringIO(text)))
    assert (compiled.rows_read, compiled.rows_filtered) == (2, 1)
    assert len(kept) == 1


# --- validation -------------------------------------------------------------------------


def test_every_problem_of_a_row_is_named_with_its_column_and_line() -> None:
    t = template(
        columns={**CLASSIFIED_COLUMNS, "member": "ext"},
        direction={"map": {"I": "inbound", "O": "outbound"}},
        validate={"required": ["called"], "max_duration": 3600},
    )
    text = (
        "id,acct,ext,caller,dst,start,dur,dir\n"
        "r1,A1,,151455,1416,2024-03-01 10:00:00,60,O\n"
        ",,,,,2024-03-01 24:00:00,3601,X\n"
        "r3,A1,,151455\n"
        "r4,A1,,151455,1416,2024-03-01 10:00:00,-1,I\n"
    )
    outcomes, _ = read(t, text)
    assert [without_cells(o) for o in outcomes[1:]] == [
        {
            "line": 3,
            "problems": (
                'record_id (column "id"): empty',
                "start: '2024-03-01 24:00:00' is not a time in the format %Y-%m-%d %H:%M:%S",
                'duration (column "dur"): 3601 seconds, more than the 3600 allowed',
                "direction (column \"dir\"): 'X' is not one of I, O",
                'account (column "acct"), member (column "ext"), caller: all empty; '
                "one of them must say whose usage it is",
                'called (column "dst"): empty',
            ),
        },
        {
            "line": 4,
            "problems": (
                'called (column "dst"): missing, the row has 4 cells',
                "start: missing, the row has 4 cells",
                'duration (column "dur"): missing, the row has 4 cells',
                'direction (column "dir"): missing, the row has 4 cells',
            ),
        },
        {"line": 5, "problems": ("duration (column \"dur\"): '-1' is negative",)},
    ]
    assert outcomes[1].cells == ("", "", "", "", "", "2024-03-01 24:00:00", "3601", "X")


def test_a_nul_in_any_cell_or_a_control_in_a_part_refuses_its_row_naming_the_column() -> None:
    # A NUL reached PostgreSQL in a debited record's CDR, which refused it (22021).
    t = template(
        format={"kind": "csv", "header": False},
        columns={
            "record_id": 0,
            "account": 1,
            "called": 2,
            "start": 3,
            "duration": 4,
        },
    )
    text = (
        "r1,A\x00,1514,2024-03-01 10:00:00,7,note\n"
        "r2,A,1514,2024-03-01 10:00:00,7,n\x00te\n"
        'r3,A,1514,2024-03-01 10:00:00,7,"two\x0blines\tand a tab"\n'
        "r4\t,A,1514,2024-03-01 10:00:00,7\n"
        "r5,A\x7f,1514,2024-03-01 10:00:00,7\n"
    )
    outcomes, compiled = read(t, text)
    assert [without_cells(o) for o in outcomes if isinstance(o, RowProblem)] == [
        {
            "line": 1,
            "problems": (
                "account (column 1): holds a NUL character ('\\x00' at character 2),"
                " which a record cannot hold",
            ),
        },
        {
            "line": 2,
            "problems": (
                "column 5: holds a NUL character ('\\x00' at character 2),"
                " which a record cannot hold",
            ),
        },
        {
            "line": 5,
            "problems": (
                "account (column 1): holds a control character ('\\x7f' at character 2),"
                " which a record cannot hold",
            ),
        },
    ]
    # Controls in a cell no part maps, and a tab anywhere, are no problem.
    assert [r.record_id for r in outcomes if isinstance(r, UsageRecord)] == ["r3", "r4\t"]
    assert compiled.rows_read == 5


def test_a_nul_in_a_fixed_width_line_refuses_it_naming_its_field_or_the_line() -> None:
    t = template(format=FIXED, columns=FIXED_COLUMNS, start={"format": "%Y%m%d%H%M%S"})
    text = (
        "HDR 20240301\n"
        "r1    A1      1514555\x00100 20240301100000   60\n"
        "r2    A1      15145550100 20240301100000   60 \x00\n"
    )
    outcomes, _ = read(t, text)
    assert [o.problems for o in outcomes if isinstance(o, RowProblem)] == [
        (
            "called (column \"dst\"): holds a NUL character ('\\x00' at character 8),"
            " which a record cannot hold",
        ),
        ("line: holds a NUL character ('\\x00' at character 47), which a record cannot hold",),
    ]


def test_a_row_needs_a_record_id_start_measure_and_whose_usage_it_is() -> None:
    outcomes, _ = read(template(), "id,acct,dst,start,dur\n,,,,\n")
    assert isinstance(outcomes[0], RowProblem)
    assert outcomes[0].problems == (
        'record_id (column "id"): empty',
        "start: empty",
        'duration (column "dur"): empty',
        'account (column "acct"): empty',
    )


# --- start times ------------------------------------------------------------------------


def toronto(text: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> int:
    """``text`` read as a Toronto local time."""
    return StartParser(fmt, ZoneInfo("America/Toronto")).parse(text)


def test_a_local_time_that_occurs_twice_is_its_first_occurrence() -> None:
    # 2024-11-03: Toronto's clocks go back from 02:00 EDT to 01:00 EST.
    assert toronto("2024-11-03 01:30:00") == ms(2024, 11, 3, 5, 30, 0)  # EDT, UTC-4
    assert toronto("2024-11-03 02:30:00") == ms(2024, 11, 3, 7, 30, 0)  # EST, UTC-5


def test_a_local_time_that_does_not_exist_takes_the_offset_before_the_change() -> None:
    # 2024-03-10: Toronto's clocks go forward from 02:00 EST to 03:00 EDT.
    assert toronto("2024-03-10 01:59:59") == ms(2024, 3, 10, 6, 59, 59)
    assert toronto("2024-03-10 02:30:00") == ms(2024, 3, 10, 7, 30, 0)  # as EST
    assert toronto("2024-03-10 03:30:00") == ms(2024, 3, 10, 7, 30, 0)  # EDT


def test_the_cached_hours_agree_with_the_exact_reading_through_a_half_hour_change() -> None:
    # Lord Howe Island's clocks go from 02:00 to 02:30 on 2024-10-06: the offset changes
    # within the hour 02:00-03:00, which is never cached.
    parser = StartParser("%Y-%m-%d %H:%M:%S", ZoneInfo("Australia/Lord_Howe"))
    for _ in range(2):  # the second round reads from the caches
        for minute in range(0, 24 * 60, 7):
            local = datetime(2024, 10, 6, minute // 60, minute % 60, 13)
            expected = int(local.replace(tzinfo=parser.zone).timestamp()) * 1000
            assert parser.parse(local.strftime("%Y-%m-%d %H:%M:%S")) == expected


@given(
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2037, 12, 31)),
    st.sampled_from(["America/Toronto", "Europe/London", "Asia/Kolkata", "UTC"]),
)
def test_a_strptime_time_is_exact_in_any_zone(local: datetime, zone: str) -> None:
    # A text carries no fold: a time in a DST gap or overlap reads as fold=0 (the offset
    # before the change), which hypothesis's fold=1 draws would otherwise contradict.
    local = local.replace(microsecond=0, fold=0)
    parser = StartParser("%d/%m/%Y %H:%M:%S", ZoneInfo(zone))
    text = local.strftime("%d/%m/%Y %H:%M:%S")
    expected = int(local.replace(tzinfo=ZoneInfo(zone)).timestamp()) * 1000
    assert parser.parse(text) == expected
    assert parser.parse(text) == expected  # again, from the caches


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("%Y-%m-%d %H:%M:%S", "2024-3-1 9:05:07", ms(2024, 3, 1, 14, 5, 7)),  # not zero padded
        ("%Y-%m-%d %H:%M", "2024-03-01 09:05", ms(2024, 3, 1, 14, 5, 0)),
        ("%d.%m.%Y %I:%M:%S %p", "01.03.2024 09:05:07 PM", ms(2024, 3, 2, 2, 5, 7)),
        ("%Y-%m-%dT%H:%M:%S%z", "2024-03-01T09:05:07+0100", ms(2024, 3, 1, 8, 5, 7)),
        ("iso8601", "2024-03-01T09:05:07Z", ms(2024, 3, 1, 9, 5, 7)),
        ("iso8601", "2024-03-01 09:05:07.250", ms(2024, 3, 1, 14, 5, 7) + 250),
        ("epoch", "1709287205", ms(2024, 3, 1, 10, 0, 5)),
        ("epoch", "1709287205.1259", ms(2024, 3, 1, 10, 0, 5) + 125),
        ("epoch_ms", "1709287205125", ms(2024, 3, 1, 10, 0, 5) + 125),
    ],
)
def test_start_formats(fmt: str, text: str, expected: int) -> None:
    assert toronto(text, fmt) == expected


@pytest.mark.parametrize(
    ("fmt", "text", "problem"),
    [
        ("%Y-%m-%d %H:%M:%S", "2024-02-30 10:00:00", "is not a time in the format"),
        ("%Y-%m-%d %H:%M:%S", "2024-03-01 10:60:00", "is not a time in the format"),
        ("%Y-%m-%d %H:%M:%S", "2024-03-01 10:00", "is not a time in the format"),
        ("iso8601", "1 March 2024", "is not an ISO 8601 time"),
        ("epoch", "-5", "is before 1970"),
        ("epoch", "soon", "is not a number of seconds since 1970"),
        ("epoch_ms", "1.5", "is not a number of milliseconds since 1970"),
        # Milliseconds in an "epoch" column: the year 58136, which no row can be dated by.
        ("epoch", "1772445600000", "is after the year 3000"),
        ("epoch", "1e1000000", "is not a number of seconds since 1970 in plain digits"),
        # Every format keeps a start from 1970 to 3000 (decision 0032): Toronto's
        # 9999-12-31 23:00 is in the year 10000 in UTC, which overflowed.
        ("%Y-%m-%d %H:%M:%S", "9999-12-31 23:00:00", "is after the year 3000"),
        ("%Y-%m-%d %H:%M:%S", "3000-01-01 00:00:00", "is after the year 3000"),
        ("%Y-%m-%d %H:%M:%S", "1969-12-31 18:59:59", "is before 1970"),
        ("%Y-%m-%d %H:%M:%S", "0001-01-01 00:00:00", "is before 1970"),
        ("%Y-%m-%dT%H:%M:%S%z", "9999-12-31T23:59:59-2359", "is after the year 3000"),
        ("iso8601", "9999-12-31T23:00:00", "is after the year 3000"),
        ("iso8601", "1969-12-31T23:59:59Z", "is before 1970"),
    ],
)
def test_bad_start_times(fmt: str, text: str, problem: str) -> None:
    parser = StartParser(fmt, ZoneInfo("America/Toronto"))
    if fmt == "%Y-%m-%d %H:%M:%S":
        parser.parse("2024-03-01 10:00:00")  # its hour cached: a bad tail still fails
    with pytest.raises(ValueError, match=problem):
        parser.parse(text)


def test_a_cached_hour_never_reads_a_start_after_the_year_3000() -> None:
    # In Kolkata (UTC+05:30) the local hour 3000-01-01 05:00 begins in 2999 and ends in
    # 3000: its first minutes are kept, and a later minute is refused after them.
    parser = StartParser("%Y-%m-%d %H:%M:%S", ZoneInfo("Asia/Kolkata"))
    assert parser.parse("3000-01-01 05:29:59") == ms(2999, 12, 31, 23, 59, 59)
    with pytest.raises(ValueError, match="is after the year 3000"):
        parser.parse("3000-01-01 05:30:00")
    assert toronto("1969-12-31 19:00:00") == 0  # the first start kept


# --- bad definitions ----------------------------------------------------------------------


BASE: dict[str, Any] = {
    "name": "carrier-x",
    "supplier": "carrier-x",
    "format": {"kind": "csv", "header": True},
    "columns": {"record_id": "id", "account": "acct", "start": "start", "duration": "dur"},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path replaced (None removes the key)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("definition", "field", "says"),
    [
        (changed("name", "carrier x"), "name", "1 to 64 of"),
        (changed("columns.accont", "acct"), "columns.accont", "unknown key"),
        (changed("columns.start", None), "columns.start", "is required"),
        (changed("columns.duration", 5.5), "columns.duration", "expected"),
        (changed("format.kind", "xlsx"), "format.kind", "invalid value"),
        (changed("format.delimiter", ";;"), "format.delimiter", "one character"),
        (changed("format.quote", ","), "format.quote", "the same character as the delimiter"),
        (changed("format.encoding", "klingon"), "format.encoding", "not a text encoding"),
        (changed("format.skip_lines", -1), "format.skip_lines", "0 to"),
        (changed("format.header", False), "columns.record_id", "the file has no header"),
        (
            changed("format", {"kind": "fixed", "fields": {"id": [0, 4]}}),
            "columns.account",
            "is not one of format.fields",
        ),
        (
            changed("format", {"kind": "fixed", "fields": {"id": [0, 0]}}),
            "format.fields.id",
            "width",
        ),
        (changed("start", {"time_zone": "Mars/Olympus"}), "start.time_zone", "not an IANA"),
        (changed("start", {"format": "%Y-%m-%d %Q"}), "start.format", "not a strptime format"),
        (changed("start", {"format": "%Y-%m-%d %H"}), "start.format", "no full date and time"),
        (changed("start", {"format": "yyyy-mm-dd"}), "start.format", "or a strptime format"),
        (changed("duration_unit", "minutes"), "duration_unit", "invalid enum value"),
        (changed("columns.account", None), "columns.account", "map account, member or caller"),
        (changed("columns.duration", None), "columns.duration", "a row without a service"),
        (changed("columns.quantity", "bytes"), "columns.quantity", "map columns.service"),
        (changed("service", "data"), "columns.quantity", "measured by it"),
        (changed("quantity", {"divide_by": 0}), "quantity.divide_by", "1 or more"),
        (changed("direction", {"map": {"I": "in"}}), "direction.map", "invalid enum value 'in'"),
        (
            changed("classify", [{"rate_type": "X", "when": {"called_prefix": ["1"]}}]),
            "classify[0].when.called_prefix",
            "no columns.called",
        ),
        (
            changed("classify", [{"rate_type": "", "when": {}}]),
            "classify[0].rate_type",
            "printable characters",
        ),
        (
            changed(
                "classify",
                [{"rate_type": "X", "when": {"cells": [{"column": "c", "regex": "(unclosed"}]}}],
            ),
            "classify[0].when.cells[0].regex",
            "not a regular expression",
        ),
        (
            changed("filters", [{"column": "d", "equals": "A", "regex": "B"}]),
            "filters[0]",
            "exactly one of equals and regex",
        ),
        (changed("filters", [{"column": -1, "equals": "A"}]), "filters[0].column", "0-based"),
        (changed("validate", {"required": ["called"]}), "validate.required[0]", "maps no"),
        (changed("validate", {"required": ["colour"]}), "validate.required[0]", "is not one of"),
        (changed("validate", {"max_duration": -1}), "validate.max_duration", "0 or more"),
    ],
)
def test_a_bad_definition_is_refused_naming_the_field(
    definition: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(OcsError) as caught:
        template_from_json(definition)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.field == field
    assert says in caught.value.message


def test_a_definition_writes_back_every_key_and_reads_back_the_same() -> None:
    t = template(
        columns=CLASSIFIED_COLUMNS,
        direction={"map": {"I": "inbound"}, "default": "inbound"},
        classify=[
            {"rate_type": "Canada", "when": {"cells": [{"column": "country", "equals": "CA"}]}}
        ],
        filters=[{"column": "disposition", "regex": "^ANS"}],
    )
    data = template_to_json(t)
    assert data["classify"] == [
        {
            "rate_type": "Canada",
            "when": {
                "direction": None,
                "called_prefix": None,
                "caller_prefix": None,
                "service": None,
                "cells": [{"column": "country", "equals": "CA", "regex": None, "negate": False}],
            },
        }
    ]
    assert template_from_json(data) == t


# --- rejected rows written back -----------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "text"),
    [
        (
            template(format={"kind": "csv", "header": True, "skip_lines": 1}),
            'export 1\nid,acct,dst,start,dur\nr1,"A, ""1""",1514,2024-03-01 10:00:00,x\n'
            'r2,A,"14\n16",2024-03-01,5\n',
        ),
        (
            template(
                format={"kind": "csv", "delimiter": "\t"},
                columns={"record_id": 0, "account": 1, "start": 2, "duration": 3},
            ),
            "r1\tA\t2024-03-01 10:00:00\t-4\nr2\t\t2024-03-01 10:00:00\t5\n",
        ),
        (
            template(format=FIXED, columns=FIXED_COLUMNS, start={"format": "%Y%m%d%H%M%S"}),
            "HDR\nr1    A1      15145550100 20240399100000   60\n",
        ),
    ],
)
def test_rejected_rows_written_back_read_back_the_same(t: Template, text: str) -> None:
    first, compiled = read(t, text)
    rejected = [o for o in first if isinstance(o, RowProblem)]
    assert rejected and len(rejected) == len(first)
    file = (compiled.render_header() or "") + "".join(compiled.render(o.cells) for o in rejected)
    again, _ = read(t, file)
    back = [o for o in again if isinstance(o, RowProblem)]
    assert [(o.line, o.problems, o.cells) for o in back] == [
        (o.line, o.problems, o.cells) for o in rejected
    ]
    assert len(again) == len(back)
