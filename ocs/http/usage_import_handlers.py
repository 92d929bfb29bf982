"""Usage imports in the admin API: send a usage file, read an import and its rejects.

``POST /v1/usage/imports?template=T[&mode=all_or_nothing][&version=V][&file_name=N]``
takes the file as the body, keeps it under ``usage_imports_dir`` and imports it as
``ocs usage import`` does (``ocs.mediation.importer``), answering the summary.
``GET /v1/usage/imports/{import_id}`` reads an import (its progress while it runs,
saved every few seconds; one whose process ended is answered, and stored, as
``failed``);
``.../rejects`` answers its rejects file, to fix and send again. Operators import;
viewers read.
"""

import asyncio
import codecs
import logging
import re
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from aiohttp import web

from ocs.config import Settings
from ocs.errors import OcsError, Reason, body_too_large, invalid
from ocs.http.context import services_of
from ocs.http.endpoint import Answer, Endpoint, ObjectId, Params, Role
from ocs.http.path_ids import path_id
from ocs.mediation.importer import ImportRequest, UsageImporter
from ocs.mediation.rejects import written_encoding
from ocs.mediation.summary import ImportSummary
from ocs.mediation.supplier_lock import settle_interrupted, to_the_end

# The largest file the API takes; larger files go through ``ocs usage import``.
MAX_FILE = 64 * 1024 * 1024
# The body is written to its file in batches of about this many bytes, in a thread.
WRITE_BATCH = 1 << 20
log = logging.getLogger("ocs.http")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def imports_dir(settings: Settings) -> Path:
    """Where files sent to the API and their rejects are kept."""
    if settings.usage_imports_dir:
        return Path(settings.usage_imports_dir)
    return Path(settings.data_dir) / "usage-imports"


class ImportParams(Params):
    """A usage import's settings, in the query string (the body is the file)."""

    template: ObjectId
    mode: Literal["good_rows", "all_or_nothing"] = "good_rows"
    version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None
    file_name: Annotated[
        str,
        # Not dots alone: "." and ".." name folders, not a file to keep.
        msgspec.Meta(
            pattern=r"^(?=[A-Za-z0-9._-]*[A-Za-z0-9_-])[A-Za-z0-9._-]{1,100}(?!\n)$",
            description="kept as",
        ),
    ] = "usage.csv"


class ProblemView(Answer):
    """A rejected row: its line and every problem on it."""

    file: str
    line: int
    problems: list[str]


class ImportView(Answer):
    """A usage import: its state, counts, amounts charged by currency and problems."""

    id: int
    template: str
    template_version: str
    supplier: str
    mode: str
    state: str
    rows_read: int
    rows_filtered: int
    rows_charged: int
    rows_repeated: int
    rows_rejected: int
    # Charged records that started before their plan's prices last changed (its deck,
    # tariffs or rates by rate type): rated at today's prices, not their time's.
    rows_priced_after_start: int
    amounts: dict[str, str]
    has_rejects: bool
    problems: list[ProblemView] = msgspec.field(default_factory=list)
    error: str | None = None


def import_view(summary: ImportSummary) -> ImportView:
    """The API's view of an import summary (amounts as decimal strings)."""
    from ocs.money import format_amount

    return ImportView(
        id=summary.id,
        template=summary.template,
        template_version=summary.template_version,
        supplier=summary.supplier,
        mode=summary.mode,
        state=summary.state,
        rows_read=summary.rows_read,
        rows_filtered=summary.rows_filtered,
        rows_charged=summary.rows_charged,
        rows_repeated=summary.rows_repeated,
        rows_rejected=summary.rows_rejected,
        rows_priced_after_start=summary.rows_priced_after_start,
        amounts={c: format_amount(a) for c, a in sorted(summary.amounts.items())},
        has_rejects=summary.rejects_path is not None,
        problems=[
            ProblemView(file=p.file, line=p.line, problems=list(p.problems))
            for p in summary.problems
        ],
        error=summary.error,
    )


