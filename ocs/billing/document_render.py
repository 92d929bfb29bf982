"""The invoice PDF drawn with ReportLab from the laid-out content (decision 0026).

The content (``ocs.billing.document_layout.layout``) is already text: this
module only places it on A4 pages with ReportLab's platypus (flowing tables
that break across pages, their header repeated). Every string is escaped
before it reaches a Paragraph, whose text is a small markup language, so a
customer's name or address can never change the document. The font is
DejaVu Sans, shipped with the package (templates/fonts): Latin, Greek and
Cyrillic text and the narrow no-break space of French amounts on every
machine. Characters it lacks (Chinese, Japanese, Korean) are drawn with the
machine's fonts that ``invoice_fallback_fonts`` lists (``document_fonts``);
one no font has is logged once per document. Rendering is CPU work that
blocks: async callers run it in a thread (``asyncio.to_thread``).
"""

import io
import logging
import threading
from typing import Any

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from ocs.billing.document_fonts import BOLD, FONT, Glyphs, register_fonts

log = logging.getLogger("ocs.billing.documents")

MUTED = colors.Color(0.35, 0.35, 0.35)
BANNER_COLOUR = colors.Color(0.8, 0.1, 0.1, alpha=0.22)
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 18 * mm, 16 * mm, 20 * mm
WIDTH = A4[0] - 2 * MARGIN_X


def _style(size: float, *, bold: bool = False, right: bool = False, muted: bool = False) -> Any:
    return ParagraphStyle(
        f"s{size}{bold}{right}{muted}",
        fontName=BOLD if bold else FONT,
        fontSize=size,
        leading=size * 1.3,
        alignment=TA_RIGHT if right else 0,
        textColor=MUTED if muted else colors.black,
    )


def _p(g: Glyphs, text: str, size: float = 8.5, **options: bool) -> Paragraph:
    """A paragraph of plain text: escaped, never read as markup; runs the font lacks in
    a fallback font."""
    style = _style(size, **options)
    return Paragraph(g.markup(text, style.fontName), style)


def _lines(g: Glyphs, lines: list[str], size: float = 8.5, **options: bool) -> Paragraph:
    """Several lines of plain text in one paragraph."""
    style = _style(size, **options)
    return Paragraph("<br/>".join(g.markup(line, style.fontName) for line in lines), style)


def _header(g: Glyphs, content: dict[str, Any]) -> list[Flowable]:
    """Issuer and title, then the customer block beside the invoice's facts."""
    issuer = content["issuer"]
    title = [_p(g, content["title"], 18, bold=True, right=True)]
    if content["banner"]:
        title.append(_p(g, content["banner"], 12, bold=True, right=True))
    top = Table(
        [[[_p(g, issuer["name"], 13, bold=True), _lines(g, issuer["lines"])], title]],
        colWidths=[WIDTH / 2, WIDTH / 2],
    )
    top.setStyle(
        TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (0, 0), 0)])
    )
    facts = Table(content["facts"], colWidths=[30 * mm, WIDTH / 2 - 30 * mm])
    style = _cell_style(["l", "r"], header=False, total=False)
    style.add("TEXTCOLOR", (0, 0), (0, -1), MUTED)
    style.add("FONTNAME", (1, 0), (1, -1), BOLD)
    facts.setStyle(style)
    customer = [
        _p(g, content["labels"]["bill_to"], 7.5, muted=True),
        _lines(g, content["customer"], 9),
    ]
    middle = Table([[customer, facts]], colWidths=[WIDTH / 2, WIDTH / 2])
    middle.setStyle(
        TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (0, 0), 0)])
    )
    return [top, Spacer(1, 8 * mm), middle, Spacer(1, 4 * mm)]


def _cell_style(align: list[str], *, header: bool = True, total: bool = True) -> TableStyle:
    """Plain-string cells (much cheaper to lay out than paragraphs): the font, the figures
    right-aligned, a muted header row and a bold total row, ruled."""
    commands: list[tuple[Any, ...]] = [
        ("FONTNAME", (0, 0), (-1, -1), FONT),
        ("FONTSIZE", (0, 0), (-1, -1), 8.5),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
    ]
    commands += [("ALIGN", (i, 0), (i, -1), "RIGHT") for i, a in enumerate(align) if a == "r"]
    if header:
        commands += [
            ("FONTSIZE", (0, 0), (-1, 0), 7.5),
            ("TEXTCOLOR", (0, 0), (-1, 0), MUTED),
            ("LINEBELOW", (0, 0), (-1, 0), 0.4, MUTED),
        ]
    if total:
        commands += [
            ("FONTNAME", (0, -1), (-1, -1), BOLD),
            ("LINEABOVE", (0, -1), (-1, -1), 0.4, MUTED),
        ]
    return TableStyle(commands)


