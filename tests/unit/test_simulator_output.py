"""The simulator's DeepSeek-OCR-shaped output and image-token counts (pure)."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from ocr_stream.simulator.output import (
    REPEAT_PHRASE,
    SPECIAL_TOKENS,
    TokenDistribution,
    detokenize,
    extend_pieces,
    gundam_grid,
    image_seed,
    image_tokens,
    page_output,
    repeating_pieces,
    tokenize,
)

BLOCK = re.compile(r"<\|ref\|>(\w+)<\|/ref\|><\|det\|>\[\[(\d+), (\d+), (\d+), (\d+)\]\]<\|/det\|>\n")


def test_same_image_same_page_other_image_other_page() -> None:
    dist = TokenDistribution()
    a = page_output(image_seed(b"page one"), dist, True)
    again = page_output(image_seed(b"page one"), dist, True)
    b = page_output(image_seed(b"page two"), dist, True)
    assert a.text == again.text
    assert a.text != b.text
    assert image_seed(b"x", salt=1) != image_seed(b"x", salt=0)


@pytest.mark.parametrize("n", range(20))
def test_grounded_output_has_blocks_with_boxes_on_the_0_999_scale(n: int) -> None:
    text = page_output(image_seed(f"img{n}".encode()), TokenDistribution(), True).text
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 2
    assert blocks[0][0] == "title"
    assert text.startswith("<|ref|>title<|/ref|>")
    last_y1 = -1
    for label, *coords in blocks:
        x1, y1, x2, y2 = map(int, coords)
        assert label in {"title", "text", "sub_title", "table", "image"}
        assert 0 <= x1 < x2 <= 999 and 0 <= y1 < y2 <= 999
        assert y1 >= last_y1  # top to bottom
        last_y1 = y1
    # everything outside the tags is plain text, and tags only appear in blocks
    assert text.count("<|ref|>") == len(blocks)


def test_tables_are_html_and_some_pages_have_them() -> None:
    texts = [page_output(image_seed(f"t{i}".encode()), TokenDistribution(), True).text for i in range(40)]
    tables = [t for t in texts if "<|ref|>table<|/ref|>" in t]
    assert tables
    for t in tables:
        assert re.search(r"<\|ref\|>table<\|/ref\|><\|det\|>\[\[[\d, ]+\]\]<\|/det\|>\n<table><tr><td>", t)
        assert t.count("<table>") == t.count("</table>")


def test_without_grounding_there_are_no_tags() -> None:
    text = page_output(image_seed(b"free"), TokenDistribution(), False).text
    assert not any(tok in text for tok in SPECIAL_TOKENS)
    assert text.startswith("# ")


def test_token_counts_follow_the_distribution() -> None:
    counts = [len(page_output(image_seed(f"d{i}".encode()), TokenDistribution(), True).pieces) for i in range(300)]
    inside = [c for c in counts if 550 <= c <= 2100]
    assert len(inside) / len(counts) > 0.9
    assert max(counts) <= 5200
    assert 800 < statistics.median(counts) < 1300


def test_distribution_draws() -> None:
    rng = random.Random(1)
    dist = TokenDistribution()
    draws = [dist.draw(rng) for _ in range(5000)]
    assert min(draws) >= 600 and max(draws) <= 5000
    assert 0.01 < sum(d > 2000 for d in draws) / len(draws) < 0.06
    assert TokenDistribution(fixed=777).draw(rng) == 777
    assert TokenDistribution(fixed=777).mean() == 777
    assert 1000 < dist.mean() < 1300


def test_characters_per_token_is_about_four() -> None:
    page = page_output(image_seed(b"ratio"), TokenDistribution(), True)
    plain = [p for p in page.pieces if p not in SPECIAL_TOKENS]
    assert 3.0 < sum(map(len, plain)) / len(plain) <= 4.0


def test_tokenize_round_trips_and_keeps_special_tokens_whole() -> None:
    text = "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nhello world"
    pieces = tokenize(text)
    assert "".join(pieces) == text
    assert pieces[:3] == ["<|ref|>", "text", "<|/ref|>"]
    assert all(len(p) <= 4 for p in pieces if p not in SPECIAL_TOKENS)


def test_skip_special_tokens_drops_the_tags_but_keeps_their_content() -> None:
    pieces = tokenize("<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n# T")
    assert detokenize(pieces, skip_special_tokens=True) == "title[[1, 2, 3, 4]]\n# T"
    assert detokenize(pieces, skip_special_tokens=False) == "".join(pieces)


def test_ignore_eos_continues_to_exactly_n_tokens() -> None:
    page = page_output(image_seed(b"eos"), TokenDistribution(), True)
    longer = extend_pieces(page.seed, page.pieces, len(page.pieces) + 500, grounding=True)
    assert len(longer) == len(page.pieces) + 500
    assert tuple(longer[: len(page.pieces)]) == page.pieces
    assert extend_pieces(page.seed, page.pieces, 10, grounding=True) == list(page.pieces[:10])


def test_repeating_output_loops_one_phrase_to_the_limit() -> None:
    pieces = repeating_pieces(image_seed(b"loop"), 1500, grounding=True)
    assert len(pieces) == 1500
    tail = "".join(pieces[-400:])
    assert tail.count(REPEAT_PHRASE.strip()) >= 10


@pytest.mark.parametrize(("mode", "tokens"), [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)])
def test_fixed_modes_ignore_the_image_size(mode: str, tokens: int) -> None:
    assert image_tokens(1024, 1325, mode) == tokens
    assert image_tokens(300, 4000, mode) == tokens


def test_gundam_tokens_depend_on_the_aspect_ratio() -> None:
    assert image_tokens(1024, 1325) == 903  # portrait page: 2x3 tiles
    assert gundam_grid(1280, 1920) == (2, 3)
    assert image_tokens(640, 640) == 273  # fits in one tile: global view only
    assert image_tokens(500, 300) == 273
    assert gundam_grid(1920, 1280) == (3, 2)
    assert image_tokens(1600, 1600) > 273
    assert image_tokens(2000, 500) != image_tokens(1600, 1600)
    with pytest.raises(ValueError, match="unknown mode"):
        image_tokens(10, 10, "huge")
