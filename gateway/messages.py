"""Products between the catalog's dataclass and the gateway's wire messages, for server and clients alike."""

from __future__ import annotations

from vitrine.catalog import Product
from vitrine.gateway.v1 import gateway_pb2 as pb


def product_to_pb(p: Product) -> pb.Product:
    return pb.Product(
        id=p.id,
        title=p.title,
        description=p.description,
        category=list(p.category),
        brand=p.brand,
        price=p.price,
        image_uri=p.image_uri,
        attributes=p.attributes,
    )


def product_from_pb(p: pb.Product, image_uri: str = "") -> Product:
    return Product(
        id=p.id.strip(),
        title=p.title,
        description=p.description,
        category=tuple(p.category),
        brand=p.brand,
        price=p.price,
        image_uri=p.image_uri or image_uri,
        attributes=dict(p.attributes),
    )
