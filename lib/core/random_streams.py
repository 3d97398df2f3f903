"""Random streams keyed by a seed and a position (an image's split and index): a stream of its own for every key of
one length."""

from __future__ import annotations

import numpy as np

_WORD = 2**32


def keyed_rng(seed: int, *keys: int) -> np.random.Generator:
    """NumPy's generator of ``(seed, *keys)``: a different stream for every different tuple of one number of keys.

    NumPy turns the list into 32-bit words (an integer of 2**32 or more into two) and pads it with zeros to 4 words,
    so lists that differ by trailing zeros within 4 words are one stream: ``default_rng([2**32 + s, 0, 0])`` (words
    s, 1, 0, 0) was ``default_rng([s, 1])``, and the first training image of seed ``s + 2**32`` was the first test
    image of seed ``s``. Seeds below 2**32 keep their streams (every data set generated and measured so far); a
    larger one is given as its two words followed by the keys and a 1, which no smaller seed's list of as many keys
    can equal. Tuples of different numbers of keys may still meet (``(0, 0)`` and ``(0, 0, 0)``).

    Args:
        seed: a seed in 0..2**63 - 1 (the range of every seed parameter).
        keys: small non-negative integers (below 2**32) that tell the streams of one seed apart; every caller of a
            kind passes as many.
    """
    if seed < _WORD:
        return np.random.default_rng([seed, *keys])
    return np.random.default_rng([seed % _WORD, seed // _WORD, *keys, 1])
