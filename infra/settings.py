"""The one Settings object, read from STORYFLOW_* environment variables by API, worker and CLI."""

from __future__ import annotations

import base64
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infra import keys

TENANT_PATTERN = re.compile(keys.TENANT_PATTERN)
DEFAULT_TENANT = "default"

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ModelPrice(BaseModel):
    """USD per million tokens."""

    input: Annotated[float, Field(ge=0)]
    output: Annotated[float, Field(ge=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORYFLOW_", extra="ignore", frozen=True)

    redis_url: str | None = None
    redis_max_connections: PositiveInt = 512  # the connection pool of each API and worker process
    data_dir: Path = Path(".storyflow")
    # fsync policy of the embedded Redis: `always` loses no acknowledged write even if Redis is
    # killed mid-fsync; `everysec` is faster and may lose up to ~2 s of writes in that case.
    redis_appendfsync: Literal["always", "everysec"] = "always"
    api_keys: Annotated[SecretStr | None, NoDecode] = None
    max_input_bytes: PositiveInt = 65536
    result_ttl: PositiveInt = 86400
    job_timeout: PositiveInt = 600
    llm_provider: Literal["echo", "openai"] = "echo"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str | None = None
    llm_timeout: PositiveFloat = 60.0
    echo_delay: Annotated[float, Field(ge=0)] = 0.0
    # LLM calls (see README "LLM calls"): fleet-wide rate limits per window (0: off), streaming, prices, budget.
    llm_rpm: Annotated[int, Field(ge=0)] = 0
    llm_tpm: Annotated[int, Field(ge=0)] = 0
    llm_rate_window: PositiveFloat = 60.0  # seconds; RPM and TPM count per this window
    token_flush_ms: Annotated[int, Field(ge=0)] = 50
    llm_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    max_run_tokens: Annotated[int, Field(ge=0)] = 0
    # Human steps: how long a run may await input before it fails with input_timeout.
    input_timeout: PositiveFloat = 604_800.0
    worker_concurrency: PositiveInt = 20

    # Delivery (see README "Guarantees").
    lease_seconds: Annotated[float, Field(ge=1)] = 10.0
    shutdown_grace: Annotated[float, Field(ge=0)] = 30.0
    max_attempts: PositiveInt = 3
    llm_retries: Annotated[int, Field(ge=0)] = 3
    max_queued_runs: PositiveInt = 100_000
    # Per tenant, shared by every API process through Redis; 0 means no limit.
    max_active_runs_per_tenant: Annotated[int, Field(ge=0)] = 0
    submissions_per_minute: Annotated[int, Field(ge=0)] = 0
    public_ops: bool = False  # /readyz, /metrics and /workers without an API key
    # Keys for the operations routes (/readyz, /metrics, /workers), comma-separated; tenant keys get 403 there.
    ops_keys: Annotated[SecretStr | None, NoDecode] = None
    # Open event streams (GET /run/{id}/events) one tenant may hold on one API process; over it, 429.
    max_streams_per_tenant: PositiveInt = 100
    poll_interval: PositiveFloat = 1.0

    # Webhooks (see README "Webhooks"): the Standard Webhooks signing secret, `whsec_<base64>`.
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: PositiveInt = 8
    webhook_timeout: PositiveFloat = 10.0  # seconds a receiver has to answer an attempt
    webhook_retry_base: PositiveFloat = 5.0  # seconds before the second attempt; doubled each time, with jitter
    # Deliver to loopback, private, link-local addresses (local development only).
    webhook_allow_private: bool = False
    webhook_concurrency: PositiveInt = 64  # deliveries in flight per worker process

    # Limits.
    max_body_bytes: PositiveInt = 1_048_576
    max_doc_bytes: PositiveInt = 1_048_576
    max_batch_runs: Annotated[int, Field(gt=0, le=1000)] = 1000
    # POST /batches takes up to 10000 runs: its body may be this big (every other route: max_body_bytes).
    max_batches_body_bytes: PositiveInt = 16 * 1_048_576
    # Request headers on `storyflow api`: the most bytes, and the longest time to send them all.
    max_header_bytes: Annotated[int, Field(ge=1024)] = 65536
    header_timeout: PositiveFloat = 10.0

    # Extra modules to import for agents and flows, comma-separated (plugins, tests).
    agent_modules: str = ""
    # Extra directories of YAML agent and flow definitions, comma-separated.
    agent_dirs: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        scheme = urlparse(value).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_api_keys(value.get_secret_value())
        return value

    @field_validator("ops_keys")
    @classmethod
    def _ops_keys_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_ops_keys(value.get_secret_value())
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        try:
            decoded = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except ValueError:
            decoded = b""
        if not raw.startswith("whsec_") or len(decoded) < 16:
            raise ValueError("must be whsec_ followed by the base64 of at least 16 random bytes")
        return SecretStr(raw)

    @model_validator(mode="after")
    def _keys_not_shared(self) -> Settings:
        tenant_keys = set(self.keys_to_tenants)
        if tenant_keys & set(self.ops_key_list):
            raise ValueError("STORYFLOW_OPS_KEYS: an operations key must not also be a tenant's key")
        return self

    @model_validator(mode="after")
    def _openai_needs_url(self) -> Settings:
        if self.llm_provider == "openai" and not (self.llm_base_url and self.llm_model):
            raise ValueError("STORYFLOW_LLM_PROVIDER=openai needs STORYFLOW_LLM_BASE_URL and STORYFLOW_LLM_MODEL")
        return self

    @cached_property
    def keys_to_tenants(self) -> dict[str, str]:
        """API key -> tenant; empty when auth is off."""
        if self.api_keys is None:
            return {}
        return {key: tenant for tenant, key in parse_api_keys(self.api_keys.get_secret_value())}

    @cached_property
    def ops_key_list(self) -> list[str]:
        return [] if self.ops_keys is None else parse_ops_keys(self.ops_keys.get_secret_value())

    @property
    def auth_enabled(self) -> bool:
        return self.api_keys is not None

    @property
    def extra_agent_modules(self) -> list[str]:
        return [m.strip() for m in self.agent_modules.split(",") if m.strip()]

    @property
    def extra_agent_dirs(self) -> list[Path]:
        return [Path(d.strip()) for d in self.agent_dirs.split(",") if d.strip()]


def parse_api_keys(raw: str) -> list[tuple[str, str]]:
    pairs = []
    owners: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        tenant, sep, key = item.partition(":")
        if not sep or not key:
            raise ValueError("STORYFLOW_API_KEYS must be comma-separated tenant:key pairs")
        if not TENANT_PATTERN.match(tenant):
            raise ValueError(f"tenant name {tenant!r} must match {TENANT_PATTERN.pattern}")
        if len(key) < 8:
            raise ValueError(f"the key of tenant {tenant!r} is shorter than 8 characters")
        if key in owners:
            raise ValueError(f"STORYFLOW_API_KEYS gives one key to tenants {owners[key]!r} and {tenant!r}")
        owners[key] = tenant
        pairs.append((tenant, key))
    if not pairs:
        raise ValueError("STORYFLOW_API_KEYS holds no tenant:key pair")
    return pairs


def parse_ops_keys(raw: str) -> list[str]:
    found = [key.strip() for key in raw.split(",") if key.strip()]
    if not found:
        raise ValueError("STORYFLOW_OPS_KEYS holds no key")
    if any(len(key) < 8 for key in found):
        raise ValueError("STORYFLOW_OPS_KEYS: every key must be at least 8 characters")
    return found
