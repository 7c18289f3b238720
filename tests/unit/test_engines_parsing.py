"""DeepSeek-OCR output parsing: golden real outputs, hand-written edge cases, and fuzzing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ocr_stream.contracts import Block, PageResult, PageStatus
from ocr_stream.engines.parsing import crop_figures, figure_name, parse_output, to_pixels

GOLDENS = Path(__file__).resolve().parent.parent / "data" / "goldens"
GOLDEN_NAMES = sorted(p.stem for p in GOLDENS.glob("*.txt"))


def test_there_are_goldens() -> None:
    assert len(GOLDEN_NAMES) >= 4


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_output(name: str) -> None:
    raw = (GOLDENS / f"{name}.txt").read_text(encoding="utf-8")
    expected = json.loads((GOLDENS / f"{name}.expected.json").read_text(encoding="utf-8"))
    page = parse_output(raw, expected["width"], expected["height"], page_no=expected["page_no"])
    assert page.markdown == expected["markdown"]
    assert [b.model_dump(mode="json") for b in page.blocks] == expected["blocks"]
    assert [{"name": f.name, "box": list(f.box) if f.box else None} for f in page.figures] == expected["figures"]
    assert page.malformed == expected["malformed"]
    # Nothing of the grounding syntax survives into the Markdown.
    for tag in ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"):
        assert tag not in page.markdown


def test_golden_table_and_figure_facts() -> None:
    """Facts checked by hand against the raw text, independent of the expected file."""
    raw = (GOLDENS / "sto10_p3_table_image.txt").read_text(encoding="utf-8")
    page = parse_output(raw, 1131, 1600, page_no=3)
    assert not page.malformed
    labels = [b.label for b in page.blocks]
    assert labels.count("table") == 1 and labels.count("image") == 1 and labels.count("equation") == 2
    first = page.blocks[0]
    # [[114, 81, 375, 100]] on a 1131x1600 page: 114*1131/999 = 129.07, 81*1600/999 = 129.7, ...
    assert first.box == (129, 129, 424, 160)
    assert first.text == "b) Tabelle wie in a) erstellen"
    table = next(b for b in page.blocks if b.label == "table")
    assert table.text.startswith("<table><tr><td>i</td>") and table.text.endswith("</table>")
    assert table.text in page.markdown
    assert "![figure](figures/page-00003-01.jpg)" in page.markdown
    # The figure reference sits where the image was: after the second equation, before "2. Regr...".
    md = page.markdown
    assert md.index("0,982611") < md.index("![figure]") < md.index("2. Regressionsanalyse I")


def test_golden_missing_det_keeps_text_and_flags() -> None:
    raw = (GOLDENS / "ana9_p5_missing_det.txt").read_text(encoding="utf-8")
    page = parse_output(raw, 1131, 1600)
    assert page.malformed
    broken = [b for b in page.blocks if b.malformed]
    assert len(broken) == 3
    assert all(b.label == "equation" and b.box is None for b in broken)
    assert "\\frac{f'(x) = (x+1) \\cdot e^x}{x}." in broken[0].text
    # The well-formed neighbours are untouched.
    assert sum(1 for b in page.blocks if not b.malformed and b.box is not None) == len(page.blocks) - 3


def test_golden_out_of_range_coordinates_are_clamped_sorted_and_flagged() -> None:
    raw = (GOLDENS / "ana9_p6_bad_coords.txt").read_text(encoding="utf-8")
    page = parse_output(raw, 1131, 1600)
    bad = [b for b in page.blocks if b.malformed]
    assert len(bad) == 3
    # [[1200, 281, 465, 302]]: x1 clamps to 999 -> 1131, x2 = 465*1131/999 = 526.4, then sorted.
    assert bad[0].box == (526, 450, 1131, 483)
    for b in page.blocks:
        assert b.box is not None
        x1, y1, x2, y2 = b.box
        assert 0 <= x1 <= x2 <= 1131 and 0 <= y1 <= y2 <= 1600


# --- hand-written cases -------------------------------------------------------------------------


def test_to_pixels_frame() -> None:
    assert to_pixels((0, 0, 999, 999), 800, 600) == ((0, 0, 800, 600), False)
    assert to_pixels((500, 250, 250, 500), 999, 999) == ((250, 250, 500, 500), True)
    assert to_pixels((-5, 0, 10, 2000), 100, 100) == ((0, 0, 1, 100), True)


def test_special_tokens_stripped_and_free_ocr_is_one_block() -> None:
    page = parse_output("Hello world.\nSecond line.<｜end▁of▁sentence｜>", 100, 100)
    assert page.markdown == "Hello world.\nSecond line.\n"
    assert page.blocks == [Block(label="text", text="Hello world.\nSecond line.", box=None)]
    assert not page.malformed


def test_several_boxes_in_one_det_give_their_union() -> None:
    raw = "<|ref|>text<|/ref|><|det|>[[0, 0, 100, 100], [500, 500, 999, 600]]<|/det|>\nSplit paragraph"
    page = parse_output(raw, 999, 999)
    assert page.blocks == [Block(label="text", text="Split paragraph", box=(0, 0, 999, 600))]
    assert not page.malformed


def test_truncated_answer_keeps_text_and_flags() -> None:
    raw = "<|ref|>title<|/ref|><|det|>[[10, 10, 500, 50]]<|/det|>\n# Title\n\n<|ref|>text<|/ref|><|det|>[[10, 60, 9"
    page = parse_output(raw, 1000, 1000)
    assert page.malformed
    assert page.blocks[0] == Block(label="title", text="# Title", box=(10, 10, 500, 50))
    assert "# Title" in page.markdown


def test_partial_tag_at_the_end_is_dropped() -> None:
    page = parse_output("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nabc <|re", 999, 999)
    assert page.malformed
    assert page.markdown == "abc\n"


def test_unclosed_ref_keeps_text() -> None:
    page = parse_output("<|ref|>text and then the answer stopped", 100, 100)
    assert page.malformed
    assert page.blocks[0].text == "text and then the answer stopped"


def test_stray_closing_tags_are_removed_and_flagged() -> None:
    page = parse_output("before <|/det|> after", 100, 100)
    assert page.malformed
    assert page.markdown == "before  after\n"


def test_removing_a_stray_tag_cannot_splice_a_new_one() -> None:
    page = parse_output("x <|re<|/det|>f|> y <|<|det|>det|>", 100, 100)
    assert page.malformed
    assert "<|ref|>" not in page.markdown and "<|det|>" not in page.markdown


def test_grounding_ocr_mode_text_inside_ref() -> None:
    raw = "<|ref|>TOTAL 12.50<|/ref|><|det|>[[100, 200, 300, 260]]<|/det|>\n<|ref|>Thank you<|/ref|><|det|>[[0, 900, 999, 999]]<|/det|>"
    page = parse_output(raw, 999, 999)
    assert [(b.label, b.text) for b in page.blocks] == [("text", "TOTAL 12.50"), ("text", "Thank you")]
    assert not page.malformed


def test_garbage_coordinates_never_eval() -> None:
    raw = "<|ref|>text<|/ref|><|det|>__import__('os').system('false')<|/det|>\nbody"
    page = parse_output(raw, 100, 100)
    assert page.malformed
    assert page.blocks == [Block(label="text", text="body", box=None, malformed=True)]


def test_figure_names_are_deterministic_and_numbered() -> None:
    raw = (
        "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n"
        "<|ref|>image_caption<|/ref|><|det|>[[0, 500, 499, 520]]<|/det|>\nFig. 1\n"
        "<|ref|>figure<|/ref|><|det|>[[500, 0, 999, 499]]<|/det|>\n"
    )
    page = parse_output(raw, 1000, 1000, page_no=12)
    assert [f.name for f in page.figures] == ["figures/page-00012-01.jpg", "figures/page-00012-02.jpg"]
    assert page.markdown == (
        "![figure](figures/page-00012-01.jpg)\n\nFig. 1\n\n![figure](figures/page-00012-02.jpg)\n"
    )
    assert figure_name(12, 2) == page.figures[1].name


def test_crop_figures_cuts_the_boxes() -> None:
    image = Image.new("RGB", (200, 100), "white")
    image.paste((255, 0, 0), (100, 0, 200, 100))  # right half red
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    page = parse_output("<|ref|>image<|/ref|><|det|>[[500, 0, 999, 999]]<|/det|>", 200, 100)
    crops = crop_figures(buf.getvalue(), page.blocks)
    assert [name for name, _ in crops] == ["figures/page-00001-01.jpg"]
    crop = Image.open(io.BytesIO(crops[0][1]))
    assert crop.size == (100, 100)
    r, g, b = crop.convert("RGB").getpixel((50, 50))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60


def test_crop_figures_bad_image_is_bad_input() -> None:
    from ocr_stream.errors import BadInputError

    page = parse_output("<|ref|>image<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>", 10, 10)
    with pytest.raises(BadInputError):
        crop_figures(b"not an image", page.blocks)


# --- fuzzing --------------------------------------------------------------------------------------

FRAGMENTS = [
    "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[", "]]", "[", "]", ", ", "0", "999", "1200", "-3",
    "text", "image", "table", "title", "\n", " ", "<table><tr><td>", "</td></tr></table>", "<|grounding|>",
    "<｜end▁of▁sentence｜>", "<|", "|>", "<｜", "1.5", "a" * 70, "ü→", "\x00",
]  # fmt: skip

tag_soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map("".join)
sizes = st.integers(min_value=-5, max_value=5000)


def _roundtrip(markdown: str, blocks: list[Block]) -> None:
    result = PageResult(doc_id="doc-1", page_no=1, page_count=1, status=PageStatus.OK, markdown=markdown, blocks=blocks)
    again = PageResult.model_validate_json(result.model_dump_json())
    assert again == result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(st.text(max_size=300), tag_soup), width=sizes, height=sizes)
def test_fuzz_total_deterministic_and_schema_safe(raw: str, width: int, height: int) -> None:
    first = parse_output(raw, width, height)
    second = parse_output(raw, width, height)
    assert first == second
    w, h = max(1, width), max(1, height)
    for block in first.blocks:
        assert len(block.label) <= 64 and block.label
        if block.box is not None:
            x1, y1, x2, y2 = block.box
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert "<|ref|>" not in first.markdown and "<|det|>" not in first.markdown
    if not first.malformed:
        assert all(not b.malformed for b in first.blocks)
    _roundtrip(first.markdown, first.blocks)


well_formed_block = st.tuples(
    st.sampled_from(["text", "title", "table", "equation", "sub_title"]),
    st.lists(st.integers(0, 999), min_size=4, max_size=4),
    st.text(alphabet=st.characters(blacklist_characters="<>|｜", blacklist_categories=("Cs",)), min_size=1, max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(well_formed_block, min_size=1, max_size=8))
def test_fuzz_well_formed_output_is_not_flagged(blocks: list[tuple[str, list[int], str]]) -> None:
    raw = "".join(
        f"<|ref|>{label}<|/ref|><|det|>[[{min(c[0], c[2])}, {min(c[1], c[3])}, {max(c[0], c[2])}, {max(c[1], c[3])}]]<|/det|>\n{text}\n\n"
        for label, c, text in blocks
    )
    page = parse_output(raw + "<｜end▁of▁sentence｜>", 999, 999)
    assert not page.malformed
    kept = [t for _, _, t in blocks if t.strip()]
    assert [b.text for b in page.blocks if b.text] == ["\n".join(line.rstrip() for line in t.strip().splitlines()).strip() for t in kept]
