"""A process that writes products through an index backend and prints each acknowledged batch; the
durability contract test kills it (or the index service it writes to) with SIGKILL.

Usage: python -m tests.contract.writer ADDRESS COLLECTION
"""

from __future__ import annotations

import asyncio
import sys

from gateway.index_backends import open_index
from tests.contract.catalog import records


async def main(address: str, collection: str) -> None:
    index = open_index(address, collection)
    await index.ensure_collection(30.0)
    for batch in range(1000):
        chunk = records(5, seed=batch, prefix=f"w{batch}-")
        await index.upsert(chunk, 30.0)
        print("acked " + " ".join(r.product.id for r in chunk), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
