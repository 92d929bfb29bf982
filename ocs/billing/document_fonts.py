"""The fonts of invoice PDFs: DejaVu Sans, and system fonts for what it lacks (decision 0026).

DejaVu Sans (shipped in ``templates/fonts``) draws Latin, Greek and Cyrillic
text and the narrow no-break space of French amounts, but no Chinese, Japanese
or Korean: a customer named 山田太郎, a ja_JP date (2026年5月1日) or the
full-width yen sign would be blank. Too large to ship (megabytes each), CJK
fonts are taken from the machine: ``invoice_fallback_fonts`` lists TrueType
files (by default where Debian, Ubuntu and Fedora install Droid Sans Fallback,
WenQuanYi, IPA Gothic and Nanum), and each run of characters DejaVu lacks is
drawn with the first of them whose character map (cmap) has them all.

A listed file that is not there is skipped. The default list names several and a
machine has one or none, so its absent files are skipped in silence; a list the
operator set names files meant to be there, so ``check_fallback_fonts`` says at the
billing worker's start, one warning line per absent file, which ones are not. A file
that is there but unusable (not a font, PostScript outlines as in Noto Sans CJK,
which ReportLab cannot embed) is logged once per process, when first used. A
character no font has is counted, and the document's renderer logs it once per
document (``Glyphs.missing``).
"""

import functools
import logging
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from ocs.config import INVOICE_FALLBACK_FONTS

log = logging.getLogger("ocs.billing.documents")

FONTS_DIR = Path(__file__).with_name("templates") / "fonts"
FONT, BOLD = "InvoiceSans", "InvoiceSans-Bold"


@dataclass(frozen=True, slots=True)
class Face:
    """A registered ReportLab font and the code points it has a glyph for."""

    name: str
    chars: frozenset[int]


# ReportLab's own ways to draw a string, by the share of its width left of x.
_PLAIN = {0.0: Canvas.drawString, 0.5: Canvas.drawCentredString, 1.0: Canvas.drawRightString}

_LOCK = threading.Lock()
# Per process: the bundled faces, and each fallback file's face (None: unusable or absent).
_primary: dict[str, Face] = {}
_fallbacks: dict[str, Face | None] = {}


def _register(name: str, path: str) -> Face:
    """Register a TrueType file (the first font of a collection) under ``name``."""
    font = TTFont(name, path, subfontIndex=0)
    pdfmetrics.registerFont(font)
    # Glyph 0 is .notdef: a character mapped to it is not drawn.
    return Face(name, frozenset(c for c, g in font.face.charToGlyph.items() if g))


def _primary_faces() -> dict[str, Face]:
    """DejaVu Sans and its bold, registered once per process."""
    with _LOCK:
        if not _primary:
            _primary[FONT] = _register(FONT, str(FONTS_DIR / "DejaVuSans.ttf"))
            _primary[BOLD] = _register(BOLD, str(FONTS_DIR / "DejaVuSans-Bold.ttf"))
        return _primary


def _fallback_face(path: str) -> Face | None:
    """The face of one fallback file, registered on first use; None when it is absent
    or unusable (logged once)."""
    with _LOCK:
        if path in _fallbacks:
            return _fallbacks[path]
        face = None
        if Path(path).is_file():
            try:
                face = _register(f"InvoiceFallback{len(_fallbacks)}", path)
            except Exception as exc:  # ReportLab raises its own errors and plain ones alike
                log.warning(
                    "invoice fallback font unusable, skipped",
                    extra={"path": path, "error": f"{type(exc).__name__}: {exc}"},
                )
        _fallbacks[path] = face
        return face


def check_fallback_fonts(fallback_paths: tuple[str, ...]) -> list[str]:
    """The files of ``invoice_fallback_fonts`` that are not on this machine, each said
    in one warning line; none for the default list (a machine has one of it or none).

    A warning, not a refusal (unlike an unknown ``invoice_locale``, on which every
    invoice failed): without the file invoices are still made, only the characters
    it alone has are drawn blank.
    """
    if fallback_paths == INVOICE_FALLBACK_FONTS:
        return []
    missing = [path for path in fallback_paths if not Path(path).is_file()]
    for path in missing:
        log.warning(
            f"invoice_fallback_fonts: no font file at {path}: skipped (characters only it"
            " has are drawn blank in invoice PDFs)",
            extra={"setting": "invoice_fallback_fonts", "path": path},
        )
    return missing


