"""Reason sentences: short, deterministic, sensibly pluralised."""

from __future__ import annotations

import pytest

from stream_reco.core import explain


@pytest.mark.parametrize(
    ("count", "leaf", "text"),
    [
        (3, "Stand mixers", "Because you viewed 3 stand mixers"),
        (1, "Stand mixers", "Because you viewed a stand mixer"),
        (2, "Sofas", "Because you viewed 2 sofas"),
        (1, "Ovens", "Because you viewed an oven"),
        (4, "Accessories", "Because you viewed 4 accessories"),
        (1, "Accessories", "Because you viewed an accessory"),
        (2, "Watch", "Because you viewed 2 watches"),
        (2, "Bookshelf", "Because you viewed 2 bookshelves"),
        (1, "Bookshelves", "Because you viewed a bookshelf"),
        (5, "Furniture", "Because you viewed furniture"),
        (3, "753", "Because you viewed 3 items in 753"),
        (1, "753", "Because you viewed 1 item in 753"),
        (2, "", explain.SIMILAR_FALLBACK),
    ],
)
def test_because_viewed(count, leaf, text):
    assert explain.because_viewed(count, leaf) == text


@pytest.mark.parametrize(
    ("word", "one"),
    [("Boxes", "Box"), ("Glasses", "Glass"), ("Lenses", "Lense"), ("Berries", "Berry"), ("Bus", "Bus")],
)
def test_singular(word, one):
    assert explain.singular(word) == one


def test_often_viewed_with_uses_short_title():
    assert explain.often_viewed_with("Oak coffee table") == "Often viewed with Oak coffee table"
    long = "An extraordinarily long product title that goes on and on about features"
    text = explain.often_viewed_with(long)
    assert text.endswith(explain.ELLIPSIS) and len(text) <= len("Often viewed with ") + explain.TITLE_MAX_CHARS
    assert explain.often_viewed_with("") == explain.SIMILAR_FALLBACK


@pytest.mark.parametrize(
    ("half_life_h", "text"),
    [(24.0, "Popular in Sofas today"), (168.0, "Popular in Sofas this week"), (720.0, "Popular in Sofas this month"),
     (5000.0, "Popular in Sofas lately")],
)
def test_popular_in(half_life_h, text):
    assert explain.popular_in("Sofas", half_life_h) == text


def test_popular_shop_wide_and_fallback():
    assert explain.popular_in("", 168.0) == "Popular this week"
    assert explain.similar_to_liked() == "Similar to items you liked"


def test_reasons_are_deterministic():
    assert explain.because_viewed(3, "Kettles") == explain.because_viewed(3, "Kettles")
