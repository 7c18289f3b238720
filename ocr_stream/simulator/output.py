"""DeepSeek-OCR-shaped output, derived deterministically from the image bytes (pure, no I/O).

The same image always gives the same page: its SHA-256 seeds a ``random.Random`` that picks the
page's output length (from :class:`TokenDistribution`) and its blocks::

    <|ref|>title<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>
    # Some Title Words

    <|ref|>text<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>
    words words words ...

    <|ref|>table<|/ref|><|det|>[[...]]<|/det|>
    <table><tr><td>..</td></tr></table>

Boxes are on DeepSeek-OCR's 0-999 scale, top to bottom. Tokens are simulated: each grounding tag
is one special token and plain text is cut into pieces of up to 4 characters (about what the real
tokenizer gives for English), so ``len(pieces)`` is the completion token count the server reports.

Also here: image-token counts per DeepSeek-OCR mode, as vLLM's processor counts them.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

SPECIAL_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

# DeepSeek-OCR's native resolutions: (image size, vision tokens per side after 16px patches and 4x
# compression). Tiny 512 -> 8x8=64, Small 640 -> 10x10=100, Base 1024 -> 256, Large 1280 -> 400.
MODES: dict[str, int] = {"tiny": 512, "small": 640, "base": 1024, "large": 1280}
GUNDAM_GLOBAL = 1024
GUNDAM_TILE = 640
GUNDAM_MIN_TILES = 2
GUNDAM_MAX_TILES = 9


def _view_tokens(size: int) -> int:
    q = size // 16 // 4
    return q * q + q  # vLLM also counts one row-separator token per row


def image_tokens(width: int, height: int, mode: str = "gundam") -> int:
    """Prompt tokens one image takes: a view's q*q tokens plus one separator per row plus one
    view separator, summed over the global view and, in Gundam mode, the 640 px tiles.

    Tiny/Small/Base/Large: 73/111/273/421 (64/100/256/400 vision tokens). Gundam: the 1024 global
    view (273) plus, unless the page fits in 640x640, a cols x rows grid of 640 tiles chosen by
    aspect ratio (2-9 tiles): 2x3 for a portrait page, 903 in all.
    """
    if mode in MODES:
        return _view_tokens(MODES[mode]) + 1
    if mode != "gundam":
        raise ValueError(f"unknown mode {mode!r}; expected one of tiny, small, base, large, gundam")
    total = _view_tokens(GUNDAM_GLOBAL) + 1
    if width <= GUNDAM_TILE and height <= GUNDAM_TILE:
        return total
    cols, rows = gundam_grid(width, height)
    q = GUNDAM_TILE // 16 // 4
    return total + (q * cols) * (q * rows) + q * rows


def gundam_grid(width: int, height: int) -> tuple[int, int]:
    """(cols, rows) of 640 px tiles for a page, picked like DeepSeek-OCR's dynamic_preprocess: the
    grid of 2-9 tiles whose aspect ratio is closest to the image's (ties go to more tiles when
    the image is large enough to fill them)."""
    aspect = width / height
    ratios = sorted(
        {(i, j) for n in range(GUNDAM_MIN_TILES, GUNDAM_MAX_TILES + 1) for i in range(1, n + 1) for j in range(1, n + 1)
         if GUNDAM_MIN_TILES <= i * j <= GUNDAM_MAX_TILES},
        key=lambda r: r[0] * r[1],
    )
    best = (1, 2)
    best_diff = math.inf
    area = width * height
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * GUNDAM_TILE * GUNDAM_TILE * cols * rows:
            best = (cols, rows)
    return best


@dataclass(frozen=True)
class TokenDistribution:
    """Output tokens per page: log-normal around ``median`` clipped to [``low``, ``high``], and with
    probability ``tail`` a dense page drawn uniformly from [``high``, ``tail_max``]. ``fixed`` > 0
    overrides it all (every page that many tokens, as in the H100 measurements)."""

    median: float = 1000.0
    sigma: float = 0.35
    low: int = 600
    high: int = 2000
    tail: float = 0.03
    tail_max: int = 5000
    fixed: int = 0

    def draw(self, rng: random.Random) -> int:
        if self.fixed > 0:
            return self.fixed
        if self.tail > 0 and rng.random() < self.tail:
            return rng.randint(self.high, max(self.high, self.tail_max))
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(max(value, self.low), self.high))

    def mean(self) -> float:
        """Expected tokens per page (numerically, with a fixed seed: deterministic)."""
        if self.fixed > 0:
            return float(self.fixed)
        rng = random.Random(12345)
        n = 20000
        return sum(self.draw(rng) for _ in range(n)) / n


_WORDS = (
    "the of and to in is for that on with as by this are be from at or an which it was were not have "
    "has data model system page document table figure results method analysis value report total year "
    "section order market price rate growth company service customer account number date amount "
    "policy process design energy water health research study sample effect level time group "
    "first second new public general local annual national quarterly final review summary notes "
    "increase decrease compared against within between during under over after before each per "
    "revenue income cost balance assets capital interest credit payment invoice contract agreement"
).split()
_TITLE_WORDS = "Annual Report Summary Overview Results Financial Statement Chapter Introduction Methods Analysis Appendix".split()

PIECE_CHARS = 4


def tokenize(text: str) -> list[str]:
    """Cut text into simulated tokens: special tags whole, other text in pieces of <= 4 chars."""
    out: list[str] = []
    for part in _SPECIAL_RE.split(text):
        if not part:
            continue
        if part in SPECIAL_TOKENS:
            out.append(part)
        else:
            out.extend(part[i : i + PIECE_CHARS] for i in range(0, len(part), PIECE_CHARS))
    return out


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def _paragraph(rng: random.Random, target_chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < target_chars:
        s = _sentence(rng, rng.randint(6, 16))
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)


def _table(rng: random.Random, target_chars: int) -> str:
    cols = rng.randint(2, 5)
    cells_per_row = "".join(f"<td>{rng.choice(_WORDS)}</td>" for _ in range(cols))
    rows = [f"<tr>{cells_per_row}</tr>"]
    while sum(len(r) for r in rows) < target_chars:
        rows.append("<tr>" + "".join(f"<td>{rng.randint(0, 99999) / 100:.2f}</td>" for _ in range(cols)) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


_HEADER_TOKENS = 12  # <|ref|> label <|/ref|> <|det|> [[x1, y1, x2, y2]] <|/det|> and separators

_FILLER = (" and", " the", " of", " to", " in", " is", " for", " on", " as", " by", " at", " or")


def fit_pieces(pieces: list[str], n: int, rng: random.Random) -> list[str]:
    """Exactly ``n`` tokens from a rendered page: cut (never inside a grounding header: the cut
    moves back before it) or padded with short words, ending on a full stop."""
    if len(pieces) == n:
        return pieces
    out = pieces[:n]
    if len(pieces) > n:
        opened = max((i for i, p in enumerate(out) if p == "<|ref|>"), default=-1)
        if opened >= 0 and "<|/det|>" not in out[opened:]:
            out = out[:opened]
            while out and out[-1].strip() == "":
                out.pop()
    while len(out) < n:
        out.append(rng.choice(_FILLER))
    if n > 1 and out[-1] not in SPECIAL_TOKENS:
        out[-1] = "."
    return out


def _blocks(rng: random.Random, target_tokens: int, header_tokens: int) -> list[tuple[str, str]]:
    """(label, body) pairs whose tokens (with ``header_tokens`` a block) add up to about
    ``target_tokens``. The last block is always a paragraph, so cutting the page to the exact
    count only ever shortens running text."""
    blocks: list[tuple[str, str]] = []
    title = " ".join(rng.choice(_TITLE_WORDS) for _ in range(rng.randint(2, 5)))
    blocks.append(("title", f"# {title}"))
    used = len(tokenize(blocks[0][1])) + header_tokens
    has_table = rng.random() < 0.4
    has_image = rng.random() < 0.3
    while used < target_tokens:
        left = target_tokens - used
        if left < 260:
            blocks.append(("text", _paragraph(rng, max(1, left - header_tokens) * PIECE_CHARS)))
            break
        roll = rng.random()
        if has_table and roll < 0.25:
            has_table = False
            body = _table(rng, min(left - 200, rng.randint(100, 600)) * PIECE_CHARS)
            label = "table"
        elif has_image and roll < 0.4:
            has_image = False
            body = ""
            label = "image"
        elif roll < 0.5:
            body = "## " + " ".join(rng.choice(_TITLE_WORDS) for _ in range(rng.randint(1, 4)))
            label = "sub_title"
        else:
            body = _paragraph(rng, min(left - 200, rng.randint(40, 220)) * PIECE_CHARS)
            label = "text"
        blocks.append((label, body))
        used += len(tokenize(body)) + header_tokens
    return blocks


def _boxes(rng: random.Random, blocks: list[tuple[str, str]]) -> list[tuple[int, int, int, int]]:
    # Headings are set large and figures take room without text: weigh them up.
    extra = {"title": 150, "sub_title": 80, "image": 300}
    weights = [max(len(body), 40) + extra.get(label, 0) for label, body in blocks]
    total = sum(weights)
    top, bottom = rng.randint(25, 60), rng.randint(940, 975)
    span = bottom - top
    y = float(top)
    out = []
    for w in weights:
        h = span * w / total
        y1, y2 = int(y), max(int(y) + 1, int(y + h) - 3)
        x1 = rng.randint(40, 90)
        x2 = rng.randint(880, 960)
        out.append((x1, min(y1, 998), x2, min(y2, 999)))
        y += h
    return out


def render_page(rng: random.Random, target_tokens: int, *, grounding: bool) -> str:
    """One page's text of about ``target_tokens`` tokens."""
    blocks = _blocks(rng, target_tokens, _HEADER_TOKENS if grounding else 1)
    parts = []
    for (label, body), (x1, y1, x2, y2) in zip(blocks, _boxes(rng, blocks)):
        if grounding:
            parts.append(f"<|ref|>{label}<|/ref|><|det|>[[{x1}, {y1}, {x2}, {y2}]]<|/det|>\n{body}")
        elif body:
            parts.append(body)
    return "\n\n".join(parts)


