"""Shared fixtures. Cross-area fixtures (artifacts, servers) live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.index",
    "tests.fixtures.stack",
    "tests.fixtures.postgres",
]
