"""OCR quality metrics: edit distance and character error rate. Pure functions, no dependencies.

The edit distance is Hyyrö's bit-parallel form of Myers' algorithm (one pass over the hypothesis,
Python integers as bit vectors), so a 5,000-character page is compared in milliseconds rather than
the seconds a textbook dynamic programme takes in Python.
"""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")


def levenshtein(a: str, b: str) -> int:
    """The Levenshtein distance (insertions, deletions, substitutions, each cost 1) of a and b."""
    if len(a) < len(b):
        a, b = b, a  # the shorter one becomes the bit vector: fewer bits per step
    if not b:
        return len(a)
    m = len(b)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return score


def normalize_text(text: str) -> str:
    """Whitespace runs (line breaks, indentation) become one space; ends are stripped. Layout is
    judged elsewhere: CER measures the characters."""
    return _WS.sub(" ", text).strip()


def character_error_rate(reference: str, hypothesis: str, *, normalize: bool = True) -> float:
    """Edit distance / reference length (0.0 is perfect; can exceed 1.0 for long garbage).
    With ``normalize`` (default) both texts go through ``normalize_text`` first. An empty reference
    gives 0.0 for an empty hypothesis and 1.0 otherwise."""
    if normalize:
        reference, hypothesis = normalize_text(reference), normalize_text(hypothesis)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return levenshtein(reference, hypothesis) / len(reference)


__all__ = ["character_error_rate", "levenshtein", "normalize_text"]
