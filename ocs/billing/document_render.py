"""The invoice PDF drawn with ReportLab from the laid-out content (decision 0026).

The content (``ocs.billing.document_layout.layout``) is already text: this
module only places it on A4 pages with ReportLab's platypus (flowing tables
that break across pages, their header repeated). Every string is escaped
before it reaches a Paragraph, whose text is a small markup language, so a
customer's name or address can never change the document. The font is
DejaVu Sans, shipped with the package (templates/fonts): every locale's
characters (the narrow no-break space of French amounts, Greek or Cyrillic
names) on every machine, whatever fonts it has. Rendering is CPU work that
blocks: async callers run it in a thread (``asyncio.to_thread``).
"""

import io
import threading
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
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

FONTS_DIR = Path(__file__).with_name("templates") / "fonts"
FONT, BOLD = "InvoiceSans", "InvoiceSans-Bold"
MUTED = colors.Color(0.35, 0.35, 0.35)
BANNER_COLOUR = colors.Color(0.8, 0.1, 0.1, alpha=0.22)
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 18 * mm, 16 * mm, 20 * mm
WIDTH = A4[0] - 2 * MARGIN_X

_registered = False


def _register_fonts() -> None:
    """Register the bundled fonts with ReportLab, once per process."""
    global _registered
    if not _registered:
        pdfmetrics.registerFont(TTFont(FONT, str(FONTS_DIR / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont(BOLD, str(FONTS_DIR / "DejaVuSans-Bold.ttf")))
        _registered = True


def _style(size: float, *, bold: bool = False, right: bool = False, muted: bool = False) -> Any:
    return ParagraphStyle(
        f"s{size}{bold}{right}{muted}",
        fontName=BOLD if bold else FONT,
        fontSize=size,
        leading=size * 1.3,
        alignment=TA_RIGHT if right else 0,
        textColor=MUTED if muted else colors.black,
    )


def _p(text: str, size: float = 8.5, **options: bool) -> Paragraph:
    """A paragraph of plain text: escaped, never read as markup."""
    return Paragraph(escape(text), _style(size, **options))


def _lines(lines: list[str], size: float = 8.5, **options: bool) -> Paragraph:
    """Several lines of plain text in one paragraph."""
    return Paragraph("<br/>".join(escape(line) for line in lines), _style(size, **options))


def _header(content: dict[str, Any]) -> list[Flowable]:
    """Issuer and title, then the customer block beside the invoice's facts."""
    issuer = content["issuer"]
    title = [_p(content["title"], 18, bold=True, right=True)]
    if content["banner"]:
        title.append(_p(content["banner"], 12, bold=True, right=True))
    top = Table(
        [[[_p(issuer["name"], 13, bold=True), _lines(issuer["lines"])], title]],
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
    customer = [_p(content["labels"]["bill_to"], 7.5, muted=True), _lines(content["customer"], 9)]
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


def _section(section: dict[str, Any]) -> list[Flowable]:
    """One titled table: header row repeated on each page, a total row in bold. The first
    column (descriptions, which may be long) wraps; the figures are plain strings."""
    align = section["align"]
    rows = [[_p(row[0]), *row[1:]] for row in section["rows"]]
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
    return [Spacer(1, 4 * mm), _p(section["title"], 10.5, bold=True), Spacer(1, 1 * mm), table]


def _figures(pairs: list[list[str]], last: list[str], size: float) -> Table:
    """A two-column block of labelled figures ending in a bold, ruled line."""
    table = Table([*pairs, last], colWidths=[45 * mm, 35 * mm], hAlign="RIGHT")
    style = _cell_style(["l", "r"], header=False)
    style.add("FONTSIZE", (0, 0), (-1, -2), 9)
    style.add("FONTSIZE", (0, -1), (-1, -1), size)
    style.add("LINEABOVE", (0, -1), (-1, -1), 0.6, colors.black)
    table.setStyle(style)
    return table


def _closing(content: dict[str, Any]) -> list[Flowable]:
    """Totals, the balance-forward statement with the amount due, and the message."""
    found: list[Flowable] = [Spacer(1, 5 * mm), _figures(content["totals"], content["total"], 10)]
    statement = [
        _p(content["labels"]["statement"], 10.5, bold=True),
        _figures(content["statement"], content["due"], 11),
    ]
    found += [Spacer(1, 6 * mm), KeepTogether(statement)]
    if content["message"]:
        box = Table([[_lines(content["message"].splitlines(), 9)]], colWidths=[WIDTH])
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


def render_pdf(content: dict[str, Any]) -> bytes:
    """The PDF of laid-out content (``ocs.billing.document_layout.layout``); one at a
    time in the process (``_RENDERING``)."""
    with _RENDERING:
        return _render_pdf(content)


def _render_pdf(content: dict[str, Any]) -> bytes:
    _register_fonts()
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
    story = _header(content)
    for section in content["sections"]:
        story += _section(section)
    story += _closing(content)
    decorate = _page_decoration(content)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return out.getvalue()
