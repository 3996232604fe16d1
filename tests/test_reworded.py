"""The reworded held-out queries' labels follow the documented rules from the catalog's fields."""

from __future__ import annotations

from demo.catalog import generate_catalog
from demo.reworded import QUERIES, fields_of, label
from vitrine.catalog import Product


def test_fields_are_read_from_title_attributes_and_description() -> None:
    product = Product(
        id="p1",
        title="Redfern red two-tone vegan leather quilted handbag",
        description="A quilted handbag in red vegan leather with a two-tone finish, made for work. Redfern "
        "quality with a one-year warranty.",
        category=("Fashion", "Bags", "Handbags"),
        brand="Redfern",
        attributes={"color": "red", "material": "vegan leather", "pattern": "two-tone"},
    )
    assert fields_of(product) == {
        "kind": "Handbags",
        "color": "red",
        "material": "vegan leather",
        "pattern": "two-tone",
        "brand": "Redfern",
        "style": "quilted",
        "use": "work",
    }


def test_grades_are_one_plus_the_preferred_conditions_met() -> None:
    products = [p for p, _ in generate_catalog(300, seed=3)]
    by_text = {q.text: q for q in label(products)}
    rainy = by_text["boots for rainy days"]
    for p in products:
        f = fields_of(p)
        if f["kind"] != "Boots":
            assert p.id not in rainy.relevant
        else:
            assert rainy.relevant[p.id] == 1 + (f["use"] == "rainy days") + (f["style"] == "waterproof")
    assert set(by_text["Redfern"].relevant) == {p.id for p in products if p.brand == "Redfern"}
    assert len(QUERIES) >= 40 and {q.kind_of_wording for q in QUERIES} == {
        "synonym",
        "misspelling",
        "brand",
        "usage",
    }
