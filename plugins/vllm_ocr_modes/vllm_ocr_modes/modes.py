"""DeepSeek-OCR resolution modes: names → processor sizes, and the image token count the processor
produces for a page. Pure Python, importable without vLLM, torch or PIL.

The numbers reproduce vLLM's ``transformers_utils/processors/deepseek_ocr.py`` (itself adapted from
DeepSeek-OCR's ``process/image_process.py``) and must stay equal to it: vLLM reserves exactly
``num_image_tokens`` placeholder tokens for an image and the vision encoder must produce as many
embeddings.

    mode    base_size  image_size  crop_mode   tokens
    tiny       512        512       False        73   = 8*(8+1) + 1
    small      640        640       False       111   = 10*(10+1) + 1
    base      1024       1024       False       273   = 16*(16+1) + 1
    large     1280       1280       False       421   = 20*(20+1) + 1
    gundam    1024        640       True        273 + (rows*10)*(cols*10 + 1) for pages > 640x640

n = base_size/16/4 query tokens per side of the global view, plus one "newline" token per row and
one view separator. Gundam adds 640-pixel tiles: (cols, rows) is the grid of 2..6 tiles whose
aspect ratio is closest to the page's; each tile row gets a newline token too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 4
MIN_CROPS = 2
MAX_CROPS = 6
#: Pages at most this size on both sides are never tiled (hard-coded in the processor).
NO_TILE_MAX_SIDE = 640
#: The processor's tiler always cuts 640-pixel tiles (a module constant upstream).
TILE_SIZE = 640
#: Sizes the model was trained with; others are refused rather than silently degraded.
ALLOWED_SIZES = frozenset({512, 640, 1024, 1280})

#: Keys of mm_processor_kwargs this plugin understands (and removes before vLLM builds the processor).
MODE_KEYS = frozenset({"mode", "base_size", "image_size", "crop_mode"})


@dataclass(frozen=True, slots=True)
class Sizes:
    base_size: int
    image_size: int
    crop_mode: bool


MODES: dict[str, Sizes] = {
    "tiny": Sizes(512, 512, False),
    "small": Sizes(640, 640, False),
    "base": Sizes(1024, 1024, False),
    "large": Sizes(1280, 1280, False),
    "gundam": Sizes(1024, 640, True),
}
DEFAULT_MODE = "gundam"  # what upstream vLLM serves


class ModeError(ValueError):
    """mm_processor_kwargs that name no valid mode; vLLM reports it to the client as a bad request."""


def resolve_sizes(*kwargs_layers: Mapping[str, Any] | None) -> Sizes:
    """The processor sizes for merged mm_processor_kwargs (later layers win, e.g. server defaults
    then the request's). ``mode`` picks a preset; explicit ``base_size``/``image_size``/``crop_mode``
    override it. Nothing given: Gundam, as upstream."""
    merged: dict[str, Any] = {}
    for layer in kwargs_layers:
        if layer:
            merged.update({k: v for k, v in layer.items() if k in MODE_KEYS})
    mode = merged.get("mode", DEFAULT_MODE)
    if not isinstance(mode, str) or mode.lower() not in MODES:
        raise ModeError(f"mm_processor_kwargs: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    preset = MODES[mode.lower()]
    base_size = _size(merged, "base_size", preset.base_size)
    image_size = _size(merged, "image_size", preset.image_size)
    crop_mode = merged.get("crop_mode", preset.crop_mode)
    if not isinstance(crop_mode, bool):
        raise ModeError(f"mm_processor_kwargs: crop_mode must be true or false, got {crop_mode!r}")
    if crop_mode and image_size != TILE_SIZE:
        raise ModeError(f"mm_processor_kwargs: crop_mode needs image_size {TILE_SIZE} (the processor's tile size), got {image_size}")
    return Sizes(base_size, image_size, crop_mode)


def _size(merged: Mapping[str, Any], key: str, default: int) -> int:
    value = merged.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value not in ALLOWED_SIZES:
        raise ModeError(f"mm_processor_kwargs: {key} must be one of {sorted(ALLOWED_SIZES)}, got {value!r}")
    return value


def strip_mode_keys(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """kwargs without this plugin's keys (what the upstream processor constructor may see)."""
    return {k: v for k, v in kwargs.items() if k not in MODE_KEYS}


def _queries(size: int) -> int:
    return math.ceil((size // PATCH_SIZE) / DOWNSAMPLE_RATIO)


def tile_grid(width: int, height: int, image_size: int = TILE_SIZE) -> tuple[int, int]:
    """(cols, rows) of the tiling the processor picks (``count_tiles`` upstream, same tie rule)."""
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


def crop_ratio(width: int, height: int, sizes: Sizes) -> tuple[int, int]:
    """(cols, rows) of tiles for a page; (1, 1) means the global view only."""
    if (width <= NO_TILE_MAX_SIDE and height <= NO_TILE_MAX_SIDE) or not sizes.crop_mode:
        return (1, 1)
    return tile_grid(width, height, TILE_SIZE)


def num_image_tokens(width: int, height: int, sizes: Sizes) -> int:
    """Placeholder tokens for one image of ``width`` x ``height`` pixels (as sent) with ``sizes``."""
    if width <= 0 or height <= 0:
        raise ModeError(f"image size must be positive, got {width}x{height}")
    n = _queries(sizes.base_size)
    tokens = n * (n + 1) + 1
    cols, rows = crop_ratio(width, height, sizes)
    if cols > 1 or rows > 1:
        m = _queries(sizes.image_size)
        tokens += (rows * m) * (cols * m + 1)
    return tokens


__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "MODE_KEYS",
    "ModeError",
    "Sizes",
    "crop_ratio",
    "num_image_tokens",
    "resolve_sizes",
    "strip_mode_keys",
    "tile_grid",
]