def _importer(request: web.Request) -> UsageImporter:
    services = services_of(request)
    return UsageImporter(
        services.pool,
        services.store,
        services.catalog,
        database_url=services.database_url,
        result_ttl=services.settings.stop_dedupe_ttl,
        # A serving process answers live calls between chunks: small ones (~2 ms each).
        chunk_rows=200,
        supplier_wait=services.settings.usage_import_supplier_wait,
        ledger_wait=services.settings.usage_import_ledger_wait,
        save_every=services.settings.usage_import_save_every,
    )


async def _save_body(request: web.Request, folder: Path, name: str) -> Path:
    """Stream the body to a file of its own folder; 413 past ``MAX_FILE``.

    The writes run in a worker thread (a slow disk must not stall the event loop the
    RADIUS and HTTP calls share), a few blocks at a time. The caller removes the folder
    when anything here fails."""
    if request.content_length is not None and request.content_length > MAX_FILE:
        raise body_too_large("larger than 64 MiB: import it with `ocs usage import`")
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    path = folder / name
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    out = await asyncio.to_thread(path.open, "wb")
    try:
        async for block in request.content.iter_chunked(1 << 16):
            size += len(block)
            if size > MAX_FILE:
                raise body_too_large("larger than 64 MiB: import it with `ocs usage import`")
            pending.append(block)
            pending_size += len(block)
            if pending_size >= WRITE_BATCH:
                await asyncio.to_thread(out.writelines, pending)
                pending, pending_size = [], 0
        await asyncio.to_thread(out.writelines, pending)
    finally:
        await asyncio.to_thread(out.close)
    if size == 0:
        raise invalid("body", "is required: the usage file")
    return path


async def _imported(request: web.Request, path: Path) -> bool:
    """Whether an import's row names the file (so its folder is the import's to keep)."""
    return bool(
        await services_of(request).pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM usage_imports WHERE files = $1)", [str(path)]
        )
    )


async def create_import(request: web.Request, params: ImportParams) -> ImportView:
    """POST /v1/usage/imports: import the body through a usage template.

    The body is text in the template's encoding (``format.encoding``), checked whole
    before any row is imported; the import then reads the same version of the template.
    The template is looked up before the body is kept, and a body refused (too large,
    empty, not text in the encoding) or an import that never began (its supplier busy,
    the ledger writer behind) leaves no folder behind: retried uploads must not fill the
    data volume. An import that began keeps its folder (its row names the file, and its
    rejects are served from there).
    """
    services = services_of(request)
    importer = _importer(request)
    label, template = await importer.template_of(params.template, params.version)
    stored = label.rpartition("@")[2]
    version = int(stored) if stored.isdigit() else params.version
    encoding = template.format.encoding
    folder = imports_dir(services.settings) / uuid.uuid4().hex
    path = folder / _SAFE_NAME.sub("_", params.file_name)
    try:
        await _save_body(request, folder, path.name)
        problem = await asyncio.to_thread(_not_text, path, encoding)
        if problem is not None:
            raise invalid("body", f"is not text in the template's encoding, {encoding}: {problem}")
        summary = await importer.run(
            ImportRequest(
                template=params.template,
                files=(str(path),),
                mode=params.mode,
                version=version,
                rejects_dir=str(folder),
            )
        )
    except BaseException:
        await to_the_end(_drop_unless_imported(request, folder, path))
        raise
    return import_view(summary)


async def _drop_unless_imported(request: web.Request, folder: Path, path: Path) -> None:
    """Remove a refused upload's folder, unless an import's row names its file (kept,
    with a warning, when PostgreSQL cannot say: its import's rejects may be there)."""
    try:
        if await _imported(request, path):
            return
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        log.warning("a refused usage upload's folder is kept", extra={"folder": str(folder)})
        return
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


def _not_text(path: Path, encoding: str) -> str | None:
    """Why the file is not text in ``encoding`` (None: it is)."""
    try:
        path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        return f"byte {exc.start} of the body"
    return None


