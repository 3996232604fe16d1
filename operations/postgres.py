"""Debian's PostgreSQL as a child server: a cluster of its own, started for real, killed for real.

For tests and for ``vitrine up --state postgres``: ``initdb`` makes a cluster in ``data_dir`` the first
time (kept across restarts), and the ``postgres`` server binary runs in the foreground as the launcher's
child, in its own process group, so ``kill`` (SIGKILL to the group) reaches the postmaster and every
backend, and a supervisor can reap and restart it on the same directory. ``pg_ctl start`` would
daemonize and leave nothing to supervise.

initdb and the server refuse to run as root. As root, both run as the ``postgres`` system user (the
Debian package creates it; ``nobody`` otherwise) through ``setpriv``, which execs, so the child's pid is
the postmaster's; the data directory is given to that user, and directories above it that deny it
search permission (a 0700 temporary directory) get ``o+x``, search only.

Durability is the server's: ``fsync=on`` and ``synchronous_commit=on``, so a committed transaction is
on disk before the client hears of it. Only TCP on loopback, trust authentication, no Unix socket: a
local cluster for one machine. A managed PostgreSQL replaces it in production (docs/PRODUCTION.md).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

from operations.launcher import ChildServer, LaunchError
from vitrine.net import free_port

SERVER_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    # After a crash, one syncfs of the data directory's file system instead of an fsync per file
    # (measured here: restart after kill -9 in ~1.5 s instead of ~4.5 s); as safe, Linux only.
    "recovery_init_sync_method": "syncfs",
    "listen_addresses": "",  # set from ``host``
    "unix_socket_directories": "",
    "max_connections": "200",
    "log_min_messages": "warning",
}
"""Settings passed on the server's command line (they override postgresql.conf)."""

RUN_AS = ("postgres", "nobody")
"""Users tried, in order, when running as root."""


def postgres_binaries() -> Path | None:
    """The directory of Debian's (or any) PostgreSQL server binaries: ``pg_config --bindir``, else the
    newest ``/usr/lib/postgresql/*/bin``; None when there are none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    candidates += [Path(p) for p in reversed(versions)]
    for path in candidates:
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            return path
    return None


def free_port_below_ephemeral(host: str = "127.0.0.1") -> int:
    """A free port under Linux's ephemeral range (32768-60999). A server restarted on a port from that
    range can find it taken as the source port of some outgoing connection (seen in kill -9 tests):
    PostgreSQL, which cannot bind port 0 and report it, gets one from below."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


def _run_as_user() -> pwd.struct_passwd | None:
    """The user the cluster runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LaunchError(f"PostgreSQL refuses root and none of the users {', '.join(RUN_AS)} exists")


def _grant_search(path: Path, user: pwd.struct_passwd) -> None:
    """Give ``user`` search permission on every directory above ``path`` that denies it (o+x)."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid == user.pw_gid and st.st_mode & stat.S_IXGRP:
            continue
        if not st.st_mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


class PostgresServer(ChildServer):
    """One PostgreSQL cluster in ``data_dir`` on ``host:port`` (0 = a free port below the ephemeral
    range, chosen now and kept for restarts); ``dsn`` names database ``database``, created on the first
    start."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        database: str = "vitrine",
        user: str = "vitrine",
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        bindir = postgres_binaries()
        if bindir is None:
            raise LaunchError(
                "PostgreSQL is not installed: `make postgres` (Debian's postgresql package) installs it"
            )
        self.bindir = bindir
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port_below_ephemeral(host)
        self.database = database
        self.user = user
        self.run_as = _run_as_user()
        settings = {**SERVER_SETTINGS, "listen_addresses": host}
        argv = [
            *self._as_user(),
            str(bindir / "postgres"),
            "-D", str(self.data_dir), "-p", str(self.port),
            *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")),
        ]  # fmt: skip
        super().__init__(
            "postgresql",
            argv,
            self._accepts,
            log_file=log_file,
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
            hint=f" (PostgreSQL on {host}:{self.port}, data {self.data_dir})",
        )

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    @property
    def admin_dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _as_user(self) -> list[str]:
        if self.run_as is None:
            return []
        uid, gid = self.run_as.pw_uid, self.run_as.pw_gid
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def check(self) -> None:
        """A cluster in ``data_dir`` (initdb on first use), owned by the user the server runs as."""
        if (self.data_dir / "PG_VERSION").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            _grant_search(self.data_dir, self.run_as)
            os.chown(self.data_dir, self.run_as.pw_uid, self.run_as.pw_gid)
        os.chmod(self.data_dir, 0o700)
        argv = [
            *self._as_user(),
            str(self.bindir / "initdb"),
            "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-locale",
            "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise LaunchError(f"initdb failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
        # The new cluster made durable by one syncfs rather than initdb's fsync of each file (seconds here).
        subprocess.run(["sync", "-f", str(self.data_dir)], check=True, timeout=120)

    def start(self, timeout_s: float | None = None) -> PostgresServer:
        super().start(timeout_s)
        self._create_database(self.database)
        return self

    def _create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def create_database(self, name: str) -> str:
        """A database ``name`` on this server (created if missing); returns its DSN."""
        self._create_database(name)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGINT first: PostgreSQL's fast shutdown disconnects clients and checkpoints. (SIGTERM, what
        the launcher sends, is its smart shutdown, which waits for every client, gateways included.)"""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        return super().stop(timeout_s)