def register_fonts(fallback_paths: tuple[str, ...] = ()) -> "Glyphs":
    """The fonts of one document: DejaVu Sans, then the usable fallback files in order."""
    primary = _primary_faces()
    found = (_fallback_face(path) for path in fallback_paths)
    return Glyphs(primary, tuple(face for face in found if face is not None))


@dataclass(slots=True)
class Glyphs:
    """Which font draws each character of one document, and the characters none has."""

    primary: dict[str, Face]
    fallbacks: tuple[Face, ...]
    missing: set[str] = field(default_factory=set)

    def covered(self, text: str, font: str) -> bool:
        """Whether ``font`` (a primary one) draws all of ``text``: the common case."""
        if text.isascii():
            return True  # DejaVu Sans has every ASCII character: no per-character look
        chars = self.primary[font].chars
        return all(ord(c) in chars for c in text)

    def _font_of(self, char: str, font: str, current: str) -> str:
        if char.isspace():
            return current  # a space stays in the run it is in: no font switch for it
        code = ord(char)
        if code in self.primary[font].chars:
            return font
        for face in self.fallbacks:
            if code in face.chars:
                return face.name
        self.missing.add(char)
        return font

    def runs(self, text: str, font: str) -> Iterator[tuple[str, str]]:
        """``text`` cut into runs, each with the font that draws it: ``font`` where it
        can, else the first fallback that has the character (``font`` when none has:
        counted in ``missing``)."""
        if self.covered(text, font):
            yield font, text
            return
        start, current = 0, font
        for i, char in enumerate(text):
            chosen = self._font_of(char, font, current)
            if chosen != current:
                if i > start:
                    yield current, text[start:i]
                start, current = i, chosen
        if start < len(text):
            yield current, text[start:]

    def markup(self, text: str, font: str) -> str:
        """Paragraph markup of plain text in ``font``: escaped (data never acts as
        markup), each fallback run in a ``<font>`` tag."""
        return "".join(
            escape(run) if name == font else f'<font name="{name}">{escape(run)}</font>'
            for name, run in self.runs(text, font)
        )

    def scripts(self) -> list[str]:
        """The writing systems of the missing characters (the first word of their
        Unicode names: CJK, HANGUL, THAI), not the characters: they are customer data."""
        return sorted({unicodedata.name(c, "UNNAMED").split()[0] for c in self.missing})

    def canvas_maker(self) -> Any:
        """A ReportLab canvas maker whose strings (table cells, footers) are drawn in
        runs of these fonts, for ``SimpleDocTemplate.build(canvasmaker=...)``."""
        return functools.partial(RunsCanvas, glyphs=self)


class RunsCanvas(Canvas):
    """A canvas drawing each run of a string in the font that has it (``Glyphs``)."""

    def __init__(self, *args: Any, glyphs: Glyphs, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.glyphs = glyphs

    def drawString(self, x: float, y: float, text: str, *args: Any, **kw: Any) -> None:
        """ReportLab's drawString: ``text`` left-aligned at x, drawn in runs."""
        self._draw(x, y, text, 0.0, args, kw)

    def drawRightString(self, x: float, y: float, text: str, *args: Any, **kw: Any) -> None:
        """ReportLab's drawRightString: ``text`` right-aligned at x, drawn in runs."""
        self._draw(x, y, text, 1.0, args, kw)

    def drawCentredString(self, x: float, y: float, text: str, *args: Any, **kw: Any) -> None:
        """ReportLab's drawCentredString: ``text`` centred on x, drawn in runs."""
        self._draw(x, y, text, 0.5, args, kw)

    def _draw(self, x: float, y: float, text: str, anchor: float, args: Any, kw: Any) -> None:
        # ``anchor``: the share of the width left of x (0 left, 1 right-aligned).
        # The current font: ReportLab keeps it in attributes its stubs do not declare,
        # and saveState/restoreState change it without setFont.
        state = self.__dict__
        font, size, leading = state["_fontname"], state["_fontsize"], state["_leading"]
        glyphs = self.glyphs
        if font not in glyphs.primary or glyphs.covered(text, font):
            _PLAIN[anchor](self, x, y, text, *args, **kw)
            return
        runs = list(glyphs.runs(text, font))
        width = sum(pdfmetrics.stringWidth(run, name, size) for name, run in runs)
        x -= width * anchor
        for name, run in runs:
            self.setFont(name, size, leading)
            Canvas.drawString(self, x, y, run)
            x += pdfmetrics.stringWidth(run, name, size)
        self.setFont(font, size, leading)
