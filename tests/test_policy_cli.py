"""`ocs counters reset` and `ocs pins generate` from the command line, against real stores."""

import csv
import json
import stat
from pathlib import Path

from ocs.balances.accounts import AccountSpec
from ocs.charging.values import AuthorizeRequest
from ocs.rating.counter_rules import CounterDef
from ocs.services import Services
from tests.conftest import add_plan, eventually
from tests.helpers import ocs_cli


async def test_counters_reset_starts_a_cycle_carrying_unused_seconds(
    services: Services, tmp_path: Path
) -> None:
    await add_plan(services, max_lines=2)
    await services.counters.create(
        CounterDef(id="uk-600", plan_id="retail", seconds=600, zones=frozenset({"UK Fixed"}),
                   carryover=True)
    )  # fmt: skip

    async def loaded() -> bool:
        await services.catalog.reload()
        return bool(services.catalog.snapshot.counters_for("retail"))

    await eventually(loaded, what="the counter in the catalog")
    await services.accounts.create(AccountSpec("alice", "retail", opening_balance=1_000_000))
    grant = await services.calls.authorize(AuthorizeRequest("alice", "442071234567"))
    assert grant.counter_seconds == 600
    await services.calls.stop(grant.call_id, 420)
    assert (await services.counters.state("alice"))["uk-600"]["used"] == 420

    code, out, err = await ocs_cli(
        services.settings, tmp_path, "counters", "reset", "--plan", "retail"
    )
    assert code == 0, err
    assert '"accounts": 1' in out
    assert list(json.loads(out)["cycles"]) == ["retail"]  # the plan's cycle it opened
    # 180 s unused carry over onto the next cycle's 600.
    assert await services.counters.state("alice") == {
        "uk-600": {"limit": 780, "used": 0, "held": 0}
    }


async def test_pins_generate_writes_a_private_csv_once(services: Services, tmp_path: Path) -> None:
    await add_plan(services)
    out_file = tmp_path / "batch.csv"
    code, out, err = await ocs_cli(
        services.settings, tmp_path,
        "pins", "generate", "--batch", "b1", "--plan", "retail", "--count", "50", "--length", "10",
        "--value", "2.50", "--expire-days", "30", "--out", str(out_file),
    )  # fmt: skip
    assert code == 0, err
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    rows = list(csv.DictReader(out_file.read_text().splitlines()))
    assert len(rows) == 50 and len({r["pin"] for r in rows}) == 50
    assert all(len(r["pin"]) == 10 and r["value"] == "2.500000" for r in rows)
    card = rows[0]
    assert await services.cards.account_for_pin(card["pin"]) == card["account"]
    state = await services.accounts.show(card["account"])
    assert state.balance == 2_500_000 and state.expire_days == 30 and state.expires_at == 0
    # The PINs are in the file and nowhere in the output or the log.
    assert card["pin"] not in out + err

    again, _, err = await ocs_cli(
        services.settings, tmp_path,
        "pins", "generate", "--batch", "b2", "--plan", "retail", "--count", "5", "--value", "1",
        "--out", str(out_file),
    )  # fmt: skip
    assert again == 2 and "exists" in err


async def test_pins_generate_makes_no_batch_when_its_file_cannot_be_written(
    services: Services, tmp_path: Path
) -> None:
    # The batch was committed before the CSV was written: a path that could not take it
    # left valued cards whose PINs nobody had, blamed "a backend", and a retry was told
    # the batch exists.
    await add_plan(services)
    nowhere = tmp_path / "no-such-dir" / "batch.csv"
    generate = ("pins", "generate", "--batch", "lost", "--count", "20", "--value", "5.00")
    code, _, err = await ocs_cli(
        services.settings, tmp_path, *generate, "--plan", "retail", "--out", str(nowhere)
    )
    assert code == 2, err
    assert f"--out: cannot create {nowhere}" in err and "backend" not in err, err
    async with services.pool.acquire() as conn:
        made = await conn.fetchval("SELECT count(*) FROM pins WHERE batch_id = 'lost'")
    assert made == 0

    # A batch the service refuses (no such plan) leaves no file behind either.
    good = tmp_path / "batch.csv"
    code, _, err = await ocs_cli(
        services.settings, tmp_path, *generate, "--plan", "nope", "--out", str(good)
    )
    assert code == 1 and not good.exists(), err

    # The same batch id, with a path that works, is made then.
    code, out, err = await ocs_cli(
        services.settings, tmp_path, *generate, "--plan", "retail", "--out", str(good)
    )
    assert (code, '"cards": 20' in out) == (0, True), err
    assert stat.S_IMODE(good.stat().st_mode) == 0o600
    rows = list(csv.DictReader(good.read_text().splitlines()))
    assert len(rows) == 20
    assert await services.cards.account_for_pin(rows[0]["pin"]) == rows[0]["account"]
