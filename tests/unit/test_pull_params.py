"""The parameters of GET /recommendations/{visitor} (stream/http_view.py): what a front end may ask, and the
400 message it gets otherwise (docs/contracts.md, "HTTP")."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from stream_reco.stream.http_view import MAX_ITEMS, BadRequest, parse_pull


def q(*pairs: tuple[str, str]) -> MultiDict[str]:
    return MultiDict(pairs)


def test_defaults_are_the_home_list_of_the_configured_size() -> None:
    pull = parse_pull("u-1", q())
    assert (pull.placement, pull.n, pull.item, pull.cart, pull.category, pull.exclude) == (
        "home", None, None, (), None, ())


def test_each_placement_takes_its_context() -> None:
    assert parse_pull("u-1", q(("placement", "product"), ("item", "sku-1"))).item == "sku-1"
    cart = parse_pull("u-1", q(("placement", "cart"), ("item", "a"), ("item", "b")))
    assert (cart.cart, cart.item) == (("a", "b"), None)
    assert parse_pull("u-1", q(("placement", "cart"))).cart == (), "no item: the visitor's own cart"
    scoped = parse_pull("u-1", q(("placement", "category"), ("category", "Furniture/Sofas"), ("n", "5"),
                                 ("exclude", "x,y")))
    assert (scoped.category, scoped.n, scoped.exclude) == ("Furniture/Sofas", 5, ("x", "y"))
    assert parse_pull("u-1", q(("placement", "product"), ("item", "i"))).arguments() == {
        "k": None, "placement": "product", "item": "i", "cart": (), "category": None, "exclude": ()}


@pytest.mark.parametrize(("pairs", "message"), [
    ((("placement", "basket"),), "placement must be one of home, product, cart, category"),
    ((("placement", "product"),), "placement=product needs exactly one item=ID"),
    ((("placement", "product"), ("item", "a"), ("item", "b")), "placement=product needs exactly one item=ID"),
    ((("placement", "category"),), "placement=category needs category=PATH"),
    ((("category", "A/B"),), "category=PATH goes with placement=category"),
    ((("item", "a"),), "placement=home takes no item parameter"),
    ((("n", "ten"),), "n must be a whole number"),
    ((("n", "0"),), f"n must be between 1 and {MAX_ITEMS}"),
    ((("n", str(MAX_ITEMS + 1)),), f"n must be between 1 and {MAX_ITEMS}"),
    ((("exclude", ",".join(f"i{k}" for k in range(MAX_ITEMS + 1))),), f"exclude takes at most {MAX_ITEMS} ids"),
    ((("placement", "product"), ("item", "x" * 300)), "item must be 1 to 256 characters"),
])
def test_bad_parameters_say_what_is_wrong(pairs: tuple[tuple[str, str], ...], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("=", "=").replace("(", r"\(")):
        parse_pull("u-1", q(*pairs))


def test_an_overlong_visitor_key_is_refused() -> None:
    with pytest.raises(BadRequest, match="the visitor must be 1 to 256 characters"):
        parse_pull("u" * 257, q())
