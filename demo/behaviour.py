"""Seeded shopper behaviour over a catalog: users with tastes, sessions with intent, a purchase funnel.

Fixed before any model was tuned on it (the evaluation's baselines and the two-tower read the same
output); its rules, so a reader can judge what a model may learn from it:

- **Users** have a latent taste: 2-3 favourite leaf categories (Dirichlet weights), 2 favourite colours,
  2-3 favourite brands, a price band (a log-price centre and width) and a usual device.
- **Items** have a latent popularity, log-normal (a long tail: a few items draw most views), shared by
  every user; that is what the popularity baseline can exploit.
- **Sessions** (4-12 per user, spread over ``days`` days before ``end``) have one intent: a category drawn
  from the user's taste (10% of sessions explore a random category). With probability 0.3 the intent
  drifts mid-session to a related category (same top-level section: a dress, then sandals).
- Within a session a shopper views 3-10 items of the intent category; an item is picked with probability
  proportional to ``popularity * affinity``, where affinity rewards the user's colours, brands and price
  band. Each view may lead to a click, a click to a favourite or a cart, a cart to a purchase (a
  contact-the-seller is rarer); each step's probability rises with affinity.
- Timestamps are seconds apart within a session, sessions hours to days apart; event ids are unique and
  stable for a seed.

The signal a model can find is therefore real but partial: taste persists across sessions (category,
colour, brand, price), popularity is global, and about a fifth of the picks are exploration noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitrine.catalog import Product
from vitrine.events import Event, EventType

DEVICES = ("mobile", "desktop", "tablet")


@dataclass(frozen=True)
class Taste:
    categories: dict[str, float]  # leaf category path -> weight
    colours: tuple[str, ...]
    brands: tuple[str, ...]
    log_price: float
    price_width: float
    device: str


def _leaf(p: Product) -> str:
    return p.category_path()


def _taste(rng: random.Random, leaves: Sequence[str], colours: Sequence[str], brands: Sequence[str]) -> Taste:
    k = min(len(leaves), rng.choice((2, 2, 3)))
    picked = rng.sample(list(leaves), k)
    raw = [rng.gammavariate(1.0, 1.0) for _ in picked]
    total = sum(raw)
    return Taste(
        categories={c: w / total for c, w in zip(picked, raw, strict=True)},
        colours=tuple(rng.sample(list(colours), min(2, len(colours)))),
        brands=tuple(rng.sample(list(brands), min(rng.choice((2, 3)), len(brands)))),
        log_price=rng.uniform(math.log(15), math.log(250)),
        price_width=rng.uniform(0.4, 0.9),
        device=rng.choices(DEVICES, weights=(0.6, 0.3, 0.1))[0],
    )


def _affinity(p: Product, taste: Taste) -> float:
    a = 1.0
    if p.attributes.get("color") in taste.colours:
        a *= 3.0
    if p.brand in taste.brands:
        a *= 2.5
    z = (math.log(max(p.price, 1.0)) - taste.log_price) / taste.price_width
    return a * (0.25 + math.exp(-0.5 * z * z))


def generate_behaviour(
    products: Sequence[Product],
    n_users: int,
    seed: int = 0,
    end: float = 1.7e9,
    days: float = 30.0,
    sessions: tuple[int, int] = (4, 12),
) -> list[Event]:
    """Seeded events of ``n_users`` users (ids ``u00000``...) over ``products``, in time order."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    by_leaf: dict[str, list[Product]] = {}
    for p in products:
        by_leaf.setdefault(_leaf(p), []).append(p)
    leaves = sorted(by_leaf)
    colours = sorted({p.attributes.get("color", "") for p in products} - {""}) or [""]
    brands = sorted({p.brand for p in products} - {""}) or [""]
    popularity = {
        p.id: float(v) for p, v in zip(products, nprng.lognormal(0.0, 1.0, len(products)), strict=True)
    }
    related = {
        leaf: [other for other in leaves if other != leaf and other.split(" > ")[0] == leaf.split(" > ")[0]]
        for leaf in leaves
    }
    events: list[Event] = []
    n = 0
    for u in range(n_users):
        user = f"u{u:05d}"
        taste = _taste(rng, leaves, colours, brands)
        n_sessions = rng.randint(*sessions)
        starts = sorted(end - rng.uniform(0, days * 86400) for _ in range(n_sessions))
        for s, start in enumerate(starts):
            session = f"{user}-s{s:03d}"
            if rng.random() < 0.1:
                intent = rng.choice(leaves)
            else:
                cats = list(taste.categories)
                intent = rng.choices(cats, weights=[taste.categories[c] for c in cats])[0]
            device = taste.device if rng.random() < 0.8 else rng.choice(DEVICES)
            t = start
            n_views = rng.randint(3, 10)
            drift_at = rng.randint(1, n_views - 1) if rng.random() < 0.3 and related[intent] else None
            for v in range(n_views):
                if v == drift_at:
                    intent = rng.choice(related[intent])
                pool = by_leaf[intent]
                weights = [popularity[p.id] * _affinity(p, taste) for p in pool]
                item = rng.choices(pool, weights=weights)[0]
                aff = _affinity(item, taste)
                steps = [EventType.VIEW]
                if rng.random() < min(0.85, 0.2 * aff):
                    steps.append(EventType.CLICK)
                    r = rng.random()
                    if r < min(0.5, 0.06 * aff):
                        steps.append(EventType.CART)
                        if rng.random() < 0.45:
                            steps.append(EventType.PURCHASE)
                    elif r < min(0.7, 0.12 * aff):
                        steps.append(EventType.FAVORITE)
                    elif r < min(0.75, 0.14 * aff):
                        steps.append(EventType.CONTACT)
                for kind in steps:
                    t = min(t + rng.uniform(5, 120), end)
                    events.append(
                        Event(f"ev{seed:03d}-{n:08d}", user, session, item.id, kind, round(t, 3), device)
                    )
                    n += 1
    events.sort(key=lambda e: (e.ts, e.event_id))
    return events
