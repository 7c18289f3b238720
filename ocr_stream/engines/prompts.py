"""DeepSeek-OCR prompts and resolution modes: what text goes with a page, and what size to render it.

Imported by the producer (``target_size``), the DeepSeek engine (``resolve_prompt``) and local mode.
The names here are a contract: keep them stable.

Prompt presets (``resolve_prompt``):

    markdown  "<image>\\n<|grounding|>Convert the document to markdown."   layout blocks with boxes
    free      "<image>\\nFree OCR."                                       plain text, no boxes
    figure    "<image>\\nParse the figure."                               charts and figures

Any other value is taken as literal prompt text; ``<image>\\n`` is put in front when it has no
``<image>`` placeholder, because the model (and vLLM's processor) needs exactly one.

Modes (``MODE_SPECS``) are the model's processor settings (base_size, image_size, crop_mode), from
DeepSeek-OCR's own config and vLLM's ``transformers_utils/processors/deepseek_ocr.py``:

    mode    base  image  crop  image tokens (global view)   vision tokens (paper)
    tiny     512   512    no    73                           64
    small    640   640    no   111                          100
    base    1024  1024    no   273                          256
    large   1280  1280    no   421                          400
    gundam  1024   640   yes   273 + tiles (see image_tokens)

The processor adds one "newline" token per row of the n x n grid and one view separator, so the
placeholder count is n*(n+1)+1 where n = base_size/64. Gundam adds, for a page larger than 640x640,
(rows*10) * (cols*10 + 1) tokens of 640-px tiles, where (cols, rows) is the tiling with 2..6 tiles
whose aspect ratio is closest to the page's: a portrait A4 page gets 2x3 tiles, 903 tokens in all.
Upstream vLLM serves only Gundam; the other modes need the plugins/vllm_ocr_modes plugin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..contracts import Mode
from ..errors import BadInputError

IMAGE_PLACEHOLDER = "<image>"

PROMPT_PRESETS: dict[str, str] = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
}

#: Prompt text longer than this is refused (it also bounds PageEvent.prompt).
MAX_PROMPT_CHARS = 8192


def resolve_prompt(name_or_text: str) -> str:
    """The full prompt for a preset name (``markdown``, ``free``, ``figure``; case-insensitive) or for
    literal prompt text, which gets ``<image>\\n`` in front when it has no ``<image>`` placeholder.

    Raises BadInputError for an empty prompt, one with several ``<image>`` placeholders, or one
    longer than MAX_PROMPT_CHARS.
    """
    stripped = name_or_text.strip()
    if not stripped:
        raise BadInputError("prompt is empty: give a preset (markdown, free, figure) or prompt text")
    preset = PROMPT_PRESETS.get(stripped.lower())
    if preset is not None:
        return preset
    count = name_or_text.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise BadInputError(f"prompt has {count} {IMAGE_PLACEHOLDER} placeholders; one page image needs exactly one")
    text = name_or_text if count == 1 else f"{IMAGE_PLACEHOLDER}\n{stripped}"
    if len(text) > MAX_PROMPT_CHARS:
        raise BadInputError(f"prompt is {len(text)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    return text


def is_grounding_prompt(prompt: str) -> bool:
    """True when the model will answer with <|ref|>/<|det|> layout tags."""
    return "<|grounding|>" in prompt


# --- modes -------------------------------------------------------------------------------------

PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 4
#: A page at most this size (both sides) is never tiled, whatever the mode (hard-coded upstream).
NO_TILE_MAX_SIDE = 640
MIN_CROPS = 2
MAX_CROPS = 6


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """One DeepSeek-OCR resolution mode: the processor's sizes and what the producer renders."""

    mode: Mode
    base_size: int
    """Side of the square global view the page is padded/resized to."""
    image_size: int
    """Side of a tile (crop_mode) or of the square the page is stretched to (tiny/small)."""
    crop_mode: bool
    """Cut the page into image_size tiles in addition to the global view (Gundam)."""
    vision_tokens: int
    """The paper's count of valid vision tokens of the global view (64/100/256/400/256)."""
    render_box: tuple[int, int] | None
    """Tiny/small: the page is fitted into this box. None: fitted to the long side instead."""
    render_long_side: int | None
    """Cap of the long side for modes whose processor resizes to a fixed square (base/large);
    None: the configured long side (gundam, whose tiles profit from more pixels)."""


MODE_SPECS: dict[Mode, ModeSpec] = {
    Mode.TINY: ModeSpec(Mode.TINY, 512, 512, False, 64, (512, 512), None),
    Mode.SMALL: ModeSpec(Mode.SMALL, 640, 640, False, 100, (640, 640), None),
    Mode.BASE: ModeSpec(Mode.BASE, 1024, 1024, False, 256, None, 1024),
    Mode.LARGE: ModeSpec(Mode.LARGE, 1280, 1280, False, 400, None, 1280),
    Mode.GUNDAM: ModeSpec(Mode.GUNDAM, 1024, 640, True, 256, None, None),
}

DEFAULT_LONG_SIDE = 1600


def _queries(size: int) -> int:
    return math.ceil((size // PATCH_SIZE) / DOWNSAMPLE_RATIO)


def tile_grid(width: int, height: int, *, image_size: int = 640) -> tuple[int, int]:
    """The (cols, rows) tiling DeepSeek-OCR's processor picks for a page: among the grids of
    MIN_CROPS..MAX_CROPS tiles, the aspect ratio closest to the page's; ties go to the larger grid
    when the page has more than half its pixels (the processor's own rule, reproduced exactly)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    ratios = sorted(
        {
            (i, j)
            for n in range(MIN_CROPS, MAX_CROPS + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if MIN_CROPS <= i * j <= MAX_CROPS
        },
        key=lambda r: r[0] * r[1],
    )
    best, best_diff, area = (1, 1), float("inf"), width * height
    for ratio in ratios:
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def image_tokens(mode: Mode, width: int, height: int) -> int:
    """Image placeholder tokens the processor gives a page of this size in this mode (what vLLM
    counts as prompt tokens for the image)."""
    spec = MODE_SPECS[Mode(mode)]
    n = _queries(spec.base_size)
    tokens = n * (n + 1) + 1
    if spec.crop_mode and not (width <= NO_TILE_MAX_SIDE and height <= NO_TILE_MAX_SIDE):
        cols, rows = tile_grid(width, height, image_size=spec.image_size)
        m = _queries(spec.image_size)
        tokens += (rows * m) * (cols * m + 1)
    return tokens


def _fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    scale = min(1.0, box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def target_size(mode: Mode, width: int, height: int, *, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """The (width, height) the producer should render a page of ``width`` x ``height`` pixels (or
    points) to for ``mode``, keeping its aspect ratio and never enlarging it.

    gundam: long side ``long_side`` (~1,600 px: the tiles are cut from the page upscaled to
    640*cols x 640*rows, so more pixels are wasted and fewer get upscaled); base / large: long side
    at most 1,024 / 1,280, the square the processor resizes to anyway (more is wasted bytes);
    small / tiny: fitted into 640x640 / 512x512.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"page size must be positive, got {width}x{height}")
    spec = MODE_SPECS[Mode(mode)]
    if spec.render_box is not None:
        return _fit(width, height, *spec.render_box)
    side = long_side if spec.render_long_side is None else min(long_side, spec.render_long_side)
    return _fit(width, height, side, side)


__all__ = [
    "DEFAULT_LONG_SIDE",
    "MODE_SPECS",
    "ModeSpec",
    "PROMPT_PRESETS",
    "image_tokens",
    "is_grounding_prompt",
    "resolve_prompt",
    "target_size",
    "tile_grid",
]
