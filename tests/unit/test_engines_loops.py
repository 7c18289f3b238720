"""The client-side loop detector: flags runaway repetition early, leaves legit repetitive documents alone."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr_stream.engines.loops import LoopDetector, UnitClass, classify_unit


def feed_all(det: LoopDetector, text: str, step: int = 4) -> int | None:
    """Feed ``text`` in ``step``-sized deltas; the number of characters fed when it fired, or None."""
    fed = 0
    for i in range(0, len(text), step):
        chunk = text[i : i + step]
        fed += len(chunk)
        if det.feed(chunk):
            return fed
    return None


def prose(seed: int, words: int = 800) -> str:
    rng = random.Random(seed)
    vocab = "the of and a to in is was that for on with as by this model page table figure result value".split()
    out = []
    for i in range(words):
        out.append(rng.choice(vocab))
        if i % 12 == 11:
            out.append(f"{rng.randint(1, 999)}.\n")
    return " ".join(out)


# --- loops are flagged ---------------------------------------------------------------------------


def test_repeated_sentence_flagged_after_min_repeats() -> None:
    det = LoopDetector(min_period=8, min_repeats=10)
    unit = "The quick brown fox. "
    fired = feed_all(det, prose(1, 100) + unit * 200)
    assert fired is not None
    assert det.info is not None and det.info.unit_class is UnitClass.TEXT
    assert det.info.period == len(unit)
    # Flagged within a couple of repeats past the threshold: long before max_tokens.
    assert fired <= len(prose(1, 100)) + len(unit) * 12


def test_single_token_loop_flagged_through_its_multiples() -> None:
    det = LoopDetector(min_period=8, min_repeats=10)
    fired = feed_all(det, "Intro text here.\n" + "the " * 500, step=4)
    assert fired is not None and fired < 17 + 4 * 40
    assert det.info is not None and det.info.period % 4 == 0


def test_long_paragraph_loop_needs_fewer_repeats() -> None:
    para = prose(7, 120)  # ~600 characters: 10 repeats would be 6,000
    det = LoopDetector(min_period=8, min_repeats=10)
    fired = feed_all(det, "start\n" + para * 20, step=5)
    assert fired is not None
    assert det.info is not None and det.info.period == len(para)
    assert fired <= 6 + det.long_span + len(para)  # capped at long_span: fewer than 10 repeats
    assert fired < 6 + len(para) * 9


def test_stays_flagged_once_detected() -> None:
    det = LoopDetector()
    assert feed_all(det, "abcdefghij" * 50) is not None
    assert det.feed("different text") is True


def test_endless_dots_flagged_eventually() -> None:
    det = LoopDetector()
    fired = feed_all(det, "Contents " + "." * 5000, step=3)
    assert fired is not None and fired <= 9 + det.filler_span + 16
    assert det.info is not None and det.info.unit_class is UnitClass.FILLER


def test_endless_empty_cells_flagged_only_after_table_span() -> None:
    det = LoopDetector()
    text = "<table><tr>" + "<td></td>" * 3000
    fired = feed_all(det, text, step=9)
    assert fired is not None and fired >= det.table_span
    assert det.info is not None and det.info.unit_class is UnitClass.TABLE


def test_grounded_block_loop_flagged() -> None:
    block = "<|ref|>text<|/ref|><|det|>[[100, 200, 900, 250]]<|/det|>\nSame line again\n\n"
    det = LoopDetector()
    assert feed_all(det, block * 30, step=3) is not None


# --- legit documents are not flagged -------------------------------------------------------------


def test_table_of_contents_with_dotted_leaders_not_flagged() -> None:
    lines = [f"{i}. Chapter number {i} {'.' * (60 + i % 40)} {i * 7}\n" for i in range(1, 80)]
    assert feed_all(LoopDetector(), "".join(lines)) is None


def test_numbered_list_with_identical_items_not_flagged() -> None:
    text = "".join(f"{i}. Yes\n" for i in range(1, 300))
    assert feed_all(LoopDetector(), text) is None


def test_large_empty_form_table_not_flagged() -> None:
    row = "<tr>" + "<td></td>" * 12 + "</tr>"
    text = "<table>" + row * 40 + "</table>"  # 480 empty cells
    assert feed_all(LoopDetector(), text, step=9) is None


def test_numeric_table_rows_with_zero_cells_not_flagged() -> None:
    rows = "".join("<tr><td>Item %d</td>" % i + "<td>0</td>" * 30 + "<td>-</td>" * 20 + "</tr>" for i in range(40))
    assert feed_all(LoopDetector(), "<table>" + rows + "</table>", step=5) is None


def test_signature_lines_and_rules_not_flagged() -> None:
    text = "Signed: " + "_" * 120 + "\nDate: " + "_" * 60 + "\n" + "-" * 200 + "\n" + "= " * 100 + "\nEnd."
    assert feed_all(LoopDetector(), text) is None


def test_ordinary_prose_not_flagged() -> None:
    for seed in range(5):
        assert feed_all(LoopDetector(), prose(seed, 3000), step=4) is None


def test_markdown_table_separator_not_flagged() -> None:
    text = "| " + " | ".join(f"h{i}" for i in range(30)) + " |\n|" + "---|" * 30 + "\n"
    assert feed_all(LoopDetector(), text * 3) is None


# --- classification and construction -------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "cls"),
    [
        ("<td></td>", UnitClass.TABLE),
        ("<td>0</td>", UnitClass.TABLE),
        ("<tr><td></td><td></td></tr>", UnitClass.TABLE),
        ("<td>A long cell content here</td>", UnitClass.TEXT),
        ("........", UnitClass.FILLER),
        ("_ _ _ _ ", UnitClass.FILLER),
        ("\n\n\n\n", UnitClass.FILLER),
        ("hello world ", UnitClass.TEXT),
    ],
)
def test_classify_unit(unit: str, cls: UnitClass) -> None:
    assert classify_unit(unit) is cls


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        LoopDetector(min_period=0)
    with pytest.raises(ValueError):
        LoopDetector(min_repeats=1)


def test_empty_chunks_are_harmless() -> None:
    det = LoopDetector()
    assert det.feed("") is False
    assert det.detected is False


# --- properties ------------------------------------------------------------------------------------

text_units = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N"]), min_size=8, max_size=40)


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(max_size=300), unit=text_units, chunk=st.integers(min_value=1, max_value=12))
def test_any_text_unit_repeated_is_flagged(prefix: str, unit: str, chunk: int) -> None:
    """Whatever precedes it and however the stream is cut, a text unit repeated many times fires."""
    det = LoopDetector(min_period=8, min_repeats=10)
    fired = feed_all(det, prefix + unit * 60, step=chunk)
    assert fired is not None
    # Within the required span plus a check interval and a unit of phase.
    assert fired <= len(prefix) + det.required_span(len(unit)) + 2 * len(unit) + chunk + det.check_every + det.probe


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=9), min_size=50, max_size=400, unique=True))
def test_text_without_repeats_never_flagged(words: list[str]) -> None:
    """Distinct words separated by spaces and numbers contain no periodic tail of 10 repeats."""
    text = " ".join(f"{w} {i}" for i, w in enumerate(words))
    assert feed_all(LoopDetector(), text, step=3) is None


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=2000), cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_chunking_never_crashes_and_is_consistent(text: str, cuts: list[int]) -> None:
    """Feeding arbitrary text in arbitrary pieces never raises, and a fired detector stays fired."""
    det = LoopDetector()
    points = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    fired = False
    for a, b in zip(points, points[1:], strict=False):
        now = det.feed(text[a:b])
        assert not (fired and not now)
        fired = now


GOLDENS = Path(__file__).resolve().parent.parent / "data" / "goldens"


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDENS.glob("*.txt")) or ["(none)"])
@pytest.mark.parametrize("step", [1, 3, 8])
def test_real_deepseek_answers_not_flagged(name: str, step: int) -> None:
    """The published raw DeepSeek-OCR answers (tests/data/goldens) are not loops, however they stream."""
    path = GOLDENS / name
    if not path.exists():
        pytest.skip("no golden outputs")
    assert feed_all(LoopDetector(), path.read_text(encoding="utf-8"), step=step) is None
