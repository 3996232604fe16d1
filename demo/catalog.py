"""A seeded synthetic catalog for demos and benchmarks: products, their photos, and labelled queries.

Machines without a model hub have no product photos either, so the generator draws them: each category
has its own silhouette and each product a colour and pattern, which is what a CLIP image tower can tell
apart, so image search over a generated catalog returns visibly related products. The generator also
writes a labelled query file (see ``vitrine.catalog.read_queries``) whose relevant ids follow from the
same attributes, so the evaluation command has ground truth at any catalog size.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from demo.reworded import FILE_NAME as REWORDED_FILE
from demo.reworded import write_reworded
from vitrine.catalog import LabelledQuery, Product, write_catalog


@dataclass(frozen=True)
class _Kind:
    path: tuple[str, ...]
    noun: str
    shape: str
    price: tuple[float, float]
    materials: tuple[str, ...]
    adjectives: tuple[str, ...]
    uses: tuple[str, ...]


_KINDS = (
    _Kind(
        ("Fashion", "Shoes", "Boots"),
        "ankle boots",
        "boot",
        (60, 260),
        ("leather", "suede", "rubber"),
        ("lace-up", "chelsea", "waterproof", "heeled"),
        ("city walks", "rainy days", "the office"),
    ),
    _Kind(
        ("Fashion", "Shoes", "Sneakers"),
        "sneakers",
        "sneaker",
        (40, 180),
        ("canvas", "mesh", "leather"),
        ("low-top", "running", "retro", "lightweight"),
        ("running", "the gym", "weekends"),
    ),
    _Kind(
        ("Fashion", "Clothing", "T-Shirts"),
        "t-shirt",
        "tshirt",
        (10, 45),
        ("cotton", "linen", "jersey"),
        ("crew-neck", "oversized", "slim-fit", "organic"),
        ("summer days", "layering", "lounging"),
    ),
    _Kind(
        ("Fashion", "Clothing", "Dresses"),
        "dress",
        "dress",
        (35, 220),
        ("silk", "cotton", "chiffon"),
        ("midi", "wrap", "maxi", "pleated"),
        ("evenings out", "weddings", "summer"),
    ),
    _Kind(
        ("Fashion", "Bags", "Handbags"),
        "handbag",
        "bag",
        (45, 400),
        ("leather", "canvas", "vegan leather"),
        ("tote", "crossbody", "structured", "quilted"),
        ("work", "travel", "everyday carry"),
    ),
    _Kind(
        ("Fashion", "Accessories", "Watches"),
        "watch",
        "watch",
        (50, 900),
        ("steel", "titanium", "ceramic"),
        ("chronograph", "minimalist", "automatic", "dive"),
        ("daily wear", "diving", "formal occasions"),
    ),
    _Kind(
        ("Home", "Kitchen", "Mugs"),
        "mug",
        "mug",
        (6, 30),
        ("ceramic", "stoneware", "porcelain"),
        ("handmade", "glazed", "large", "speckled"),
        ("morning coffee", "tea time", "gifting"),
    ),
    _Kind(
        ("Home", "Lighting", "Lamps"),
        "table lamp",
        "lamp",
        (25, 260),
        ("brass", "glass", "ceramic"),
        ("dimmable", "vintage", "arched", "modern"),
        ("reading", "bedside tables", "living rooms"),
    ),
    _Kind(
        ("Home", "Furniture", "Chairs"),
        "chair",
        "chair",
        (60, 600),
        ("oak", "walnut", "steel"),
        ("dining", "lounge", "stackable", "upholstered"),
        ("dining rooms", "home offices", "patios"),
    ),
    _Kind(
        ("Electronics", "Audio", "Headphones"),
        "headphones",
        "headphones",
        (25, 450),
        ("plastic", "aluminium", "leather"),
        ("wireless", "noise-cancelling", "over-ear", "foldable"),
        ("commuting", "studio work", "travel"),
    ),
    _Kind(
        ("Sports", "Outdoor", "Backpacks"),
        "backpack",
        "backpack",
        (30, 220),
        ("nylon", "canvas", "polyester"),
        ("hiking", "rolltop", "waterproof", "30-litre"),
        ("day hikes", "commuting", "camping"),
    ),
    _Kind(
        ("Sports", "Cycling", "Helmets"),
        "bike helmet",
        "helmet",
        (35, 250),
        ("polycarbonate", "EPS", "carbon"),
        ("aero", "ventilated", "MIPS", "commuter"),
        ("road cycling", "mountain trails", "city rides"),
    ),
)

_COLOURS = {
    "black": (25, 25, 28),
    "white": (240, 240, 236),
    "red": (200, 30, 40),
    "blue": (35, 75, 190),
    "green": (40, 140, 70),
    "yellow": (235, 200, 40),
    "brown": (120, 75, 40),
    "pink": (235, 130, 170),
    "grey": (128, 128, 132),
    "navy": (20, 30, 80),
    "orange": (240, 120, 30),
    "beige": (215, 195, 160),
}
_BRANDS = (
    "Northwind",
    "Aurelia",
    "Kestrel",
    "Lumen & Co",
    "Maple Row",
    "Ostara",
    "Pilgrim",
    "Quillon",
    "Redfern",
    "Solstice",
    "Tamsin",
    "Umber",
    "Vantage",
    "Wexford",
    "Yarrow",
    "Zephyr",
)
_PATTERNS = ("solid", "striped", "dotted", "two-tone")


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[float, float, float, float],
    fill: tuple[int, int, int],
    accent: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "boot":
        draw.rectangle((x0 + 0.15 * w, y0, x0 + 0.55 * w, y1 - 0.2 * h), fill=fill)
        draw.rounded_rectangle((x0 + 0.15 * w, y1 - 0.35 * h, x1, y1), radius=0.12 * h, fill=fill)
        draw.rectangle((x0 + 0.12 * w, y1 - 0.08 * h, x1, y1), fill=accent)
    elif shape == "sneaker":
        draw.chord((x0, y0 + 0.25 * h, x1, y1 + 0.5 * h), 180, 360, fill=fill)
        draw.rectangle((x0, y1 - 0.12 * h, x1, y1), fill=accent)
        for i in range(4):
            lx = x0 + (0.35 + 0.08 * i) * w
            draw.line((lx, y0 + 0.4 * h, lx + 0.05 * w, y0 + 0.55 * h), fill=accent, width=6)
    elif shape == "tshirt":
        draw.polygon(
            [
                (x0, y0 + 0.2 * h),
                (x0 + 0.3 * w, y0),
                (x0 + 0.7 * w, y0),
                (x1, y0 + 0.2 * h),
                (x1 - 0.12 * w, y0 + 0.4 * h),
                (x1 - 0.22 * w, y0 + 0.32 * h),
                (x1 - 0.22 * w, y1),
                (x0 + 0.22 * w, y1),
                (x0 + 0.22 * w, y0 + 0.32 * h),
                (x0 + 0.12 * w, y0 + 0.4 * h),
            ],
            fill=fill,
        )
        draw.chord((x0 + 0.38 * w, y0 - 0.08 * h, x0 + 0.62 * w, y0 + 0.1 * h), 0, 180, fill=accent)
    elif shape == "dress":
        draw.polygon(
            [
                (x0 + 0.35 * w, y0),
                (x0 + 0.65 * w, y0),
                (x0 + 0.6 * w, y0 + 0.35 * h),
                (x1, y1),
                (x0, y1),
                (x0 + 0.4 * w, y0 + 0.35 * h),
            ],
            fill=fill,
        )
        draw.rectangle((x0 + 0.38 * w, y0 + 0.33 * h, x0 + 0.62 * w, y0 + 0.4 * h), fill=accent)
    elif shape == "bag":
        draw.arc((x0 + 0.25 * w, y0, x1 - 0.25 * w, y0 + 0.6 * h), 180, 360, fill=accent, width=14)
        draw.rounded_rectangle((x0, y0 + 0.3 * h, x1, y1), radius=0.08 * w, fill=fill)
        draw.rectangle((cx - 0.06 * w, y0 + 0.45 * h, cx + 0.06 * w, y0 + 0.52 * h), fill=accent)
    elif shape == "watch":
        draw.rectangle((cx - 0.15 * w, y0, cx + 0.15 * w, y1), fill=accent)
        draw.ellipse((cx - 0.35 * w, cy - 0.35 * h, cx + 0.35 * w, cy + 0.35 * h), fill=fill)
        draw.ellipse((cx - 0.28 * w, cy - 0.28 * h, cx + 0.28 * w, cy + 0.28 * h), fill=(245, 245, 240))
        draw.line((cx, cy, cx, cy - 0.22 * h), fill=(20, 20, 20), width=6)
        draw.line((cx, cy, cx + 0.16 * w, cy), fill=(20, 20, 20), width=6)
    elif shape == "mug":
        draw.rounded_rectangle((x0 + 0.1 * w, y0 + 0.15 * h, x1 - 0.25 * w, y1), radius=0.05 * w, fill=fill)
        draw.arc((x1 - 0.45 * w, y0 + 0.3 * h, x1, y0 + 0.75 * h), 270, 90, fill=fill, width=18)
        draw.ellipse((x0 + 0.1 * w, y0 + 0.1 * h, x1 - 0.25 * w, y0 + 0.22 * h), fill=accent)
    elif shape == "lamp":
        draw.polygon(
            [
                (x0 + 0.2 * w, y0 + 0.45 * h),
                (x0 + 0.35 * w, y0),
                (x0 + 0.65 * w, y0),
                (x0 + 0.8 * w, y0 + 0.45 * h),
            ],
            fill=fill,
        )
        draw.rectangle((cx - 0.03 * w, y0 + 0.45 * h, cx + 0.03 * w, y1 - 0.08 * h), fill=accent)
        draw.ellipse((x0 + 0.25 * w, y1 - 0.14 * h, x1 - 0.25 * w, y1), fill=accent)
    elif shape == "chair":
        draw.rectangle((x0 + 0.2 * w, y0, x0 + 0.3 * w, y1), fill=fill)
        draw.rectangle((x0 + 0.2 * w, y0, x0 + 0.75 * w, y0 + 0.12 * h), fill=fill)
        draw.rectangle((x0 + 0.2 * w, cy, x1 - 0.1 * w, cy + 0.1 * h), fill=accent)
        draw.rectangle((x1 - 0.2 * w, cy, x1 - 0.1 * w, y1), fill=fill)
    elif shape == "headphones":
        draw.arc((x0 + 0.1 * w, y0, x1 - 0.1 * w, y1 - 0.2 * h), 180, 360, fill=fill, width=22)
        draw.rounded_rectangle((x0, cy - 0.1 * h, x0 + 0.25 * w, y1 - 0.1 * h), radius=0.06 * w, fill=accent)
        draw.rounded_rectangle((x1 - 0.25 * w, cy - 0.1 * h, x1, y1 - 0.1 * h), radius=0.06 * w, fill=accent)
    elif shape == "backpack":
        draw.rounded_rectangle((x0 + 0.1 * w, y0 + 0.1 * h, x1 - 0.1 * w, y1), radius=0.2 * w, fill=fill)
        draw.rounded_rectangle(
            (x0 + 0.25 * w, cy, x1 - 0.25 * w, y1 - 0.08 * h), radius=0.05 * w, fill=accent
        )
        draw.arc((cx - 0.12 * w, y0, cx + 0.12 * w, y0 + 0.2 * h), 180, 360, fill=accent, width=10)
    else:  # helmet
        draw.chord((x0, y0 + 0.1 * h, x1, y1 + 0.6 * h), 180, 360, fill=fill)
        for i in range(3):
            vx = x0 + (0.3 + 0.15 * i) * w
            draw.ellipse((vx, y0 + 0.3 * h, vx + 0.08 * w, y0 + 0.42 * h), fill=accent)
        draw.rectangle((x0 + 0.05 * w, y1 - 0.2 * h, x1 - 0.05 * w, y1 - 0.14 * h), fill=accent)


def render_product_image(
    kind_shape: str, colour: tuple[int, int, int], pattern: str, seed: int, size: int = 640
) -> Image.Image:
    """A studio-style product shot: soft background, the category's silhouette in the product's colour."""
    rng = np.random.default_rng(seed)
    base = rng.integers(225, 250)
    background = np.full((size, size, 3), base, dtype=np.float32)
    background += np.linspace(0, -25, size, dtype=np.float32)[:, None, None]
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    margin = size * float(rng.uniform(0.12, 0.22))
    dx, dy = (float(v) for v in rng.uniform(-0.05, 0.05, 2) * size)
    box = (margin + dx, margin + dy, size - margin + dx, size - margin + dy)
    accent = tuple(int(c) for c in np.clip(np.array(colour) * 0.55 + 20, 0, 255))
    draw.ellipse((box[0], box[3] - 0.04 * size, box[2], box[3] + 0.04 * size), fill=(200, 200, 200))
    _draw_shape(draw, kind_shape, box, colour, accent)  # type: ignore[arg-type]
    if pattern != "solid":
        mask_rgb = Image.new("RGB", (size, size), (0, 0, 0))
        _draw_shape(ImageDraw.Draw(mask_rgb), kind_shape, box, (255, 255, 255), (255, 255, 255))
        mask = mask_rgb.convert("L")
        overlay = Image.new("RGB", (size, size), accent)
        stripes = Image.new("L", (size, size), 0)
        sd = ImageDraw.Draw(stripes)
        step = size // 16
        if pattern == "striped":
            for y in range(0, size, step):
                sd.rectangle((0, y, size, y + step // 3), fill=255)
        elif pattern == "dotted":
            for y in range(step // 2, size, step):
                for x in range(step // 2, size, step):
                    sd.ellipse((x - step // 5, y - step // 5, x + step // 5, y + step // 5), fill=255)
        else:
            sd.rectangle((0, size // 2, size, size), fill=255)
        image.paste(overlay, (0, 0), Image.fromarray(np.minimum(np.asarray(mask), np.asarray(stripes))))
    image = image.filter(ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 4, (size, size, 1)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def generate_catalog(n: int, seed: int = 0, image_size: int = 640) -> Iterator[tuple[Product, Any]]:
    """Seeded products with their attributes; images are rendered lazily by ``write_generated``."""
    rng = random.Random(seed)
    colour_names = list(_COLOURS)
    for i in range(n):
        kind = _KINDS[i % len(_KINDS)] if i < len(_KINDS) else rng.choice(_KINDS)
        colour = rng.choice(colour_names)
        material = rng.choice(kind.materials)
        adjective = rng.choice(kind.adjectives)
        brand = rng.choice(_BRANDS)
        pattern = rng.choice(_PATTERNS)
        pattern_word = "" if pattern == "solid" else f"{pattern} "
        title = f"{brand} {colour} {pattern_word}{material} {adjective} {kind.noun}"
        description = (
            f"A {adjective} {kind.noun} in {colour} {material}"
            f"{'' if pattern == 'solid' else ' with a ' + pattern + ' finish'}, "
            f"made for {rng.choice(kind.uses)}. "
            f"{brand} quality with a {rng.choice(('one-year', 'two-year', 'lifetime'))} warranty."
        )
        lo, hi = kind.price
        price = round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 2)
        pid = f"p{i:06d}"
        product = Product(
            id=pid,
            title=title,
            description=description,
            category=kind.path,
            brand=brand,
            price=price,
            image_uri=f"images/{pid}.jpg",
            attributes={"color": colour, "material": material, "pattern": pattern},
        )
        yield product, (kind.shape, _COLOURS[colour], pattern, seed * 1_000_003 + i, image_size)


def generate_queries(products: Sequence[Product], n: int, seed: int = 0) -> list[LabelledQuery]:
    """Queries naming a colour and a product kind; relevant: same kind and colour (grade 2), same kind
    with the material named too scores grade 3, same kind in another colour is not relevant."""
    rng = random.Random(seed + 7)
    by_kind_colour: dict[tuple[str, str], list[Product]] = {}
    for p in products:
        by_kind_colour.setdefault((p.category[-1], p.attributes.get("color", "")), []).append(p)
    keys = sorted(k for k, v in by_kind_colour.items() if v)
    queries = []
    for key in rng.sample(keys, min(n, len(keys))):
        members = by_kind_colour[key]
        noun = next(k.noun for k in _KINDS if k.path[-1] == key[0])
        material = rng.choice([p.attributes["material"] for p in members])
        text = f"{key[1]} {material} {noun}"
        grades = {p.id: 3.0 if p.attributes.get("material") == material else 2.0 for p in members}
        queries.append(LabelledQuery(text=text, relevant=grades))
    return queries


def write_generated(
    out: str | Path, n: int, seed: int = 0, n_queries: int = 50, image_size: int = 640, progress: bool = True
) -> Path:
    """Write ``catalog.jsonl``, ``images/*.jpg``, ``queries.jsonl`` and the reworded held-out queries
    (``demo.reworded``) under ``out``; returns the catalog."""
    catalog = write_rows(out, n, seed, n_queries, image_size)
    for _ in render_images(out, n, seed, image_size, progress):
        pass
    return catalog


def write_rows(out: str | Path, n: int, seed: int = 0, n_queries: int = 50, image_size: int = 640) -> Path:
    """Everything of ``write_generated`` but the photos (a second or so for thousands of products):
    ``render_images`` draws those, so a caller can store each product as soon as its photo exists."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    products = [product for product, _ in generate_catalog(n, seed, image_size)]
    catalog = out / "catalog.jsonl"
    write_catalog(catalog, products)
    queries = generate_queries(products, n_queries, seed)
    with (out / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"query": q.text, "relevant": q.relevant}) + "\n")
    write_reworded(products, out / REWORDED_FILE)
    return catalog


def render_images(
    out: str | Path, n: int, seed: int = 0, image_size: int = 640, progress: bool = False
) -> Iterator[Product]:
    """Each product of the catalog ``write_rows`` wrote, in catalog order, once its photo is on disk
    (drawn now unless a previous run left it there). A photo is written whole under a temporary name,
    then renamed, so a reader never sees half of one."""
    from tqdm import tqdm

    images = Path(out) / "images"
    images.mkdir(parents=True, exist_ok=True)
    for product, spec in tqdm(
        generate_catalog(n, seed, image_size), total=n, desc="catalog", unit="product", disable=not progress
    ):
        target = Path(out) / product.image_uri
        if not target.exists():
            buf = io.BytesIO()
            render_product_image(*spec).save(buf, format="JPEG", quality=90)
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(buf.getvalue())
            partial.replace(target)
        yield product