@dataclass(frozen=True)
class PageOutput:
    """What the model 'says' for one image: the natural output (ending with EOS) as tokens."""

    pieces: tuple[str, ...]
    seed: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def image_digest(image: bytes) -> bytes:
    """SHA-256 of the image bytes: the key of everything derived from one page."""
    return hashlib.sha256(image).digest()


def image_seed(image: bytes, salt: int = 0, *, digest: bytes | None = None) -> int:
    """A 64-bit seed from the image bytes (and a server seed), so one page always reads the same.
    Pass ``digest`` (:func:`image_digest`) when it is already known, to hash the image only once."""
    d = digest if digest is not None else image_digest(image)
    return int.from_bytes(hashlib.sha256(salt.to_bytes(8, "little", signed=True) + d).digest()[:8], "little")


@lru_cache(maxsize=256)
def page_output(seed: int, dist: TokenDistribution, grounding: bool) -> PageOutput:
    """The page for ``seed`` (cached: retries of one page cost nothing)."""
    rng = random.Random(seed)
    target = dist.draw(rng)
    text = render_page(rng, target, grounding=grounding)
    return PageOutput(tuple(fit_pieces(tokenize(text), target, rng)), seed)


def extend_pieces(seed: int, pieces: tuple[str, ...], n: int, *, grounding: bool) -> list[str]:
    """Exactly ``n`` tokens: ``pieces`` cut, or continued past the page's end (ignore_eos) with more
    text from the same seed, as a model that is not allowed to stop would do."""
    out = list(pieces[:n])
    rng = random.Random(seed ^ 0x5EED)
    while len(out) < n:
        out.extend(tokenize("\n\n" + render_page(rng, max(200, n - len(out)), grounding=grounding)))
    return out[:n]


