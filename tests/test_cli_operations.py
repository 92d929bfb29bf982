"""Operators' commands as they are run by hand: `ocs db migrate` says what it applied,
an id past PostgreSQL's BIGINT is a usage error naming its argument (never a traceback),
and ocs's own build and benchmark variables do not stop every command."""

from typing import Any

import pytest

BIGINT_PAST = "9223372036854775808"  # BIGINT's maximum + 1
HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "variables",
    [
        {"OCS_MYPYC": "1"},
        {"OCS_BENCH_DATABASE_URL": "postgresql://x/y", "OCS_BENCH_REDIS_URL": "redis://x/9"},
    ],
)
def test_the_build_switch_and_benchmark_variables_do_not_stop_a_command(
    ocs: Any, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code, out, err = ocs("plans", "list")
    assert (code, out) == (0, {"plans": []}), err
    assert "configuration error" not in err
