"""Every Redis key storyflow writes, in one place.

Tenant-owned keys live under ``sf:t:{tenant}:``. Tenant names, story ids, doc ids and job ids are
validated against patterns that exclude ``:``, so one tenant's namespace can never reach into
another's, whatever it is called.
"""

from __future__ import annotations

from arq import constants as arq_constants

# The names that reach keys: none can hold ':', so no name reaches into another's keys.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # story and document ids
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

PREFIX = "sf"

# arq's own keys (its queue, job payloads, in-progress markers, abort set): arq's names, from arq.
ARQ_QUEUE = arq_constants.default_queue_name
ARQ_JOB_PREFIX = arq_constants.job_key_prefix
ARQ_IN_PROGRESS_PREFIX = arq_constants.in_progress_key_prefix
ARQ_ABORT_SET = arq_constants.abort_jobs_ss
ARQ_RETRY_PREFIX = arq_constants.retry_key_prefix

WAKE_LIST = f"{PREFIX}:wake"  # workers BLPOP it to pick up new runs at once
WORKERS_SEEN = f"{PREFIX}:workers:seen"  # zset worker id -> last heartbeat (ms)
WORKER_FRESH_MS = 15_000  # a worker whose heartbeat is older is not counted as live
WORKER_FORGOTTEN_MS = 60_000  # ... and after this long it leaves the registry (killed workers never deregister)
WORKERS_INFO = f"{PREFIX}:workers:info"  # hash worker id -> JSON description
FINISHED_CHANNEL = f"{PREFIX}:finished"  # pub/sub: `tenant:job_id` of each run that finished
METRICS = f"{PREFIX}:metrics"  # hash `name|labels` -> value; see infra/metrics.py
# zset `tenant:story_id:job_id` -> when the finished run's record expires (its index entries go then)
EXPIRING = f"{PREFIX}:expiring"
# zset `tenant:story_id:job_id` -> when the run awaiting input times out
AWAITING = f"{PREFIX}:awaiting"


def tenant_prefix(tenant: str) -> str:
    return f"{PREFIX}:t:{tenant}"


def run(tenant: str, job_id: str) -> str:
    return f"{tenant_prefix(tenant)}:run:{job_id}"


def run_events(tenant: str, job_id: str) -> str:
    return f"{tenant_prefix(tenant)}:run:{job_id}:events"


def run_lease(job_id: str) -> str:
    return f"{PREFIX}:lease:{job_id}"


def runs_index(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}:runs"


def story_runs_index(tenant: str, story_id: str) -> str:
    return f"{tenant_prefix(tenant)}:story:{story_id}:runs"


def active_runs(tenant: str) -> str:
    """Runs not finished (queued, running or awaiting input): a set."""
    return f"{tenant_prefix(tenant)}:active"


def submissions_in_minute(tenant: str, epoch_minute: int) -> str:
    return f"{tenant_prefix(tenant)}:rate:{epoch_minute}"


def story_queue(tenant: str, story_id: str) -> str:
    """Runs of one story not yet finished, in submission order; only the head may execute."""
    return f"{tenant_prefix(tenant)}:story:{story_id}:queue"


def idempotency(tenant: str, digest: str) -> str:
    return f"{tenant_prefix(tenant)}:idem:{digest}"


def document(tenant: str, doc_id: str) -> str:
    return f"{tenant_prefix(tenant)}:doc:{doc_id}"


def documents_index(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}:docs"


def story_memory(tenant: str, story_id: str) -> str:
    return f"{tenant_prefix(tenant)}:mem:{story_id}:story"


def agent_memory(tenant: str, story_id: str, agent: str) -> str:
    return f"{tenant_prefix(tenant)}:mem:{story_id}:agent:{agent}"


def memory_agents_index(tenant: str, story_id: str) -> str:
    return f"{tenant_prefix(tenant)}:mem:{story_id}:agents"


def arq_job(job_id: str) -> str:
    return ARQ_JOB_PREFIX + job_id


def arq_in_progress(job_id: str) -> str:
    return ARQ_IN_PROGRESS_PREFIX + job_id


def arq_retry(job_id: str) -> str:
    return ARQ_RETRY_PREFIX + job_id


# The fleet's LLM rate limits, per model (agents/llm/ratelimit.lua).
def llm_calls(model: str) -> str:
    return f"{PREFIX}:llm:{model}:calls"


def llm_tokens(model: str) -> str:
    return f"{PREFIX}:llm:{model}:tokens"


def llm_pause(model: str) -> str:
    return f"{PREFIX}:llm:{model}:pause"


# Batches (runs/batches.py): the batch's hash (counts kept by the run scripts), its runs, the tenant's batches.
def batch(tenant: str, batch_id: str) -> str:
    return f"{tenant_prefix(tenant)}:batch:{batch_id}"


def batch_runs(tenant: str, batch_id: str) -> str:
    return f"{tenant_prefix(tenant)}:batch:{batch_id}:runs"


def batches_index(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}:batches"


# Per-minute figures for the dashboard: hash `{tenant}|{complete,failed,cancelled,tokens}` -> count,
# written when a run ends, kept a little over an hour.
MINUTE_STATS_PREFIX = f"{PREFIX}:minute:"
MINUTE_STATS_TTL_S = 3900


def minute_stats(epoch_minute: int) -> str:
    return f"{MINUTE_STATS_PREFIX}{epoch_minute}"


# The webhook outbox (runs/outbox.py), drained by every worker: due deliveries (zset id -> due ms), their
# data (hash id -> JSON, id|body -> payload), a list that wakes deliverers, the sequence numbering them.
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"
WEBHOOKS_DATA = f"{PREFIX}:webhooks:data"
WEBHOOKS_WAKE = f"{PREFIX}:webhooks:wake"
WEBHOOKS_SEQ = f"{PREFIX}:webhooks:seq"


def batch_idempotency(tenant: str, digest: str) -> str:
    return f"{tenant_prefix(tenant)}:batch-idem:{digest}"