def _section(g: Glyphs, section: dict[str, Any]) -> list[Flowable]:
    """One titled table: header row repeated on each page, a total row in bold. The first
    column (descriptions, which may be long) wraps; the figures are plain strings."""
    align = section["align"]
    rows = [[_p(g, row[0]), *row[1:]] for row in section["rows"]]
    others = len(align) - 1
    # The first column takes what the others leave: 24 mm for each figure, twice that
    # for a wide one ("w": a charge's period, a date range).
    widths = [48 * mm if a == "w" else 24 * mm for a in align[1:]]
    table = Table(
        [section["columns"], *rows, section["total"]],
        colWidths=[WIDTH - sum(widths), *widths] if others else [WIDTH],
        repeatRows=1,
    )
    table.setStyle(_cell_style(align))
    title = _p(g, section["title"], 10.5, bold=True)
    return [Spacer(1, 4 * mm), title, Spacer(1, 1 * mm), table]


def _figures(pairs: list[list[str]], last: list[str], size: float) -> Table:
    """A two-column block of labelled figures ending in a bold, ruled line."""
    table = Table([*pairs, last], colWidths=[45 * mm, 35 * mm], hAlign="RIGHT")
    style = _cell_style(["l", "r"], header=False)
    style.add("FONTSIZE", (0, 0), (-1, -2), 9)
    style.add("FONTSIZE", (0, -1), (-1, -1), size)
    style.add("LINEABOVE", (0, -1), (-1, -1), 0.6, colors.black)
    table.setStyle(style)
    return table


def _closing(g: Glyphs, content: dict[str, Any]) -> list[Flowable]:
    """Totals, the balance-forward statement with the amount due, and the message."""
    found: list[Flowable] = [Spacer(1, 5 * mm), _figures(content["totals"], content["total"], 10)]
    statement = [
        _p(g, content["labels"]["statement"], 10.5, bold=True),
        _figures(content["statement"], content["due"], 11),
    ]
    found += [Spacer(1, 6 * mm), KeepTogether(statement)]
    if content["message"]:
        box = Table([[_lines(g, content["message"].splitlines(), 9)]], colWidths=[WIDTH])
        box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.4, MUTED)]))
        found += [Spacer(1, 8 * mm), box]
    return found


def _page_decoration(content: dict[str, Any]) -> Any:
    """What each page carries besides its flow: the banner across it, the footer."""
    banner = content["banner"]
    footer = f"{content['title']} {content['number']}"

    def decorate(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        if banner:
            canvas.setFont(BOLD, 110)
            canvas.setFillColor(BANNER_COLOUR)
            canvas.translate(A4[0] / 2, A4[1] / 2)
            canvas.rotate(35)
            canvas.drawCentredString(0, -35, banner)
            canvas.rotate(-35)
            canvas.translate(-A4[0] / 2, -A4[1] / 2)
        canvas.setFont(FONT, 7.5)
        canvas.setFillColor(MUTED)
        canvas.drawString(MARGIN_X, MARGIN_BOTTOM / 2, footer)
        canvas.drawRightString(A4[0] - MARGIN_X, MARGIN_BOTTOM / 2, f"{doc.page}")
        canvas.restoreState()

    return decorate


# reportlab is not thread-safe: it fills tables on first use (its named colours: a
# second thread saw the table empty and failed on "black"), and documents render in
# threads (``asyncio.to_thread``). One render at a time costs nothing: rendering is
# Python under the GIL either way.
_RENDERING = threading.Lock()


def render_pdf(
    content: dict[str, Any], fallback_fonts: tuple[str, ...] = (), invoice_id: int | None = None
) -> bytes:
    """The PDF of laid-out content (``ocs.billing.document_layout.layout``), characters
    DejaVu Sans lacks drawn with the first of ``fallback_fonts`` that has them; one at a
    time in the process (``_RENDERING``). Characters no font has are logged once, with
    ``invoice_id``."""
    with _RENDERING:
        g = register_fonts(fallback_fonts)
        pdf = _render_pdf(g, content)
    if g.missing:
        # The scripts, not the characters: those are the customer's name or address.
        log.warning(
            "invoice characters drawn blank: no font has them",
            extra={
                "invoice_id": invoice_id,
                "characters": len(g.missing),
                "scripts": ",".join(g.scripts()),
                "fonts": len(g.fallbacks),
            },
        )
    return pdf


def _render_pdf(g: Glyphs, content: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=MARGIN_X,
        rightMargin=MARGIN_X,
        topMargin=MARGIN_TOP,
        bottomMargin=MARGIN_BOTTOM,
        title=f"{content['title']} {content['number']}",
        author=content["issuer"]["name"],
        lang=content["lang"],
        # The same content gives the same bytes: no creation time, no random id.
        invariant=True,
    )
    story = _header(g, content)
    for section in content["sections"]:
        story += _section(g, section)
    story += _closing(g, content)
    decorate = _page_decoration(content)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate, canvasmaker=g.canvas_maker())
    return out.getvalue()
