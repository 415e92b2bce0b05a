"""Short, deterministic sentences that say which signal put an item on a visitor's list.

Each sentence is built from the evidence the candidate source recorded (a category count, an anchor
item, a popular category), never from free text, so the same inputs always give the same words:

>>> because_viewed(3, "Stand mixers")
'Because you viewed 3 stand mixers'
>>> because_viewed(1, "Sofas")
'Because you viewed a sofa'
>>> often_viewed_with("Oak coffee table")
'Often viewed with Oak coffee table'
>>> similar_to("Oak coffee table")
'Similar to Oak coffee table'
>>> popular_in("Sofas", 168.0)
'Popular in Sofas this week'
>>> viewed_recently()
'You viewed this recently'
>>> similar_sessions()
'Viewed by shoppers with similar sessions'
"""

from __future__ import annotations

#: longest item title quoted in a reason; longer titles are cut at a word boundary and get an ellipsis
TITLE_MAX_CHARS = 40
ELLIPSIS = "…"
SIMILAR_FALLBACK = "Similar to items you liked"
VIEWED_RECENTLY = "You viewed this recently"
SIMILAR_SESSIONS = "Viewed by shoppers with similar sessions"
POPULAR_FALLBACK = "Popular right now"
MORE_FALLBACK = "In stock now"
HOURS_PER_DAY = 24.0
HOURS_PER_WEEK = 168.0
HOURS_PER_MONTH = 720.0

# words whose plural English does not form with -s / -es / -ies
_IRREGULAR_SINGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot"}
_UNCOUNTABLE = frozenset({"furniture", "clothing", "jewellery", "jewelry", "equipment", "software", "luggage"})


def singular(noun_phrase: str) -> str:
    """Best-effort singular of a (usually plural) category name: "Stand mixers" -> "Stand mixer".

    Only the last word changes. Categories are usually plural already ("Sofas"), so this undoes the
    common English plural endings and leaves anything else as it is.
    """
    head, _, last = noun_phrase.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR_SINGULAR:
        new = _IRREGULAR_SINGULAR[low]
    elif low in _UNCOUNTABLE or len(low) <= 3 or low.endswith(("ss", "us", "is")):
        new = low
    elif low.endswith("ies"):
        new = low[:-3] + "y"
    elif low.endswith("lves"):
        new = low[:-3] + "f"
    elif low.endswith(("ches", "shes", "sses", "xes", "zes")):
        new = low[:-2]
    elif low.endswith("s"):
        new = low[:-1]
    else:
        new = low
    if last[:1].isupper():
        new = new[:1].upper() + new[1:]
    return f"{head} {new}" if head else new


def plural(noun_phrase: str) -> str:
    """Best-effort plural of a category name; names that already look plural stay as they are."""
    head, _, last = noun_phrase.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR_SINGULAR or low in _UNCOUNTABLE or (low.endswith("s") and not low.endswith("ss")):
        new = last
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        new = last[:-1] + "ies"
    elif low.endswith("lf"):
        new = last[:-1] + "ves"
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        new = last + "es"
    else:
        new = last + "s"
    return f"{head} {new}" if head else new


def _is_wordy(name: str) -> bool:
    """True for names made of words ("Sofas"), False for codes ("753", "C-12") that cannot be pluralised."""
    return any(c.isalpha() for c in name) and not any(c.isdigit() for c in name)


def because_viewed(count: int, leaf_category: str) -> str:
    """ "Because you viewed 3 stand mixers": count and lower-case leaf category, pluralised sensibly."""
    name = leaf_category.strip()
    if not name:
        return SIMILAR_FALLBACK
    if not _is_wordy(name):
        noun = "item" if count == 1 else "items"
        return f"Because you viewed {count} {noun} in {name}"
    low = name.lower()
    if low in _UNCOUNTABLE:
        return f"Because you viewed {low}"
    if count == 1:
        one = singular(low)
        article = "an" if one[:1] in "aeiou" else "a"
        return f"Because you viewed {article} {one}"
    return f"Because you viewed {count} {plural(low)}"


def short_title(title: str, limit: int = TITLE_MAX_CHARS) -> str:
    """A title cut to `limit` characters at a word boundary, with an ellipsis when cut."""
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    cut = title[: limit - len(ELLIPSIS)]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-") + ELLIPSIS


def often_viewed_with(anchor_title: str) -> str:
    """ "Often viewed with Oak coffee table" (the anchor's catalogue title, or its id when unknown)."""
    return f"Often viewed with {short_title(anchor_title)}" if anchor_title else SIMILAR_FALLBACK


def similar_to(item_title: str) -> str:
    """ "Similar to Oak coffee table": an embedding neighbour of the item on the page (its title, or its id)."""
    return f"Similar to {short_title(item_title)}" if item_title else SIMILAR_FALLBACK


def period_phrase(half_life_h: float) -> str:
    """The time span a popularity half-life stands for, in words."""
    if half_life_h <= HOURS_PER_DAY:
        return "today"
    if half_life_h <= HOURS_PER_WEEK:
        return "this week"
    if half_life_h <= HOURS_PER_MONTH:
        return "this month"
    return "lately"


def popular_in(leaf_category: str, half_life_h: float) -> str:
    """ "Popular in Sofas this week"; shop-wide popularity when there is no category."""
    period = period_phrase(half_life_h)
    if not leaf_category:
        return f"Popular {period}"
    return f"Popular in {leaf_category} {period}"


def more_in(leaf_category: str) -> str:
    """ "More in Stand mixers": an item offered because the visitor is in its category and no stronger
    signal was left (nobody bought it yet); claiming popularity or similarity would be untrue."""
    return f"More in {leaf_category}" if leaf_category else MORE_FALLBACK


def similar_to_liked() -> str:
    return SIMILAR_FALLBACK


def viewed_recently() -> str:
    """The reason of an item the visitor looked at earlier (the recently-viewed source)."""
    return VIEWED_RECENTLY


def similar_sessions() -> str:
    """The reason of an item that sessions sharing the visitor's items went on to view."""
    return SIMILAR_SESSIONS
