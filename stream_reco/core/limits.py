"""Bounds on what the core keeps from one event, so no valid-looking input can grow memory without limit.

The schema lets a page category be 1024 characters with any number of levels, and ids hold any
characters (some cost 6 bytes each once JSON-escaped). The core keeps category paths as keys in a
visitor's state and in the shop-wide popularity, so it keys them by a bounded form (`category_key`):
at most `MAX_CATEGORY_DEPTH` levels and `MAX_CATEGORY_KEY_CHARS` characters. Real taxonomies sit far
below both (a few levels, tens of characters), so for them the key is the path itself.
"""

from __future__ import annotations

import hashlib

from stream_reco.core.events import CATEGORY_SEP

#: category levels kept as keys (deeper levels fold into their level-8 ancestor); real shops use 3-5
MAX_CATEGORY_DEPTH = 8
#: characters of a category key; a longer path keeps its head plus a hash of the whole (no collisions)
MAX_CATEGORY_KEY_CHARS = 256
#: distinct categories counted in one visitor's session (the least counted, then oldest, are dropped);
#: best-sellers are fetched for the top few only (candidates.POPULAR_CATEGORIES), so 32 loses nothing
MAX_SESSION_CATEGORIES = 32
_HASH_CHARS = 16  # hex digits of the hash suffix (64 bits)


def category_key(path: str) -> str:
    """The bounded key the core keeps for a category path (the path itself for any ordinary one).

    Idempotent (`category_key(category_key(p)) == category_key(p)`), so a key read back from a state
    and a path from the catalogue map to the same popularity and suppression entries.
    """
    if len(path) <= MAX_CATEGORY_KEY_CHARS and path.count(CATEGORY_SEP) < MAX_CATEGORY_DEPTH:
        return path
    parts = path.split(CATEGORY_SEP)
    path = CATEGORY_SEP.join(parts[:MAX_CATEGORY_DEPTH])
    if len(path) <= MAX_CATEGORY_KEY_CHARS:
        return path
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=_HASH_CHARS // 2).hexdigest()
    return path[: MAX_CATEGORY_KEY_CHARS - _HASH_CHARS - 1] + "~" + digest


def optional_category_key(path: str | None) -> str | None:
    """`category_key` that passes None and "" through."""
    return category_key(path) if path else path