def rejects_charset(encoding: str) -> str:
    """The HTTP charset of a rejects file written in a template's ``encoding``."""
    name = codecs.lookup(written_encoding(encoding)).name
    # Python's names of the Windows and ISO 8859 code pages are not the charsets' names.
    if re.fullmatch(r"cp125[0-8]", name):
        return f"windows-{name[2:]}"
    if name.startswith("iso8859-"):
        return f"iso-8859-{name[8:]}"
    return name


def _rejects_of(path_text: str | None) -> bytes | None:
    if path_text is None or not Path(path_text).is_file():
        return None
    return Path(path_text).read_bytes()


def import_id_of(request: web.Request) -> int:
    """The import id from the path: a positive whole number, else 400 naming it."""
    return path_id(request, "import_id")


async def _stored(request: web.Request) -> Any:
    pool = services_of(request).pool
    import_id = import_id_of(request)
    row = await pool.fetchrow("SELECT * FROM usage_imports WHERE id = $1", import_id)
    if row is None:
        raise OcsError(Reason.NOT_FOUND, "no such usage import", field="import_id")
    if row["state"] == "running":
        # Running, or left so by a process that ended: then its supplier's lock is free.
        await settle_interrupted(pool, row["supplier"])
        row = await pool.fetchrow("SELECT * FROM usage_imports WHERE id = $1", import_id)
    return row


async def show_import(request: web.Request, params: None) -> ImportView:
    """GET /v1/usage/imports/{import_id}: an import's state and counts."""
    row = await _stored(request)
    return import_view(
        ImportSummary(
            id=row["id"],
            template=row["template"],
            template_version=row["template_version"],
            supplier=row["supplier"],
            mode=row["mode"],
            state=row["state"],
            rows_read=row["rows_read"],
            rows_filtered=row["rows_filtered"],
            rows_charged=row["rows_charged"],
            rows_repeated=row["rows_repeated"],
            rows_rejected=row["rows_rejected"],
            rows_priced_after_start=row["rows_priced_after_start"],
            amounts=msgspec.json.decode(row["amounts"]),
            rejects_path=row["rejects_path"],
            report_path=row["report_path"],
            error=row["error"],
        )
    )


async def import_rejects(request: web.Request, params: None) -> web.Response:
    """GET /v1/usage/imports/{import_id}/rejects: the rejected rows, as the file had them
    (in its template's encoding, named by the answer's charset)."""
    row = await _stored(request)
    data = await asyncio.to_thread(_rejects_of, row["rejects_path"])
    if data is None:
        raise OcsError(Reason.NOT_FOUND, "the import rejected no row", field="import_id")
    path = Path(row["rejects_path"])
    charset = "utf-8"
    name, _, version = row["template_version"].rpartition("@")
    try:
        _, template = await _importer(request).template_of(
            name, int(version) if version.isdigit() else None
        )
        charset = rejects_charset(template.format.encoding)
    except OcsError:
        pass  # a template since gone: its files were most likely UTF-8
    return web.Response(
        body=data,
        content_type="text/csv",
        charset=charset,
        headers={"Content-Disposition": f'attachment; filename="{path.name}"'},
    )


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/usage/imports",
        Role.OPERATOR,
        "Import a usage file through a usage template: rate and debit each record once",
        create_import,
        ImportParams,
        ImportView,
        body="csv",
        # 503: the supplier's running import did not end within its wait, or the ledger
        # writer has not stored the entries made before the import.
        errors=(400, 404, 503),
        description="Each record is classified, overridden by the supplier's table, rated"
        " at its own start time and debited once per (supplier, record id): sending the"
        " same file again moves nothing. Bad rows are listed with their line and every"
        " problem; mode all_or_nothing applies nothing when any row is bad.",
    ),
    Endpoint(
        "GET",
        "/v1/usage/imports/{import_id}",
        Role.VIEWER,
        "A usage import: its state, counts and amounts",
        show_import,
        None,
        ImportView,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/usage/imports/{import_id}/rejects",
        Role.VIEWER,
        "A usage import's rejected rows, in the file's own format, to fix and send again",
        import_rejects,
        None,
        None,
        errors=(404,),
        answer_description="the rejected rows (text/csv)",
    ),
)
