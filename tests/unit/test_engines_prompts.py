"""Prompt presets, mode specs and render sizes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocr_stream.contracts import Mode, PageEvent
from ocr_stream.engines.prompts import MODE_SPECS, image_tokens, is_grounding_prompt, resolve_prompt, target_size
from ocr_stream.errors import BadInputError


def test_presets() -> None:
    assert resolve_prompt("markdown") == "<image>\n<|grounding|>Convert the document to markdown."
    assert resolve_prompt(" Free ") == "<image>\nFree OCR."
    assert resolve_prompt("figure") == "<image>\nParse the figure."
    # The contract's default prompt is the markdown preset.
    assert PageEvent.model_fields["prompt"].default == resolve_prompt("markdown")
    assert is_grounding_prompt(resolve_prompt("markdown")) and not is_grounding_prompt(resolve_prompt("free"))


def test_literal_prompts() -> None:
    assert resolve_prompt("Describe this image in detail.") == "<image>\nDescribe this image in detail."
    assert resolve_prompt("<image>\n<|grounding|>OCR this image.") == "<image>\n<|grounding|>OCR this image."
    assert resolve_prompt("Read it: <image>") == "Read it: <image>"


@pytest.mark.parametrize("bad", ["", "   ", "<image><image> twice", "x" * 9000])
def test_bad_prompts(bad: str) -> None:
    with pytest.raises(BadInputError, match="prompt"):
        resolve_prompt(bad)


def test_mode_specs() -> None:
    assert set(MODE_SPECS) == set(Mode)
    assert [MODE_SPECS[m].vision_tokens for m in (Mode.TINY, Mode.SMALL, Mode.BASE, Mode.LARGE)] == [64, 100, 256, 400]
    assert [image_tokens(m, 1131, 1600) for m in (Mode.TINY, Mode.SMALL, Mode.BASE, Mode.LARGE, Mode.GUNDAM)] == [73, 111, 273, 421, 903]
    assert image_tokens(Mode.GUNDAM, 640, 480) == 273


def test_target_sizes() -> None:
    a4 = (595, 842)  # points
    big = (2480, 3508)  # A4 at 300 DPI
    assert target_size(Mode.GUNDAM, *big) == (1131, 1600)
    assert target_size(Mode.GUNDAM, *big, long_side=2000) == (1414, 2000)
    assert target_size(Mode.BASE, *big) == (724, 1024)
    assert target_size(Mode.LARGE, *big) == (905, 1280)
    assert target_size(Mode.SMALL, *big) == (452, 640)
    assert target_size(Mode.TINY, *big) == (362, 512)
    assert target_size(Mode.TINY, 2000, 500) == (512, 128)
    assert target_size(Mode.GUNDAM, *a4) == a4  # never enlarged
    with pytest.raises(ValueError):
        target_size(Mode.BASE, 0, 10)


@given(w=st.integers(1, 20000), h=st.integers(1, 20000), mode=st.sampled_from(list(Mode)))
def test_target_size_keeps_aspect_and_bounds(w: int, h: int, mode: Mode) -> None:
    tw, th = target_size(mode, w, h)
    assert 1 <= tw <= w and 1 <= th <= h
    spec = MODE_SPECS[mode]
    if spec.render_box is not None:
        assert tw <= spec.render_box[0] and th <= spec.render_box[1]
    else:
        assert max(tw, th) <= (spec.render_long_side or 1600)
    if (tw, th) != (w, h):
        # The aspect ratio is kept up to rounding each side to whole pixels (a 100x6720 strip
        # becomes 8x512, not 7.62x512).
        assert abs(tw - th * w / h) <= 1 or abs(th - tw * h / w) <= 1
