"""Every place storyflow reaches into arq's internals, and why. arq is pinned to the tested range in
pyproject.toml; tests/test_arq_compat.py fails loudly when a release moves any of these.

- `_poll_iteration()`: one poll of the queue. storyflow runs its own loop around it (`main`),
  to block on a wake-up list between polls and to outlive Redis outages, where arq's loop exits.
- `start_jobs(job_ids)`: arq claims each job with WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC: four
  round trips a job. The override claims all of a poll's jobs in one script (runs/lua/claim_jobs.lua,
  the same checks and marker), skips the jobs this worker already runs, then starts them as arq does
  (its semaphore, counter, `run_job` task and done callback).
- `finish_job(job_id, ...)`: arq deletes a finished job's payload, retry counter, in-progress marker,
  abort and queue entries in a transaction of its own. When the run's own script already did that
  (runs/lua/common.lua `end_arq_job`: the run ended or awaits a person), it is skipped: one round trip
  less per run, and no race with the run being queued again meanwhile. Otherwise a run queued again
  meanwhile (a retry after a cancel) gets its job back right after (`job_finished`).
- `_release_sem_dec_counter_on_complete()`: called when a job frees its slot; it wakes the loop
  that waits for a slot instead of polling.
- `in_progress_timeout_s`: arq's in-progress marker doubles as the run's lease, so it expires
  with the lease (STORYFLOW_LEASE_SECONDS), not after the largest job timeout.
- `close()`: arq's, with every Redis step bounded, so a stop ends on time with Redis away.
- arq's key names (`arq.constants`) are imported by infra/keys.py, for the Lua scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from runs import scripts

CLOSE_BUDGET_S = 2.0
START_BATCH = 50  # the last heartbeat, deregistering, closing connections


class ArqCompat(Worker):
    def __init__(self, *args: Any, lease_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lease_s
        self.slot_freed = asyncio.Event()
        self._claim = self.pool.register_script(scripts.plain("claim_jobs"))
        self.more_queued = False  # the last poll read a full page: poll again at once

    async def poll_once(self) -> None:
        await self._poll_iteration()

    async def job_finished(self, job_id: str) -> None:
        """After arq has finished a job (deleted its payload and queue entry); for subclasses."""

    def job_ended_by_run(self, job_id: str) -> bool:
        """Whether the run's own script has already ended this arq job (and forget it); for subclasses."""
        return False

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # Skip only jobs still running here: a finished one waits in `tasks` for arq's cleanup, and the
        # same job id may be queued again by then (a person answered, a retry).
        wanted = [job_id for job_id in (raw.decode() for raw in job_ids) if not self._running_here(job_id)]
        # At most START_BATCH a poll, and the next poll at once: a thousand runs queued together start
        # in steps, the event loop free for the running ones in between. Every candidate is offered:
        # the first may all be running on other workers (they stay in arq's queue while they run).
        most = min(START_BATCH, self.max_jobs - self.job_counter)
        self.more_queued = False
        if not wanted or most <= 0:
            return
        markers = [in_progress_key_prefix + job_id for job_id in wanted]
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        args: list[int | str] = [timestamp_ms(), ttl_ms, most, *wanted]
        scores = await self._claim(keys=[self.queue_name, *markers], args=args)
        self.more_queued = sum(score is not None for score in scores) == most
        for job_id, score in zip(wanted, scores, strict=True):
            if score is None:
                continue  # running elsewhere, finished meanwhile, or deferred
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(score)))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _running_here(self, job_id: str) -> bool:
        task = self.tasks.get(job_id)
        return task is not None and not task.done()

    async def finish_job(self, job_id: str, finish: bool, *args: Any) -> None:
        if finish and self.job_ended_by_run(job_id):
            return
        await super().finish_job(job_id, finish, *args)
        await self.job_finished(job_id)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.slot_freed.set()

    async def close(self) -> None:
        """arq's close with each Redis step bounded: a stop takes the grace plus CLOSE_BUDGET_S at most."""
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_BUDGET_S):
                await self.pool.delete(self.health_check_key)
                if self.on_shutdown:
                    await self.on_shutdown(self.ctx)
        await self.pool.close(close_connection_pool=True)
        self._pool = None
