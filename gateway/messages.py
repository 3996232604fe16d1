"""Products and events between the kernel's dataclasses and the gateway's protobuf messages, for server
and clients alike.

The messages name their fields as the dataclasses do, so the conversions go field by field over
``dataclasses.fields`` and a field added to ``Product`` or ``Event`` travels without an edit here;
``tests/test_shapes.py`` fails when a message and its dataclass disagree.
"""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

from gateway.events import Rejected, parse_event
from vitrine.catalog import Product
from vitrine.events import COLUMNS as EVENT_FIELDS
from vitrine.events import Event
from vitrine.gateway.v1 import gateway_pb2 as pb

_PRODUCT_TYPES = {
    name: typing.get_origin(kind) or kind for name, kind in typing.get_type_hints(Product).items()
}
"""Each product field's plain type (``tuple``, ``dict``, ``str``, ``float``): what a protobuf repeated
field, map or scalar becomes."""


def product_to_pb(p: Product) -> pb.Product:
    return pb.Product(**{f.name: getattr(p, f.name) for f in fields(p)})


def product_from_pb(p: pb.Product, image_uri: str = "") -> Product:
    """``image_uri`` stands in when the message has none (an upsert names the image it sends by path)."""
    values: dict[str, Any] = {f.name: _PRODUCT_TYPES[f.name](getattr(p, f.name)) for f in fields(Product)}
    return Product(**{**values, "id": p.id.strip(), "image_uri": p.image_uri or image_uri})


def event_from_pb(e: pb.Event) -> Event | Rejected:
    """The event of a RecordEvents message, or why it cannot be one (``gateway.events.parse_event``)."""
    return parse_event(**{name: getattr(e, name) for name in EVENT_FIELDS})
