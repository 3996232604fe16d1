"""The shared state's pieces on a real PostgreSQL: migrations, the serving pointer's contract (file and
database backends alike), failures as UNAVAILABLE."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from gateway.config import GatewayConfig
from gateway.errors import Unavailable, status_of
from gateway.pg_events import PostgresEventStore
from gateway.pg_serving import PostgresServingPointer
from gateway.server import Gateway
from gateway.serving_pointer import FileServingPointer, ServingPointer, ServingVersions
from gateway.state_pg import MIGRATIONS, migrate
from operations.rollout import RolloutError, rollback
from vitrine.events import SCHEMA, Event, EventType
from vitrine.net import free_port

POINTERS = ["file", "postgres"]


@pytest.fixture(params=POINTERS)
def pointer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServingPointer]:
    opened: ServingPointer
    if request.param == "postgres":
        opened = PostgresServingPointer(request.getfixturevalue("postgres_dsn"))
    else:
        opened = FileServingPointer(tmp_path / "serving.json")
    yield opened
    opened.close()


def test_pointer_replaces_its_document_whole_or_not_at_all(pointer: ServingPointer) -> None:
    assert pointer.read() is None
    written = pointer.update(lambda state: {**state, "pending_version": 2})
    assert pointer.read() == written
    assert ServingVersions.of(written) == ServingVersions(1, 1, 2)

    def refuse(state: dict[str, Any]) -> dict[str, Any]:
        raise RolloutError("no")

    with pytest.raises(RolloutError):
        pointer.update(refuse)
    assert pointer.read() == written


def test_rollback_over_postgresql_pops_the_history(postgres_dsn: str) -> None:
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback(Path("unused.json"), postgres_dsn)
    pointer = PostgresServingPointer(postgres_dsn)
    try:
        pointer.update(
            lambda s: {"encoder_version": 3, "reranker_version": 2, "history": [{"encoder_version": 1}]}
        )
        with pytest.raises(ValueError):  # a document no gateway could read is never written
            pointer.update(lambda s: {**s, "encoder_version": "three"})
        assert rollback(Path("unused.json"), postgres_dsn) == (1, 1)
        assert pointer.read() is not None and pointer.read()["history"] == []  # type: ignore[index]
    finally:
        pointer.close()


def test_migrations_apply_once_when_gateways_start_together(postgres_dsn: str) -> None:
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                barrier.wait()
                applied.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(v for versions in applied for v in versions) == [m.version for m in MIGRATIONS]
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert rows == [(m.version, m.name) for m in MIGRATIONS]
        assert migrate(conn) == []
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' "
            "AND table_schema = current_schema() ORDER BY ordinal_position"
        ).fetchall()
    sqlite_columns = [
        r[1] for r in sqlite3.connect(":memory:").executescript(SCHEMA).execute("PRAGMA table_info(events)")
    ]
    assert [c[0] for c in columns] == sqlite_columns  # one record, two stores


def test_an_unreachable_database_is_unavailable_with_a_bounded_message() -> None:
    store = PostgresEventStore(f"postgresql://vitrine@127.0.0.1:{free_port()}/vitrine", retention_days=0)
    event = Event("e1", "u1", "s1", "p1", EventType.VIEW, 1.7e9)
    with pytest.raises(Unavailable) as err:
        store.record([event], received=1.7e9)
    code, message = status_of(err.value)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message.startswith("state: unavailable (PostgreSQL:") and len(message) <= 400
    store.close()


async def test_a_malformed_state_url_fails_at_start_without_echoing_it() -> None:
    # Async: the gateway is built inside a running loop, as its server builds it.
    with pytest.raises(ValueError) as err:
        Gateway(GatewayConfig(port=0, state_url="postgresql://vitrine:s3cret@db:5432/vitrine?sslmod=require"))
    assert "s3cret" not in str(err.value) and "state_url" in str(err.value)


async def test_followers_hear_their_own_schema_only(postgres_database: Callable[[], str]) -> None:
    """Deployments sharing a database in schemas of their own do not switch each other."""
    ours, theirs = PostgresServingPointer(postgres_database()), PostgresServingPointer(postgres_database())
    heard: list[ServingVersions] = []
    following = asyncio.create_task(ours.follow(heard.append))
    try:

        async def hear(versions: ServingVersions) -> None:
            for _ in range(500):
                if versions in heard:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{versions} not heard")

        await asyncio.to_thread(ours.update, lambda s: {**s, "pending_version": 2})
        await hear(ServingVersions(1, 1, 2))  # listening by now: it reads the row after LISTEN
        await asyncio.to_thread(theirs.update, lambda s: {**s, "pending_version": 5})
        await asyncio.to_thread(ours.update, lambda s: {**s, "pending_version": 3})
        await hear(ServingVersions(1, 1, 3))  # notifications arrive in commit order: 5 would be first
        assert ServingVersions(1, 1, 5) not in heard
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        ours.close()
        theirs.close()
