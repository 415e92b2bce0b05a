"""A fixed-size Bloom filter: the purchases and dismissals a visitor made beyond the exact `owned_cap`.

Why a Bloom filter: the promise is that a bought (non-repurchasable) or dismissed item *never* comes
back, with bounded memory per visitor. A false positive only hides an item that would have been
allowed (the safe side); there are no false negatives. Why this small class and not a library:
bloom-filter2 is unmaintained since 2021, and rbloom (a native extension) hashes with Python's per-process
salted `hash()` unless given a hash function, so a filter written to the changelog by one process would
need our own stable hash anyway, in rbloom's byte layout; what remains is a few lines over hashlib's
blake2b (Kirsch-Mitzenmacher double hashing: two 64-bit halves of one digest give all k probes).

Design: `BITS` = 40960 bits (5 KiB; 6.8 KB as base64 in the state) and `HASHES` = 7, for `CAPACITY` =
4096 items: at capacity the theoretical false-positive rate is 0.73% and the documented bound is
`FP_RATE_BOUND` = 1% (tests/unit/test_trust_core.py measures it). Past capacity the rate grows (2x
capacity: ~15%), hiding more items, never showing one. A visitor gets a filter only on their first
eviction from the exact sets, so ordinary visitors pay nothing.
"""

from __future__ import annotations

import base64
import hashlib
import math

#: filter size in bits (a multiple of 8)
BITS = 40_960
#: probes per key
HASHES = 7


def _probes(kind: str, key: str) -> list[int]:
    digest = hashlib.blake2b(f"{kind}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little") | 1
    return [(h1 + i * h2) % BITS for i in range(HASHES)]


class BloomFilter:
    """Set membership with false positives only. Keys carry a `kind` ("p" purchased, "d" dismissed), so
    one filter holds both sets and a dismissed-then-forgotten item is not taken for a purchase."""

    __slots__ = ("bits",)

    #: items the filter is sized for (purchases plus dismissals beyond `owned_cap`)
    CAPACITY = 4096
    #: documented false-positive rate at `CAPACITY` (theory: 0.73%)
    FP_RATE_BOUND = 0.01

    def __init__(self, bits: bytearray | None = None) -> None:
        self.bits = bits if bits is not None else bytearray(BITS // 8)

    def add(self, kind: str, key: str) -> None:
        bits = self.bits
        for p in _probes(kind, key):
            bits[p >> 3] |= 1 << (p & 7)

    def contains(self, kind: str, key: str) -> bool:
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in _probes(kind, key))

    def union(self, other: BloomFilter) -> None:
        """Add every member of `other` (same size: both are built from the module constants)."""
        if len(self.bits) != len(other.bits):
            raise ValueError("owned-items filters of different sizes cannot be united")
        united = int.from_bytes(self.bits, "little") | int.from_bytes(other.bits, "little")
        self.bits = bytearray(united.to_bytes(len(self.bits), "little"))

    @staticmethod
    def theoretical_fp_rate(n: int) -> float:
        """(1 - e^(-k n / m))^k: the false-positive rate after `n` distinct members."""
        return (1.0 - math.exp(-HASHES * n / BITS)) ** HASHES

    def to_bytes(self) -> bytes:
        return bytes(self.bits)

    @classmethod
    def from_bytes(cls, b: bytes) -> BloomFilter:
        if len(b) != BITS // 8:
            raise ValueError(f"owned-items filter of {len(b)} bytes, expected {BITS // 8}")
        return cls(bytearray(b))

    def to_text(self) -> str:
        """base64, for the JSON state."""
        return base64.b64encode(self.bits).decode("ascii")

    @classmethod
    def from_text(cls, s: str) -> BloomFilter:
        return cls.from_bytes(base64.b64decode(s, validate=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BloomFilter) and self.bits == other.bits

    __hash__ = None  # type: ignore[assignment]
