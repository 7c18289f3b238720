"""DeepSeek-OCR output → clean Markdown and labelled blocks with boxes in page pixels. Pure functions
(no I/O, no eval), deterministic, and total: any text gives a result, nothing is raised.

The model's grounding format (prompt ``<|grounding|>Convert the document to markdown.``)::

    <|ref|>title<|/ref|><|det|>[[100, 150, 400, 250]]<|/det|>
    # The title
    <|ref|>text<|/ref|><|det|>[[100, 260, 900, 400]]<|/det|>
    A paragraph ...

Each ``<|ref|>`` starts a block: its label, its box(es), then the text up to the next ``<|ref|>``.

Coordinate frame: the model gives ``[x1, y1, x2, y2]`` on a 0–999 scale of the image it was sent
(DeepSeek's own scripts divide by 999). A box becomes page pixels of that image with origin at the
top-left corner, x to the right, y down: ``x_px = int(x * width / 999)``, clamped to [0, width]
(y likewise with height), and sorted so that x1 <= x2 and y1 <= y2. 999 maps to the image's right
(bottom) edge.

Decisions:

- Several boxes in one ``<|det|>`` (``[[..], [..]]``): one block whose box is their union (the text
  belongs to the whole region and is not duplicated).
- Image regions (label ``image`` or ``figure``) become ``![figure](figures/page-00001-01.jpg)`` in
  the Markdown; the name is deterministic (page number, 1-based figure index on the page), and
  ``crop_figures`` stores the crops under the same names.
- Tables (HTML ``<table>`` from the model) and formulas are kept as the model wrote them.
- Special tokens (``<｜end▁of▁sentence｜>`` and the like) and stray ``<|grounding|>`` are removed.
- Malformed output keeps its text and is flagged (``Block.malformed``, ``ParsedPage.malformed``):
  a ``<|ref|>`` without its ``<|/ref|>`` or ``<|det|>``, coordinates that are not four numbers,
  outside 0–999 or inverted, stray closing tags, a tag cut off at the end of a truncated answer.
- Text before the first ``<|ref|>`` (all of it for ``Free OCR.``) is a block labelled ``text``
  without a box.
- ``<|grounding|>OCR this image.`` puts the recognised text inside ``<|ref|>`` with nothing after the
  box: such a block gets label ``text`` and the ref content as its text.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

from ..contracts import Block

REF_OPEN, REF_CLOSE = "<|ref|>", "<|/ref|>"
DET_OPEN, DET_CLOSE = "<|det|>", "<|/det|>"
COORD_SCALE = 999
FIGURE_LABELS = frozenset({"image", "figure"})
MAX_LABEL_CHARS = 64

#: Layout labels the model uses (from DeepSeek-OCR's outputs and its OmniDocBench evaluation).
KNOWN_LABELS = frozenset(
    {
        "title", "sub_title", "text", "table", "table_caption", "table_footnote", "image", "figure",
        "image_caption", "figure_caption", "equation", "formula", "list", "header", "footer",
        "page_header", "page_footer", "page_number", "footnote", "reference", "code", "abstract",
        "author", "algorithm", "caption",
    }
)  # fmt: skip

# DeepSeek's special tokens use fullwidth bars: <｜end▁of▁sentence｜>, <｜▁pad▁｜>, ...
_SPECIAL_TOKEN = re.compile(r"<｜[^<>｜\n]{0,64}｜>")
_GROUNDING = "<|grounding|>"
# A tag cut off by the end of the answer (finish_reason=length), e.g. "<|re", "<|/de", "<｜end▁of".
_PARTIAL_TAG_AT_END = re.compile(r"<(?:\|/?[a-z]{0,9}\|?|｜[^<>｜\n]{0,64})$")
_NUMBER = r"\s*(-?\d{1,9}(?:\.\d{1,9})?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_WELL_FORMED_DET = re.compile(r"\s*\[\s*" + _BOX.pattern + r"(?:\s*,\s*" + _BOX.pattern + r")*\s*\]\s*")
_ANY_TAG = re.compile(r"<\|/?(?:ref|det)\|>")


@dataclass(frozen=True, slots=True)
class FigureRef:
    """A figure region and the name its crop is stored under (relative to the document's folder)."""

    name: str
    box: tuple[int, int, int, int] | None


@dataclass(frozen=True, slots=True)
class ParsedPage:
    markdown: str
    blocks: list[Block]
    malformed: bool
    figures: list[FigureRef] = field(default_factory=list)


def figure_name(page_no: int, index: int) -> str:
    """Deterministic object name of the ``index``-th (1-based) figure of page ``page_no``."""
    return f"figures/page-{page_no:05d}-{index:02d}.jpg"


def to_pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
    """A 0–999 box → page pixels (see the module docstring), and whether it had to be repaired
    (outside 0–999, or inverted)."""
    x1, y1, x2, y2 = box
    repaired = any(v < 0 or v > COORD_SCALE for v in box) or x1 > x2 or y1 > y2

    def conv(v: float, size: int) -> int:
        v = min(max(v, 0.0), float(COORD_SCALE))
        return min(max(int(v * size / COORD_SCALE), 0), size)

    px1, px2 = sorted((conv(x1, width), conv(x2, width)))
    py1, py2 = sorted((conv(y1, height), conv(y2, height)))
    return (px1, py1, px2, py2), repaired


def _parse_det(det: str, width: int, height: int) -> tuple[tuple[int, int, int, int] | None, bool]:
    """The union box of a <|det|> payload in pixels, and whether the payload was malformed."""
    boxes = [tuple(float(g) for g in m.groups()) for m in _BOX.finditer(det)]
    malformed = _WELL_FORMED_DET.fullmatch(det) is None
    if not boxes:
        return None, True
    pixel_boxes = []
    for b in boxes:
        px, repaired = to_pixels(b, width, height)  # type: ignore[arg-type]
        malformed = malformed or repaired
        pixel_boxes.append(px)
    union = (
        min(b[0] for b in pixel_boxes),
        min(b[1] for b in pixel_boxes),
        max(b[2] for b in pixel_boxes),
        max(b[3] for b in pixel_boxes),
    )
    return union, malformed


def _clean_text(text: str) -> tuple[str, bool]:
    """Strip stray grounding tags (flagged) and trailing spaces on each line."""
    stray = False
    while _ANY_TAG.search(text):  # to a fixed point: removing one tag may splice another
        text, stray = _ANY_TAG.sub("", text), True
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip(), stray


@dataclass(slots=True)
class _Segment:
    label: str
    text: str
    box: tuple[int, int, int, int] | None
    malformed: bool


def _split_ref(chunk: str, width: int, height: int) -> _Segment:
    """One chunk that started with <|ref|> (the tag already removed)."""
    malformed = False
    label_raw, sep, rest = chunk.partition(REF_CLOSE)
    if not sep:
        # No <|/ref|>: a ref cut off (or garbled); keep everything as text.
        text, _ = _clean_text(chunk)
        return _Segment("text", text, None, True)
    box: tuple[int, int, int, int] | None = None
    stripped = rest.lstrip()
    if stripped.startswith(DET_OPEN):
        det_body = stripped[len(DET_OPEN) :]
        det, sep, content = det_body.partition(DET_CLOSE)
        if not sep:
            # Unclosed <|det|>: take a leading box list if there is one, the rest is text.
            m = _WELL_FORMED_DET.match(det_body)
            if m is not None:
                det, content = m.group(0), det_body[m.end() :]
            else:
                det, content = "", det_body
            malformed = True
        box, bad_det = _parse_det(det, width, height)
        malformed = malformed or bad_det
    else:
        content = rest
        malformed = True
    label = label_raw.strip()
    text, stray = _clean_text(content)
    malformed = malformed or stray
    if not text and label and label.lower() not in KNOWN_LABELS:
        # "<|grounding|>OCR this image." puts the text itself in the ref.
        text, label = _clean_text(label_raw)[0], "text"
    elif not label or len(label) > MAX_LABEL_CHARS or "\n" in label or _ANY_TAG.search(label):
        if label:
            text = (_clean_text(label_raw)[0] + "\n" + text).strip()
        label, malformed = "text", True
    return _Segment(label.lower() if label.lower() in KNOWN_LABELS else label, text, box, malformed)


def parse_output(raw: str, width: int, height: int, *, page_no: int = 1) -> ParsedPage:
    """Parse a raw DeepSeek-OCR answer for a page image of ``width`` x ``height`` pixels.

    ``page_no`` only names the figure references (``figures/page-{page_no:05d}-{i:02d}.jpg``).
    Never raises for any text; ``width``/``height`` below 1 are treated as 1.
    """
    width, height = max(1, int(width)), max(1, int(height))
    malformed = False
    text = _SPECIAL_TOKEN.sub("", raw).replace(_GROUNDING, "")
    cut = _PARTIAL_TAG_AT_END.search(text)
    if cut is not None:
        text, malformed = text[: cut.start()], True

    chunks = text.split(REF_OPEN)
    segments: list[_Segment] = []
    preamble, stray = _clean_text(chunks[0])
    malformed = malformed or stray
    if preamble:
        segments.append(_Segment("text", preamble, None, stray))
    for chunk in chunks[1:]:
        seg = _split_ref(chunk, width, height)
        segments.append(seg)

    blocks: list[Block] = []
    figures: list[FigureRef] = []
    parts: list[str] = []
    for seg in segments:
        malformed = malformed or seg.malformed
        if seg.label in FIGURE_LABELS:
            name = figure_name(page_no, len(figures) + 1)
            figures.append(FigureRef(name, seg.box))
            parts.append(f"![figure]({name})")
        if seg.text:
            parts.append(seg.text)
        if seg.text or seg.box is not None or seg.label in FIGURE_LABELS:
            blocks.append(Block(label=seg.label[:MAX_LABEL_CHARS], text=seg.text, box=seg.box, malformed=seg.malformed))
    markdown = "\n\n".join(parts)
    return ParsedPage(markdown=markdown + ("\n" if markdown else ""), blocks=blocks, malformed=malformed, figures=figures)


def crop_figures(
    image_bytes: bytes, blocks: list[Block], *, page_no: int = 1, quality: int = 90, min_side: int = 4
) -> list[tuple[str, bytes]]:
    """JPEG crops of the figure blocks (label image/figure) of a page image, named as the Markdown
    references them (``figure_name``). A figure without a box, or smaller than ``min_side`` pixels
    on a side, keeps its name but is skipped. Raises BadInputError if the image cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    from ..errors import BadInputError

    figures = [b for b in blocks if b.label in FIGURE_LABELS]
    if not figures:
        return []
    try:
        image: Image.Image = Image.open(io.BytesIO(image_bytes))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInputError(f"cannot decode the page image to crop figures: {exc}") from exc
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out: list[tuple[str, bytes]] = []
    for index, block in enumerate(figures, start=1):
        if block.box is None:
            continue
        x1, y1, x2, y2 = block.box
        x1, x2 = max(0, min(x1, image.width)), max(0, min(x2, image.width))
        y1, y2 = max(0, min(y1, image.height)), max(0, min(y2, image.height))
        if x2 - x1 < min_side or y2 - y1 < min_side:
            continue
        buf = io.BytesIO()
        image.crop((x1, y1, x2, y2)).save(buf, format="JPEG", quality=quality)
        out.append((figure_name(page_no, index), buf.getvalue()))
    return out


__all__ = ["FigureRef", "ParsedPage", "crop_figures", "figure_name", "parse_output", "to_pixels"]
