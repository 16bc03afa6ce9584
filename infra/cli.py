"""The `storyflow` command: run the service (up, api, worker) and talk to it (client.cli).

The contract puts the CLI with the shared plumbing; it imports the server's packages (agents,
worker, api) only inside the commands that run them, so `infra` stays at the bottom of the graph
for everything else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from client.cli import register as register_client_commands
from infra.embedded_redis import die_with_parent
from infra.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="storyflow: agent flows on stories, as jobs.")
CHILD_STOP_GRACE_S = 10.0
CONFIG_ERROR = 2  # the exit code of a process that refused its configuration


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"STORYFLOW_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        typer.secho(f"storyflow: bad configuration: {problems}", err=True, fg="red")
        raise typer.Exit(CONFIG_ERROR) from None


def require_redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        typer.secho(
            "storyflow: set STORYFLOW_REDIS_URL (or use `storyflow up`, which starts Redis)", err=True, fg="red"
        )
        raise typer.Exit(2)
    return settings.redis_url


def check_catalog(settings: Settings) -> None:
    """Agent and flow definitions are loaded at start-up; a bad one stops us with one line."""
    from agents.registry import load_catalog

    try:
        load_catalog(settings.extra_agent_modules, settings.extra_agent_dirs)
    except (ValueError, ImportError) as exc:
        typer.secho(f"storyflow: bad agent or flow definition: {exc}", err=True, fg="red")
        raise typer.Exit(CONFIG_ERROR) from None


def configure_logging(settings: Settings) -> None:
    from infra.logs import configure_logging as configure

    configure(settings.log_level)


@app.command()
def api(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
) -> None:
    """Run the HTTP API (one process) against STORYFLOW_REDIS_URL."""
    import uvicorn

    from infra.http_server import bounded_headers_protocol

    settings = load_settings()
    require_redis_url(settings)
    check_catalog(settings)
    configure_logging(settings)
    protocol = bounded_headers_protocol(settings.max_header_bytes, settings.header_timeout)
    uvicorn.run(
        "api.main:create_served_app", factory=True, host=host, port=port, loop="uvloop", http=protocol,
        log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=5, log_config=None,
    )  # fmt: skip


@app.command()
def worker() -> None:
    """Run one worker process against STORYFLOW_REDIS_URL."""
    from worker.main import run

    settings = load_settings()
    require_redis_url(settings)
    check_catalog(settings)
    configure_logging(settings)
    run(settings)


class Supervisor:
    """Starts the API and worker processes, restarts a worker that dies, stops them all in order."""

    def __init__(self, env: dict[str, str], workers: int, port: int, host: str) -> None:
        self.env = env
        self.api_cmd = [sys.executable, "-m", "infra.cli", "api", "--port", str(port), "--host", host]
        self.worker_cmd = [sys.executable, "-m", "infra.cli", "worker"]
        self.workers: list[subprocess.Popen[bytes]] = []
        self.api: subprocess.Popen[bytes] | None = None
        self.worker_count = workers
        self.stopping = False

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        # A session of their own: Ctrl-C reaches only us, and we stop the children in order. And they
        # end when we do, however we end (kill -9 included), instead of holding the port and the data.
        return subprocess.Popen(cmd, env=self.env, start_new_session=True, preexec_fn=die_with_parent)  # noqa: S603

    def start(self) -> None:
        self.workers = [self._spawn(self.worker_cmd) for _ in range(self.worker_count)]
        self.api = self._spawn(self.api_cmd)

    def watch(self) -> int:
        """Restart a worker that dies; the exit code `up` should end with when something cannot go on."""
        while not self.stopping:
            for index, process in enumerate(self.workers):
                if process.poll() is None or self.stopping:
                    continue
                if process.returncode == CONFIG_ERROR:
                    typer.secho("storyflow: a worker refused its configuration; stopping", err=True, fg="red")
                    return CONFIG_ERROR
                typer.secho(f"storyflow: worker exited ({process.returncode}); restarting it", err=True)
                self.workers[index] = self._spawn(self.worker_cmd)
            if self.api and self.api.poll() is not None and not self.stopping:
                typer.secho(f"storyflow: API exited ({self.api.returncode}); stopping", err=True, fg="red")
                return 1
            time.sleep(0.5)
        return 0

    def stop(self, worker_grace: float) -> None:
        self.stopping = True
        if self.api:
            _terminate([self.api], CHILD_STOP_GRACE_S)
        _terminate(self.workers, worker_grace + CHILD_STOP_GRACE_S)


def _terminate(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@app.command()
def up(
    workers: Annotated[int, typer.Option(min=0, help="worker processes to start")] = 1,
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    host: Annotated[str, typer.Option(help="API bind address")] = "127.0.0.1",
) -> None:
    """API plus N workers, plus an embedded Redis when STORYFLOW_REDIS_URL is unset. Ctrl-C stops all."""
    from infra.embedded_redis import EmbeddedRedis, EmbeddedRedisError

    settings = load_settings()
    check_catalog(settings)  # before anything starts: a bad definition is one line and a non-zero exit
    env = dict(os.environ)
    embedded = None
    if not settings.redis_url:
        try:
            embedded = EmbeddedRedis(
                Path(settings.data_dir), appendfsync=settings.redis_appendfsync, owned_by_parent=True
            )
            env["STORYFLOW_REDIS_URL"] = embedded.start()
        except EmbeddedRedisError as exc:
            typer.secho(f"storyflow: {str(exc).splitlines()[0]}", err=True, fg="red")
            raise typer.Exit(1) from None
        typer.echo(f"storyflow: embedded Redis on 127.0.0.1:{embedded.port}, data in {settings.data_dir}")
    supervisor = Supervisor(env, workers, port, host)
    signal.signal(signal.SIGTERM, lambda *_: _raise_interrupt())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    code = 0
    try:
        supervisor.start()
        typer.echo(f"storyflow: API on http://{host}:{port} with {workers} worker(s); Ctrl-C stops")
        code = supervisor.watch()
    except KeyboardInterrupt:
        typer.echo("storyflow: stopping")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        supervisor.stop(settings.shutdown_grace)
        if embedded:
            embedded.stop()
    if code:
        raise typer.Exit(code)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


# The client's commands (submit, status, runs, ...): the client package ships with the service.
register_client_commands(app)

if __name__ == "__main__":
    app()
