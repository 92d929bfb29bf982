"""deploy/prometheus/alerts.yml: promtool checks the rules and runs their unit tests
(deploy/prometheus/alerts.test.yml), in which every alert fires in one case and stays
quiet in another.

promtool comes with Debian's ``prometheus`` package (CI installs it); without it these
tests fail, they are not skipped.
"""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML (from schemathesis), no stubs

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    """Run promtool (which must be installed: apt-get install prometheus)."""
    found = shutil.which("promtool")
    assert found is not None, "promtool is missing: apt-get install prometheus"
    return subprocess.run(
        [found, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = [r["alert"] for g in load(RULES)["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {r["alert"] for g in load(RULES)["groups"] for r in g["rules"]}
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in load(RULE_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fires == alerts
    assert quiet == alerts


def test_every_alert_says_what_it_means_and_how_bad() -> None:
    for group in load(RULES)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_a_wrong_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    # The unit tests bite: the ledger lag alert at 10 minutes instead of 1 misses its case.
    rules = RULES.read_text()
    assert "max(ocs_ledger_oldest_pending_age_seconds) > 60" in rules
    (tmp_path / RULES.name).write_text(
        rules.replace(
            "max(ocs_ledger_oldest_pending_age_seconds) > 60",
            "max(ocs_ledger_oldest_pending_age_seconds) > 600",
        )
    )
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "OcsLedgerLagging" in tested.stdout + tested.stderr
