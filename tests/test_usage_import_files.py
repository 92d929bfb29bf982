"""The files ``POST /v1/usage/imports`` keeps: a refused upload leaves nothing on disk.

The body was written under ``usage_imports_dir`` before anything was checked, and a
refused one (an unknown template, text not in the template's encoding, an empty or an
oversized body, an import that never began) stayed there for ever: retried uploads
filled the data volume, which holds the pepper, the invoice PDFs and often the stores.
An import that began keeps its file (its row names it; its rejects are served from it).
"""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ocs.http.usage_import_handlers import MAX_FILE, imports_dir
from ocs.mediation import importer as importer_module
from tests.conftest import RunningApp
from tests.usage_import_helpers import HEADER, new_account, setup_mediation, text_of

ROW = "a{n},acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"


def kept(app: RunningApp) -> list[Path]:
    """Every file and folder under the app's usage imports directory."""
    root = imports_dir(app.services.settings)
    return sorted(root.rglob("*")) if root.exists() else []


async def refused(app: RunningApp, query: str, body: object) -> tuple[int, dict]:
    """POST ``body`` to the imports endpoint: (status, JSON error)."""
    response = await app.client.post(
        f"/v1/usage/imports?{query}", data=body, headers={"Content-Type": "text/csv"}
    )
    return response.status, await response.json()


async def chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A chunked body of ``total`` bytes: CSV rows, with no Content-Length to check."""
    yield HEADER.encode()
    sent = len(HEADER)
    block = (ROW.format(n=0) * (size // len(ROW))).encode()
    while sent < total:
        yield block
        sent += len(block)


REFUSALS = {
    "an unknown template": (
        "template=nope",
        lambda: (HEADER + ROW.format(n=1)).encode() * 1000,
        400,
        "no usage template 'nope'",
    ),
    "a body not in the template's encoding": (
        "template=carrier-x",
        lambda: HEADER.encode() + b"\xff\xfe\n",
        400,
        "body: is not text in the template's encoding, utf-8-sig: byte 50 of the body",
    ),
    "an empty body": ("template=carrier-x", lambda: b"", 400, "body: is required"),
    "a chunked body over 64 MiB": (
        "template=carrier-x",
        lambda: chunks(MAX_FILE + (1 << 20)),
        413,
        "larger than 64 MiB: import it with `ocs usage import`",
    ),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_a_refused_upload_leaves_no_file_in_the_imports_directory(
    app: RunningApp, refusal: str
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    query, body, status, message = REFUSALS[refusal]
    answer = await refused(app, query, body())
    assert answer[0] == status, answer
    assert message in answer[1]["error"]["message"]
    assert kept(app) == []
    # Nothing was imported either.
    assert await app.services.pool.fetchval("SELECT count(*) FROM usage_imports") == 0


async def test_an_import_that_never_began_leaves_no_file_one_that_failed_keeps_its_own(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    # A template that fails to compile fails the import before its row is made.
    with monkeypatch.context() as patched:
        patched.setattr(importer_module, "CompiledTemplate", _uncompilable)
        response = await app.client.post(
            "/v1/usage/imports?template=carrier-x", data=(HEADER + ROW.format(n=1)).encode()
        )
        assert response.status == 500
    assert kept(app) == []

    # A quote never closed fails the import after its row was made: the import's file
    # stays, named by its row, as the file of any import that began.
    body = HEADER + ROW.format(n=1) + 'a2,acc1,442071234567,2026-03-03 09:01:00,61,O,,"ACME\n'
    status, error = await refused(app, "template=carrier-x&file_name=stray.csv", body.encode())
    assert (status, error["error"]["field"]) == (400, "file"), error
    stored = await app.services.pool.fetchrow("SELECT state, files FROM usage_imports")
    assert stored["state"] == "failed"
    (file,) = stored["files"]
    assert [p for p in kept(app) if p.is_file()] == [Path(file)]
    assert text_of(file) == body


def _uncompilable(template: object) -> object:
    """A template compilation that fails (the test's cue)."""
    raise ValueError("the template does not compile (the test's cue)")
