"""A throwaway PostgreSQL server for the tests: real binaries, a fresh cluster, one database.

`PostgresServer` runs `initdb` into a new temp dir, starts the server with `pg_ctl` on
127.0.0.1 and a free port (its unix socket and log inside the temp dir, fsync off),
creates the database and yields its SQLAlchemy URL. Leaving the block, also on errors,
stops the server and deletes the dir. PostgreSQL refuses to run as root, so as root the
binaries run as the `postgres` system user, which Debian's package creates.

The binaries come from PATH, else from Debian's layout /usr/lib/postgresql/<version>/bin
(highest version). When they are missing, `PostgresNotInstalled` says how to install
them; `skip_or_fail` turns it into a skip, or a failure when SWITCHYARD_REQUIRE_POSTGRES=1
(CI sets it, so CI never silently skips the PostgreSQL tests).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

DEBIAN_LIB = Path("/usr/lib/postgresql")
REQUIRE_ENV = "SWITCHYARD_REQUIRE_POSTGRES"
SYSTEM_USER = "postgres"  # PostgreSQL's superuser here, and the OS user to run as under root
DATABASE = "switchyard_test"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
STOP_TIMEOUT = 30
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were found neither on PATH nor in "
    f"{DEBIAN_LIB}/<version>/bin. Install Debian's package: "
    "`sudo apt-get install postgresql` (.ci/run does this when they are missing)."
)
# Settings appended to the new cluster's postgresql.conf: reachable on loopback only,
# no durability (a test server's data dies with it anyway).
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
}


class PostgresError(RuntimeError):
    """The test server could not be set up, started or stopped."""


class PostgresNotInstalled(PostgresError):
    """No PostgreSQL server binaries on this machine."""


@dataclass(frozen=True)
class PostgresBinaries:
    initdb: Path
    pg_ctl: Path


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def find_binaries(path: str | None = None, debian_lib: Path | None = None) -> PostgresBinaries:
    """`initdb` and `pg_ctl` of one installation: from `path` (default: $PATH), else from
    the highest version under `debian_lib` (default: Debian's /usr/lib/postgresql)."""
    found = shutil.which("initdb", path=path)
    if found is not None:
        initdb = Path(found).resolve()
        # The pg_ctl next to the real initdb belongs to the same installation.
        if _executable(initdb.parent / "pg_ctl"):
            return PostgresBinaries(initdb, initdb.parent / "pg_ctl")
        pg_ctl = shutil.which("pg_ctl", path=path)
        if pg_ctl is not None:
            return PostgresBinaries(initdb, Path(pg_ctl).resolve())
    lib = DEBIAN_LIB if debian_lib is None else debian_lib
    versions = sorted(lib.glob("*/bin"), key=lambda d: _version_key(d.parent.name), reverse=True)
    for bin_dir in versions:
        if _executable(bin_dir / "initdb") and _executable(bin_dir / "pg_ctl"):
            return PostgresBinaries(bin_dir / "initdb", bin_dir / "pg_ctl")
    raise PostgresNotInstalled(INSTALL_HINT)


def skip_or_fail(missing: PostgresNotInstalled) -> NoReturn:
    """Skip the calling test, or fail it when SWITCHYARD_REQUIRE_POSTGRES=1."""
    import pytest

    try:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{missing} ({REQUIRE_ENV}=1: PostgreSQL is required)", pytrace=False)
        pytest.skip(str(missing))
    except (pytest.fail.Exception, pytest.skip.Exception) as outcome:
        raise outcome from None  # the message says it all: no "during handling" chain


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


class PostgresServer:
    """`with PostgresServer() as url:` a fresh server and database at SQLAlchemy `url`.

    Raises `PostgresNotInstalled` when constructed on a machine without PostgreSQL, and
    `PostgresError` (with the commands' output and the server log) when anything else fails.
    """

    def __init__(self, binaries: PostgresBinaries | None = None, database: str = DATABASE):
        self.binaries = find_binaries() if binaries is None else binaries
        self.database = database
        self.root: Path | None = None
        self.port: int | None = None
        self.started_in: float | None = None  # seconds from initdb to the database existing
        self._as_user = self._user_prefix()
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env.update(LC_ALL="C", LANG="C")

    @property
    def url(self) -> str:
        if self.port is None:
            raise PostgresError("the server is not running")
        return f"postgresql+psycopg://{SYSTEM_USER}@127.0.0.1:{self.port}/{self.database}"

    def __enter__(self) -> str:
        self.root = Path(tempfile.mkdtemp(prefix="switchyard-pg-"))
        atexit.register(self.stop)  # a safety net should the `with` never be left
        try:
            began = time.monotonic()
            self._start(self.root)
            self.started_in = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        return self.url

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- running commands -----------------------------------------------------------

    @staticmethod
    def _user_prefix() -> list[str]:
        """How to run the binaries: as ourselves, or under root as the postgres user."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresError(
                f"running as root: PostgreSQL refuses to run as root, and there is no "
                f"'{SYSTEM_USER}' system user to run it as (Debian's postgresql package "
                "creates one). Run the tests as a normal user, or install the package."
            ) from None
        if shutil.which("runuser"):
            return ["runuser", "-u", SYSTEM_USER, "--"]
        return ["su", "-s", "/bin/sh", SYSTEM_USER, "-c"]

    def _wrap(self, cmd: list[str]) -> list[str]:
        if self._as_user[:1] == ["su"]:
            return [*self._as_user, shlex.join(cmd)]
        return [*self._as_user, *cmd]

    def _run(self, cmd: list[str | Path], timeout: float, cwd: Path) -> str:
        """Run `cmd` (as the postgres user under root); its output, or PostgresError."""
        args = [str(part) for part in cmd]
        shown = shlex.join(args)
        proc = subprocess.Popen(
            self._wrap(args),
            cwd=cwd,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a timeout kills the wrapper and the command alike
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
            raise PostgresError(
                f"`{shown}` did not finish within {timeout:.0f}s:\n{_text(out)}"
            ) from None
        if proc.returncode != 0:
            raise PostgresError(f"`{shown}` failed (exit {proc.returncode}):\n{_text(out)}")
        return _text(out)

    # --- start ----------------------------------------------------------------------

    def _start(self, root: Path) -> None:
        data, sockets, log = root / "data", root / "socket", root / "postgres.log"
        sockets.mkdir()
        if self._as_user:
            user = pwd.getpwnam(SYSTEM_USER)
            for path in (root, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        try:
            self._run(
                [
                    self.binaries.initdb,
                    "-D",
                    data,
                    "-U",
                    SYSTEM_USER,
                    "-A",
                    "trust",
                    "--no-sync",
                    "--locale=C",
                    "--encoding=UTF8",
                ],
                timeout=120,
                cwd=root,
            )
        except PostgresError as error:
            if self._as_user:
                raise PostgresError(
                    f"{error}\n(As root the server runs as user '{SYSTEM_USER}', which must be "
                    f"able to reach {root}; point TMPDIR to a directory it can.)"
                ) from None
            raise
        settings = {**SETTINGS, "unix_socket_directories": str(sockets)}
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n# switchyard tests (tests/support/postgres.py)\n")
            conf.writelines(f"{k} = {_conf_value(v)}\n" for k, v in settings.items())
        self.port = self._start_server(data, log, root)
        self._create_database()

    def _start_server(self, data: Path, log: Path, root: Path, attempts: int = 3) -> int:
        """Start on a free port; retried when another process takes the port first."""
        for attempt in range(1, attempts + 1):
            port = _free_port()
            log_start = log.stat().st_size if log.exists() else 0
            try:
                self._run(
                    [
                        self.binaries.pg_ctl,
                        "start",
                        "-w",
                        "-t",
                        str(START_TIMEOUT),
                        "-D",
                        data,
                        "-l",
                        log,
                        "-o",
                        f"-p {port}",
                    ],
                    timeout=START_TIMEOUT + 30,
                    cwd=root,
                )
                return port
            except PostgresError as error:
                server_log = _read_from(log, log_start)
                if attempt < attempts and "could not bind" in server_log:
                    continue
                raise PostgresError(f"{error}\nserver log ({log}):\n{server_log}") from None
        raise AssertionError("unreachable")

    def _create_database(self) -> None:
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user=SYSTEM_USER,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        except psycopg.Error as error:
            raise PostgresError(f"creating database {self.database!r} failed: {error}") from error

    # --- an outage --------------------------------------------------------------------

    def pause(self) -> None:
        """Stop the server, keeping its data and port: the database is down until `resume`."""
        if self.root is None:
            raise PostgresError("the server is not running")
        self._stop_server(self.root)

    def resume(self) -> None:
        """Start a paused server again, on the same port with the same data."""
        if self.root is None or self.port is None:
            raise PostgresError("the server was never started")
        data, log = self.root / "data", self.root / "postgres.log"
        self._run(
            [self.binaries.pg_ctl, "start", "-w", "-t", str(START_TIMEOUT), "-D", data,
             "-l", log, "-o", f"-p {self.port}"],
            timeout=START_TIMEOUT + 30,
            cwd=self.root,
        )  # fmt: skip

    # --- stop -----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server, whatever state it is in, and delete its directory. Idempotent."""
        atexit.unregister(self.stop)
        root, self.root, self.port = self.root, None, None
        if root is None:
            return
        try:
            self._stop_server(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _stop_server(self, root: Path) -> None:
        data = root / "data"
        pid = _postmaster_pid(data)
        if pid is None:
            return
        for mode, timeout in (("fast", STOP_TIMEOUT), ("immediate", 10)):
            try:
                self._run(
                    [
                        self.binaries.pg_ctl,
                        "stop",
                        "-D",
                        data,
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        str(timeout),
                    ],
                    timeout=timeout + 15,
                    cwd=root,
                )
            except PostgresError:
                continue
            if not _alive(pid):
                return
        # pg_ctl could not stop it: kill the postmaster; its backends exit when it dies.
        if not _alive(pid) or _command_name(pid) not in ("postgres", None):
            return  # gone, or a stale pid file whose pid now names another process
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")[-8000:]
    except OSError:
        return "(no log)"


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
