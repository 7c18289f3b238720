"""Edit distance and character error rate."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ocr_stream.engines.metrics import character_error_rate, levenshtein, normalize_text


def _naive(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abcd é", max_size=90), st.text(alphabet="abcd é", max_size=90))
def test_levenshtein_matches_dynamic_programme(a: str, b: str) -> None:
    assert levenshtein(a, b) == _naive(a, b) == levenshtein(b, a)


def test_known_distances() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3
    long_a, long_b = "x" * 200 + "abc", "x" * 200 + "abd"
    assert levenshtein(long_a, long_b) == 1


def test_cer() -> None:
    assert character_error_rate("hello world", "hello  world\n") == 0.0
    assert character_error_rate("hello world", "hallo world") == 1 / 11
    assert character_error_rate("", "") == 0.0 and character_error_rate("", "x") == 1.0
    assert character_error_rate("a b", "a\nb", normalize=False) == 1 / 3
    assert normalize_text("  a \n\n b\t") == "a b"
