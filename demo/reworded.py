"""A second held-out query set, worded unlike the generator's ``"<colour> <material> <noun>"`` template.

The generator's own queries (``demo.catalog.generate_queries``) repeat the words of the titles they were
drawn from, which flatters any method that matches words. These queries say the same needs in other
words: synonyms ("trainers", "rucksack", "charcoal"), misspellings ("blak lether boots"), a brand
alone, and usage phrases ("boots for rainy days"). They were written before any weight or mode was
tuned, and no tuning reads them.

Relevance follows from the catalog by rules, so the labels hold at any catalog size or seed:

- every query names ``must`` conditions; a product is relevant only if it meets all of them;
- its grade is 1 plus the number of ``prefer`` conditions it meets (so 1 to 3);
- a condition is a field and a set of accepted values; the fields are read from the product:
  ``kind`` (the category's last level), ``color``, ``material``, ``pattern`` (its attributes),
  ``brand``, ``style`` (the title's word or words just before the product noun, e.g. "chelsea",
  "noise-cancelling") and ``use`` (the description's "made for <use>").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitrine.catalog import LabelledQuery, Product

FILE_NAME = "queries-reworded.jsonl"

Condition = Mapping[str, frozenset[str]]


def _c(**fields: str | tuple[str, ...]) -> dict[str, frozenset[str]]:
    return {k: frozenset((v,) if isinstance(v, str) else v) for k, v in fields.items()}


@dataclass(frozen=True)
class Reworded:
    text: str
    must: Condition
    prefer: Condition = field(default_factory=dict)
    kind_of_wording: str = "synonym"  # synonym | misspelling | brand | usage


def _q(text: str, wording: str, must: Condition, prefer: Condition | None = None) -> Reworded:
    return Reworded(text, must, prefer or {}, wording)


S, M, B, U = "synonym", "misspelling", "brand", "usage"
QUERIES: tuple[Reworded, ...] = (
    # synonyms: other words for the kind, the colour or the material
    _q("crimson booties", S, _c(kind="Boots", color="red")),
    _q("scarlet trainers", S, _c(kind="Sneakers", color="red")),
    _q("charcoal tee", S, _c(kind="T-Shirts", color="grey")),
    _q("rose coloured frock", S, _c(kind="Dresses", color="pink")),
    _q("cream purse", S, _c(kind="Handbags", color=("beige", "white"))),
    _q("titanium timepiece", S, _c(kind="Watches", material="titanium")),
    _q("porcelain coffee cup", S, _c(kind="Mugs", material="porcelain")),
    _q("brass desk light", S, _c(kind="Lamps", material="brass")),
    _q("walnut seat", S, _c(kind="Chairs", material="walnut")),
    _q("cordless headset", S, _c(kind="Headphones", style="wireless")),
    _q("ochre rucksack", S, _c(kind="Backpacks", color=("yellow", "orange"))),
    _q("carbon cycling lid", S, _c(kind="Helmets", material="carbon")),
    _q("jogging shoes", S, _c(kind="Sneakers"), _c(style="running", use="running")),
    _q("emerald gown", S, _c(kind="Dresses", color="green")),
    _q("tan suede booties", S, _c(kind="Boots", color=("brown", "beige")), _c(material="suede")),
    _q("jet black kicks", S, _c(kind="Sneakers", color="black")),
    # misspellings
    _q("blak lether boots", M, _c(kind="Boots", color="black"), _c(material="leather")),
    _q("whtie sneekers", M, _c(kind="Sneakers", color="white")),
    _q("hedphones noise canceling", M, _c(kind="Headphones", style="noise-cancelling")),
    _q("waterprof backpak", M, _c(kind="Backpacks", style="waterproof")),
    _q("cermic mugg", M, _c(kind="Mugs", material="ceramic")),
    _q("chronograf wach", M, _c(kind="Watches", style="chronograph")),
    _q("sued chelsea boot", M, _c(kind="Boots", style="chelsea"), _c(material="suede")),
    _q("organik cotton tshirt", M, _c(kind="T-Shirts", style="organic"), _c(material="cotton")),
    _q("mips helmit", M, _c(kind="Helmets", style="MIPS")),
    _q("dimable tabel lamp", M, _c(kind="Lamps", style="dimmable")),
    _q("silk wrapp dress", M, _c(kind="Dresses", style="wrap"), _c(material="silk")),
    _q("quilted hand bag", M, _c(kind="Handbags", style="quilted")),
    # a brand alone, or a brand and a kind
    _q("Redfern", B, _c(brand="Redfern")),
    _q("kestrel", B, _c(brand="Kestrel")),
    _q("Lumen & Co", B, _c(brand="Lumen & Co")),
    _q("zephyr", B, _c(brand="Zephyr")),
    _q("Ostara watch", B, _c(brand="Ostara", kind="Watches")),
    _q("pilgrim backpack", B, _c(brand="Pilgrim", kind="Backpacks")),
    _q("Wexford chairs", B, _c(brand="Wexford", kind="Chairs")),
    # usage phrases: what it is for, not what it is called
    _q("boots for rainy days", U, _c(kind="Boots"), _c(use="rainy days", style="waterproof")),
    _q("something to drink tea from", U, _c(kind="Mugs"), _c(use="tea time")),
    _q("gift for a coffee lover", U, _c(kind="Mugs"), _c(use=("morning coffee", "gifting"))),
    _q("bag to carry to work", U, _c(kind="Handbags"), _c(use="work", style="structured")),
    _q("shoes for the gym", U, _c(kind="Sneakers"), _c(use="the gym")),
    _q("what to wear to a wedding", U, _c(kind="Dresses"), _c(use="weddings")),
    _q("headphones for the daily commute", U, _c(kind="Headphones"), _c(use="commuting")),
    _q("watch for scuba diving", U, _c(kind="Watches"), _c(use="diving", style="dive")),
    _q("light for reading in bed", U, _c(kind="Lamps"), _c(use=("reading", "bedside tables"))),
    _q("seating for the patio", U, _c(kind="Chairs"), _c(use="patios")),
    _q("head protection for mountain biking", U, _c(kind="Helmets"), _c(use="mountain trails")),
    _q("pack for a camping trip", U, _c(kind="Backpacks"), _c(use="camping")),
)

_USE = re.compile(r"made for ([^.]+)\.")


def fields_of(product: Product) -> dict[str, str]:
    """The fields the rules read, from the product as the catalog stores it."""
    title, brand = product.title, product.brand
    rest = title[len(brand) :].split() if brand and title.startswith(brand) else title.split()
    material = product.attributes.get("material", "")
    # title: <brand> <colour> [<pattern>] <material> <style> <noun>; the style is the word after the
    # material (materials may be two words, e.g. "vegan leather").
    words = " ".join(rest)
    style = ""
    if material and f" {material} " in f" {words} ":
        after = f" {words} ".split(f" {material} ", 1)[1].split()
        style = after[0] if after else ""
    use = _USE.search(product.description)
    return {
        "kind": product.category[-1] if product.category else "",
        "color": product.attributes.get("color", ""),
        "material": material,
        "pattern": product.attributes.get("pattern", ""),
        "brand": brand,
        "style": style,
        "use": use.group(1).strip() if use else "",
    }


def _meets(values: Mapping[str, str], condition: Condition) -> list[bool]:
    return [values.get(name, "") in accepted for name, accepted in condition.items()]


def label(products: Sequence[Product], queries: Sequence[Reworded] = QUERIES) -> list[LabelledQuery]:
    """Graded relevance of every query over ``products`` by the rules above; queries with no relevant
    product in this catalog are left out (they cannot be scored)."""
    fields = [(p.id, fields_of(p)) for p in products]
    out = []
    for q in queries:
        grades = {
            pid: 1.0 + sum(_meets(values, q.prefer)) for pid, values in fields if all(_meets(values, q.must))
        }
        if grades:
            out.append(LabelledQuery(text=q.text, relevant=grades))
    return out


def write_reworded(products: Sequence[Product], out: Path) -> Path:
    """``queries-reworded.jsonl`` beside a catalog, in the format ``vitrine.catalog.read_queries`` reads."""
    with out.open("w", encoding="utf-8") as fh:
        for q in label(products):
            fh.write(json.dumps({"query": q.text, "relevant": q.relevant}) + "\n")
    return out
