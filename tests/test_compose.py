"""The container files (docker-compose.yml, Dockerfile, .dockerignore) name real commands and keep
the deployment's promises: durable Redis with a password, a scalable worker, a non-root image.
No Docker engine is needed: the files are parsed, not run."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer.main
import yaml

from infra.cli import app
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("api", "worker")
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$, against `env` (empty: the file's defaults)."""
    env = env or {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in {":?", "?"} and not current:
            pytest.fail(f"${{{name}}} is required by docker-compose.yml: {arg}")
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def as_argv(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else [str(word) for word in command]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def cli_commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def app_env(service: dict[str, Any]) -> dict[str, str | None]:
    environment = service["environment"]
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {name: value if sep else None for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in environment.items()}


def parse_duration(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- docker-compose.yml ------------------------------------------------------------------------------


def test_the_three_services_exist(services: dict[str, Any]) -> None:
    assert {"redis", "api", "worker"} <= set(services)


def test_redis_is_durable_never_evicts_and_needs_a_password(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    argv = [interpolate(word) for word in as_argv(redis["command"])]
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in {"everysec", "always"}
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--requirepass"], "Redis must require a password"
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"]), "the AOF must live on a volume"
    assert "ports" not in redis, "Redis is for the services on the compose network, not the host"


def test_redis_healthcheck_pings_with_the_password(services: dict[str, Any]) -> None:
    redis = services["redis"]
    test = " ".join(as_argv(redis["healthcheck"]["test"]))
    assert "redis-cli" in test and "ping" in test
    password = interpolate(as_argv(redis["command"])[-1])
    uses_password = (
        "-a " in test
        or "REDISCLI_AUTH" in test
        or interpolate(str(redis.get("environment", {}).get("REDISCLI_AUTH", ""))) == password
    )
    assert uses_password, "an unauthenticated ping gets NOAUTH, not PONG"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_a_healthy_redis(services: dict[str, Any], name: str) -> None:
    depends_on = services[name]["depends_on"]
    assert isinstance(depends_on, dict), "the short list form of depends_on cannot wait for health"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_worker_can_scale(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name breaks `docker compose up --scale worker=N`"
    assert not worker.get("ports"), "host ports on the worker would clash between replicas"


def test_api_publishes_its_port(services: dict[str, Any]) -> None:
    assert "8000:8000" in [str(port) for port in services["api"]["ports"]]
    argv = as_argv(services["api"]["command"])
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "bound to 127.0.0.1 the API is unreachable from outside"


@pytest.mark.parametrize("name", ["redis", *APP_SERVICES])
def test_every_service_restarts(services: dict[str, Any], name: str) -> None:
    assert services[name]["restart"] in {"always", "unless-stopped", "on-failure"}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_real_commands(services: dict[str, Any], cli_commands: set[str], name: str) -> None:
    argv = as_argv(services[name]["command"])
    assert argv[0] == "storyflow"
    assert argv[1] == name
    assert argv[1] in cli_commands, f"`storyflow {argv[1]}` is not a command of infra.cli:app ({sorted(cli_commands)})"


def test_the_storyflow_script_is_the_typer_app(pyproject: dict[str, Any]) -> None:
    assert pyproject["project"]["scripts"]["storyflow"] == "infra.cli:app"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_redis_url_points_at_the_redis_service(services: dict[str, Any], name: str) -> None:
    raw = app_env(services[name])["STORYFLOW_REDIS_URL"]
    assert raw, "STORYFLOW_REDIS_URL must be set: `storyflow api` and `storyflow worker` require it"
    url = urlparse(interpolate(raw))
    assert url.scheme == "redis"
    assert url.hostname == "redis" and "redis" in services
    assert url.port in (None, 6379)
    assert url.password == interpolate(as_argv(services["redis"]["command"])[-1]), "must match --requirepass"
    overridden = urlparse(interpolate(raw, {"STORYFLOW_REDIS_PASSWORD": "s3cret-pw"}))
    assert overridden.password == "s3cret-pw"


def test_api_and_worker_share_one_environment(services: dict[str, Any]) -> None:
    assert app_env(services["api"]) == app_env(services["worker"])


def test_the_environment_is_valid_settings(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = app_env(services["api"])
    known = {f"STORYFLOW_{field.upper()}" for field in Settings.model_fields}
    assert set(env) <= known, f"not settings: {sorted(set(env) - known)}"
    # What the containers get with nothing set in the shell: the file's defaults; the names left
    # empty are passed through only when the shell sets them, so they are unset here.
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, interpolate(value))
    settings = Settings()
    assert settings.redis_url and settings.llm_provider == "echo"


def test_worker_stops_after_its_grace(services: dict[str, Any]) -> None:
    worker = services["worker"]
    grace = float(interpolate(app_env(worker).get("STORYFLOW_SHUTDOWN_GRACE") or "") or Settings().shutdown_grace)
    stop = parse_duration(str(worker.get("stop_grace_period", "10s")))
    assert stop > grace, "Docker would SIGKILL a worker still finishing its in-flight runs"


def test_api_healthcheck_uses_healthz_without_curl(services: dict[str, Any]) -> None:
    test = as_argv(services["api"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(test)
    assert "curl" not in test and "wget" not in test, "the slim image has neither"
    if test[0] == "CMD" and test[1] == "python":
        compile(test[test.index("-c") + 1], "<healthcheck>", "exec")


def test_worker_healthcheck_if_any_is_python(services: dict[str, Any]) -> None:
    healthcheck = services["worker"].get("healthcheck")
    if not healthcheck or healthcheck.get("disable"):
        return
    test = as_argv(healthcheck["test"])
    assert "/healthz" not in " ".join(test), "the worker has no HTTP port"
    if test[:2] == ["CMD", "python"]:
        compile(test[test.index("-c") + 1], "<healthcheck>", "exec")


# ---- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments and blank lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), "use the exec form, so that signals reach storyflow (not a shell)"
    argv = json.loads(arguments)
    assert isinstance(argv, list)
    return [str(word) for word in argv]


def test_image_is_python_slim() -> None:
    base = final_stage()[0][1]
    args = dict(arg.partition("=")[::2] for kw, arg in dockerfile_instructions() if kw == "ARG")
    image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), base.split()[0])
    assert image == "python:3.11-slim"


def test_image_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].partition(":")[0]
    assert user not in {"root", "0"}


def test_image_command_is_storyflow(cli_commands: set[str]) -> None:
    stage = final_stage()
    entrypoint = [exec_form(arguments) for keyword, arguments in stage if keyword == "ENTRYPOINT"]
    cmd = [exec_form(arguments) for keyword, arguments in stage if keyword == "CMD"]
    argv = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    assert argv[:2] == ["storyflow", "api"]
    assert argv[1] in cli_commands
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


def test_dependencies_are_a_layer_of_their_own() -> None:
    copies = [arguments.split() for keyword, arguments in dockerfile_instructions() if keyword == "COPY"]
    sources = [words[:-1] for words in copies if not any(word.startswith("--from") for word in words)]
    first_pyproject = next(i for i, words in enumerate(sources) if "pyproject.toml" in words)
    first_package = next(i for i, words in enumerate(sources) if {"api", "infra", "."} & set(words))
    assert sources[first_pyproject] == ["pyproject.toml"], "pyproject.toml alone, so source edits keep the cache"
    assert first_pyproject < first_package


def test_image_installs_every_package(pyproject: dict[str, Any]) -> None:
    copied = {
        word.rstrip("/")
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and "--from" not in arguments
        for word in arguments.split()[:-1]
    }
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    if isinstance(pyproject["project"].get("readme"), str):
        assert pyproject["project"]["readme"] in copied, "setuptools needs the readme to build"
    runs = " ".join(arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN")
    assert "pip install --no-deps ." in runs


def test_dockerignore_keeps_what_the_image_needs_and_drops_local_state() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ["pyproject.toml", "README.md", "api", "worker", "agents", "memory", "infra", "client"]:
        excluded = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(needed, p.removeprefix("**/"))]
        assert not excluded, f".dockerignore drops {needed} (by {excluded})"
    for dropped in [".venv", ".git", ".storyflow"]:
        assert dropped in patterns