REPEAT_PHRASE = "The total amount is due on the same date. "


def repeating_pieces(seed: int, n: int, *, grounding: bool) -> list[str]:
    """A page that starts normally and falls into an endless loop of one phrase (``n`` tokens)."""
    rng = random.Random(seed)
    head = tokenize(render_page(rng, 120, grounding=grounding) + "\n\n")
    out = head[: max(0, min(len(head), n // 4))]
    loop = tokenize(REPEAT_PHRASE)
    while len(out) < n:
        out.extend(loop)
    return out[:n]


def detokenize(pieces: list[str] | tuple[str, ...], *, skip_special_tokens: bool) -> str:
    """Join tokens as vLLM's detokenizer does; special tokens vanish when ``skip_special_tokens``."""
    if skip_special_tokens:
        return "".join(p for p in pieces if p not in SPECIAL_TOKENS)
    return "".join(pieces)


def text_tokens(text: str) -> int:
    """Approximate prompt tokens of a text part (special tags count one each)."""
    return len(tokenize(text))


GROUNDING_PROMPT = "<|grounding|>Convert the document to markdown."


def prompt_tokens(text: str, image_size: tuple[int, int] | None, mode: str = "gundam") -> int:
    """Prompt tokens of a request: BOS, the text, and the image's tokens in ``mode``."""
    return 1 + text_tokens(text) + (image_tokens(image_size[0], image_size[1], mode) if image_size else 0)


_SIZES: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
_SIZES_MAX = 4096


def image_size(image: bytes, *, digest: bytes | None = None) -> tuple[int, int]:
    """(width, height) of an encoded image, decoded for real so that a truncated file fails
    (any PIL error). JPEGs decode in draft mode (1/8 scale, ~3 ms for 1,600 px). Remembered by
    digest, not by the bytes themselves, so the cache stays small whatever the workload."""
    from PIL import Image

    key = digest if digest is not None else image_digest(image)
    size = _SIZES.get(key)
    if size is not None:
        _SIZES.move_to_end(key)
        return size
    with Image.open(io.BytesIO(image)) as img:
        width, height = img.size
        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
    _SIZES[key] = (width, height)
    if len(_SIZES) > _SIZES_MAX:
        _SIZES.popitem(last=False)
    return width, height
