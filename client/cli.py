"""The HTTP-client commands of the `storyflow` CLI: `register(app)` adds them to the main app."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from client import batch as batching
from client._protocol import DEFAULT_URL, PollSchedule
from client.async_client import AsyncStoryflowClient
from client.errors import StoryflowError
from client.models import Batch, PendingDocs, RunEvent, RunRecord
from client.sync_client import StoryflowClient

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts and pipes.")]
UrlOption = Annotated[str, typer.Option("--url", envvar="STORYFLOW_URL", help="Base URL of the storyflow API.")]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="STORYFLOW_API_KEY", help="API key, sent as a Bearer token.", show_default=False),
]
BATCH_ACTIONS = ("follow", "retry", "cancel")
STATUS_STYLES = {
    "queued": "cyan",
    "in_progress": "blue",
    "complete": "green",
    "failed": "red",
    "cancelled": "yellow",
}


@dataclass(frozen=True)
class ClientFactory:
    """Builds the clients the commands use; tests pass a transport that stands in for the server (both
    faces run the async client, so one async transport, e.g. httpx.MockTransport, serves them)."""

    transport: httpx.AsyncBaseTransport | None = None
    poll_schedule: PollSchedule | None = None

    def sync(self, url: str, api_key: str | None) -> StoryflowClient:
        return StoryflowClient(url, api_key, transport=self.transport, poll_schedule=self.poll_schedule)

    def asynchronous(self, url: str, api_key: str | None) -> AsyncStoryflowClient:
        return AsyncStoryflowClient(url, api_key, transport=self.transport, poll_schedule=self.poll_schedule)


def register(app: typer.Typer, factory: ClientFactory | None = None) -> None:
    """Add submit, status, cancel, runs, flows, batch and the `docs` group to `app`."""
    commands = ClientCommands(factory or ClientFactory())
    app.command("submit")(commands.submit)
    app.command("status")(commands.status)
    app.command("cancel")(commands.cancel)
    app.command("retry")(commands.retry)
    app.command("input")(commands.input)
    app.command("runs")(commands.runs)
    app.command("flows")(commands.flows)
    app.command("batch")(commands.batch)
    docs = typer.Typer(help="Store and read the tenant's documents.", no_args_is_help=True)
    docs.command("put")(commands.docs_put)
    docs.command("get")(commands.docs_get)
    docs.command("ls")(commands.docs_ls)
    app.add_typer(docs, name="docs")


class ClientCommands:
    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory

    def submit(
        self,
        text: Annotated[str, typer.Argument(help="The run's input; '-' reads it from stdin.")],
        story: Annotated[str, typer.Option("--story", "-s", help="Story id the run belongs to.")],
        flow: Annotated[str, typer.Option("--flow", "-f", help="Flow to run.")] = "default",
        wait: Annotated[bool, typer.Option("--wait", help="Follow the run and print its result.")] = False,
        idempotency_key: Annotated[
            str | None, typer.Option("--idempotency-key", help="Resubmitting with the same key reuses the run.")
        ] = None,
        timeout: Annotated[
            float | None, typer.Option("--timeout", help="With --wait: give up after this many seconds.")
        ] = None,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Submit a run; print its job id, or with --wait its progress and result."""
        run_input = sys.stdin.read() if text == "-" else text
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            answer = client.submit(story, run_input, flow, idempotency_key=idempotency_key)
            if isinstance(answer, PendingDocs):
                _fail(f"flow {flow!r} needs documents first: {', '.join(answer.pending_docs)} (storyflow docs put)")
            if not wait:
                typer.echo(answer.job_id)
                return
            _print_outcome(_follow_run(client, answer.job_id, timeout))

    def status(
        self, job_id: str, as_json: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None
    ) -> None:
        """Print a run's record as JSON (indented; one line with --json)."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            record = client.get(job_id)
        typer.echo(record.model_dump_json() if as_json else record.model_dump_json(indent=2))

    def retry(
        self,
        job_id: str,
        from_node: Annotated[str | None, typer.Option("--from", help="Resume at this node's latest visit.")] = None,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Queue a failed or cancelled run again: it resumes where it stopped (or at --from)."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            record = client.retry(job_id, from_node)
        typer.echo(f"run {record.job_id} {record.status}")

    def input(
        self,
        job_id: str,
        action: Annotated[str, typer.Argument(help="One of the actions the step offers.")],
        text: Annotated[str | None, typer.Option("--text", help="The step's output (default: the draft).")] = None,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Answer the human step a run awaits."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            record = client.answer(job_id, action, text)
        typer.echo(f"run {record.job_id} {record.status}")

    def cancel(self, job_id: str, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
        """Cancel a queued or running run."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            record = client.cancel(job_id)
        typer.echo(f"run {record.job_id} {record.status}")

    def runs(
        self,
        story: Annotated[str | None, typer.Option("--story", help="Only this story's runs.")] = None,
        status: Annotated[str | None, typer.Option("--status", help="Only runs in this status.")] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many runs.")] = None,
        as_json: JsonOption = False,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """List the tenant's runs, newest first."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            records = client.list_runs(story_id=story, status=status, limit=limit)
        if as_json:
            typer.echo(json.dumps([record.model_dump(mode="json") for record in records]))
            return
        _stdout().print(_runs_table(records))

    def flows(self, as_json: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
        """List the flows the server knows, each drawn as its graph."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            flows = client.flows()
        if as_json:
            typer.echo(json.dumps([flow.model_dump(mode="json") for flow in flows]))
            return
        console = _stdout()
        for flow in flows:
            docs = ", ".join(flow.requires_docs) or "none"
            console.print(f"[bold]{escape(flow.name)}[/]  (documents: {escape(docs)})")
            for line in _graph_lines(flow.graph or {}):
                console.print("  " + escape(line))

    def docs_put(
        self,
        doc_id: str,
        file: Annotated[
            Path, typer.Argument(exists=True, dir_okay=False, allow_dash=True, help="File to upload; '-' reads stdin.")
        ],
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Store a document from a file."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            written = client.put_doc(doc_id, _read_text(file))
        typer.echo(f"{'created' if written.created else 'updated'} document {written.doc_id}")

    def docs_get(self, doc_id: str, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
        """Print a document's content."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            document = client.get_doc(doc_id)
        typer.echo(document.content, nl=not document.content.endswith("\n"))

    def docs_ls(self, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
        """List the tenant's documents."""
        with _errors_reported(), self._factory.sync(url, api_key) as client:
            documents = client.list_docs()
        table = Table("doc_id", "updated_at")
        for document in documents:
            table.add_row(document.doc_id, _when(document.updated_at))
        _stdout().print(table)

    def batch(
        self,
        target: Annotated[
            str,
            typer.Argument(
                metavar="FILE|ACTION",
                help="A JSON-lines file (one run body a line), or an action on the batch BATCH_ID.",
                show_default=False,
            ),
        ],
        batch_id: Annotated[
            str | None,
            typer.Argument(metavar="BATCH_ID", help="With follow, retry or cancel: the batch.", show_default=False),
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Results file (default: FILE.results.jsonl).")] = None,
        restart: Annotated[
            bool, typer.Option("--restart", help="Forget <FILE>.state.json and submit every line as new batches.")
        ] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="follow, retry, cancel: print the batch as JSON.")
        ] = False,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Submit a JSON-lines file as batches and follow them; or follow, retry or cancel one batch.

        FILE: submit its runs (at most 10000 a batch), print each batch id, show the progress, write the results.

        Interrupted, the same command again resumes (FILE.state.json) and submits no run twice.

        follow | retry | cancel BATCH_ID: follow a batch till nothing moves, retry or cancel its runs; print its counts.

        Exits 1 if any run failed, was cancelled, invalid or rejected.
        """
        if batch_id is not None:
            if target not in BATCH_ACTIONS:
                raise typer.BadParameter(
                    f"{target!r} is not one of {', '.join(BATCH_ACTIONS)} (storyflow batch ACTION BATCH_ID)",
                    param_hint="'ACTION'",
                )
            self._batch_action(target, batch_id, as_json, url, api_key)
            return
        file = Path(target)
        if not file.is_file():
            hint = f" (to {target} a batch: storyflow batch {target} BATCH_ID)" if target in BATCH_ACTIONS else ""
            raise typer.BadParameter(f"no such file: {target}{hint}", param_hint="'FILE'")
        state_path = batching.state_path_for(file)
        results_path = out or batching.results_path_for(file)
        with _errors_reported(), _interruption_reported():
            digest = batching.file_digest(file)
            lines = batching.read_input(file)
            if restart:
                state_path.unlink(missing_ok=True)
            state = batching.load_state(state_path, digest) or batching.new_state(digest, restart=restart)
            final, results = _run_batch(self._factory.asynchronous(url, api_key), lines, state, state_path)
            batching.write_results(results_path, results)
        _report_batch(final, results_path)

    def _batch_action(self, action: str, batch_id: str, as_json: bool, url: str, api_key: str | None) -> None:
        with _errors_reported(), _interruption_reported(), self._factory.sync(url, api_key) as client:
            if action == "cancel":
                batch = client.cancel_batch(batch_id)
            elif action == "retry":
                batch = client.retry_batch(batch_id)
            else:
                batch = _follow_batch(client, batch_id)
        if as_json:
            typer.echo(batch.model_dump_json())
        else:
            typer.echo(_counts_line(batch))
        if action == "follow" and batch.counts.unsuccessful:
            raise typer.Exit(1)


@contextmanager
def _errors_reported() -> Iterator[None]:
    try:
        yield
    except StoryflowError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except UnicodeDecodeError as exc:
        _fail(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")


def _fail(message: str) -> NoReturn:
    _stderr().print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def _interruption_reported() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        _stderr().print("[yellow]interrupted[/]: run the same command again to resume")
        raise typer.Exit(130) from None


def _read_text(path: Path) -> str:
    return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")


def _when(moment: object) -> str:
    return "-" if moment is None else str(moment)


def _graph_lines(graph: dict[str, Any]) -> list[str]:
    """One line a node: `qa (agent qa): approve -> end | revise -> dev`, the start first."""
    nodes: dict[str, dict[str, Any]] = graph.get("nodes", {})
    order = sorted(nodes, key=lambda name: name != graph.get("start"))
    lines = []
    for name in order:
        node = nodes[name]
        who = f"asks a person: {node['human']!r}" if node.get("human") else f"agent {node.get('agent')}"
        if node.get("on"):
            edges = " | ".join(f"{action} -> {target or 'end'}" for action, target in node["on"].items())
        else:
            edges = f"-> {node.get('next') or 'end'}"
        limit = f", at most {node['max_visits']} visits" if node.get("on") else ""
        lines.append(f"{name} ({who}{limit}): {edges}")
    return lines


def _follow_run(client: StoryflowClient, job_id: str, timeout: float | None) -> RunRecord:
    console = _stderr()
    with console.status(f"run {job_id} queued") as spinner:

        def show(event: RunEvent) -> None:
            if event.event == "token":
                console.print(escape(str(event.data.get("text", ""))), end="", style="dim", highlight=False)
                return
            line = _describe_event(event)
            if line:
                console.print(line)
            if event.event == "node_started" and event.node:
                spinner.update(f"{escape(event.node)} working")
            elif event.event == "node_finished":
                spinner.update("waiting for the next step")

        return client.wait(job_id, timeout, on_event=show)


def _describe_event(event: RunEvent) -> str | None:
    node = escape(event.node or "?")
    descriptions = {
        "started": "[dim]run started[/]",
        "node_started": f"[cyan]▶[/] {node}",
        "node_finished": f"[green]✓[/] {node}",
        "complete": "[green]run complete[/]",
        "failed": "[red]run failed[/]",
        "cancelled": "[yellow]run cancelled[/]",
        "awaiting_input": f"[magenta]?[/] {node} awaits a person",
        "retried": "[dim]run retried[/]",
    }
    return descriptions.get(event.event)


def _print_outcome(record: RunRecord) -> None:
    if record.status == "awaiting_input" and record.awaiting is not None:
        asked = record.awaiting
        typer.echo(f"run {record.job_id} awaits a person at {asked.node!r}: {asked.prompt}")
        typer.echo(f"answer with: storyflow input {record.job_id} {'|'.join(asked.actions)} [--text TEXT]")
        return
    if record.status == "failed":
        error = record.error
        reason = f"{error.type}: {error.message}" if error else "no error reported"
        _fail(f"run {record.job_id} failed: {reason}")
    if record.status == "cancelled":
        _fail(f"run {record.job_id} was cancelled")
    typer.echo(record.result or "")


def _runs_table(records: list[RunRecord]) -> Table:
    table = Table("job_id", "status", "flow", "story", "progress", "enqueued", "finished")
    table.columns[0].no_wrap = True
    for record in records:
        style = STATUS_STYLES.get(record.status, "")
        total = record.progress.total
        progress = f"{len(record.progress.done)}/{total}" if total else "-"
        table.add_row(
            record.job_id,
            f"[{style}]{record.status}[/]" if style else record.status,
            record.flow,
            record.story_id,
            progress,
            _when(record.enqueued_at),
            _when(record.finished_at),
        )
    return table


def _run_batch(
    client: AsyncStoryflowClient,
    lines: list[batching.InputLine],
    state: batching.BatchState,
    state_path: Path,
) -> tuple[batching.Tally, list[dict[str, Any]]]:
    with _batch_progress() as progress:
        display = _BatchDisplay(progress, len(lines))
        runner = batching.BatchRunner(
            client, lines, state, state_path, on_batch=_announce_batch, on_change=display.update
        )
        return asyncio.run(_closing_after(client, runner))


def _announce_batch(batch_id: str) -> None:
    typer.echo(batch_id)  # at once (click flushes), so a script (or a person) can follow it elsewhere


async def _closing_after(
    client: AsyncStoryflowClient, runner: batching.BatchRunner
) -> tuple[batching.Tally, list[dict[str, Any]]]:
    async with client:
        return await runner.run()


def _follow_batch(client: StoryflowClient, batch_id: str) -> Batch:
    schedule = client.poll_schedule
    delay = schedule.first_delay
    with _batch_progress() as progress:
        batch = client.get_batch(batch_id)
        display = _BatchDisplay(progress, batch.total)
        while True:
            display.update(batching.Tally(total=batch.total, counts=batch.counts))
            if batch.counts.active == 0:
                return batch
            time.sleep(delay)
            delay = schedule.next_delay(delay)
            batch = client.get_batch(batch_id)


def _batch_progress() -> Progress:
    return Progress(
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "[green]{task.fields[complete]} done[/] [red]{task.fields[failed]} failed[/] "
            "[yellow]{task.fields[pending]} pending[/]{task.fields[extra]}"
        ),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=_stderr(),
    )


class _BatchDisplay:
    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task(
            "batch", total=total, complete=0, failed=0, pending=total, extra="", rate=""
        )
        self._started = time.monotonic()
        self._ended_before: int | None = None

    def update(self, tally: batching.Tally) -> None:
        counts = tally.counts
        if self._ended_before is None:
            self._ended_before = tally.ended
        extra = []
        if counts.awaiting_input:
            extra.append(f"[magenta]{counts.awaiting_input} await input[/]")
        if counts.pending_docs:
            extra.append(f"[magenta]{counts.pending_docs} need docs[/]")
        self._progress.update(
            self._task,
            total=tally.total,
            completed=tally.ended,
            complete=counts.complete,
            failed=counts.unsuccessful,
            pending=counts.active,
            extra="".join(f" {part}" for part in extra),
            rate=self._rate(tally.ended - self._ended_before),
        )

    def _rate(self, ended_now: int) -> str:
        elapsed = time.monotonic() - self._started
        return f"{ended_now / elapsed:.1f} runs/s" if elapsed > 0 and ended_now else ""


def _counts_line(batch: Batch) -> str:
    """`batch <id>: 8/10 ended (7 complete, 1 failed), 2 queued`, naming only the counts that are not 0."""
    counts = batch.counts
    ended = ("complete", "failed", "cancelled", "invalid", "rejected", "pending_docs")
    moving = ("queued", "in_progress", "awaiting_input")
    done = sum(getattr(counts, name) for name in ended)
    detail = ", ".join(f"{getattr(counts, name)} {name}" for name in ended if getattr(counts, name))
    rest = ", ".join(f"{getattr(counts, name)} {name}" for name in moving if getattr(counts, name))
    state = "finished" if batch.finished else "not finished"
    line = f"batch {batch.batch_id}: {done}/{batch.total} ended"
    line += f" ({detail})" if detail else ""
    return line + (f", {rest}" if rest else "") + f"; {state}"


def _report_batch(final: batching.Tally, results_path: Path) -> None:
    c = final.counts
    summary = (
        f"{c.complete} complete, {c.failed} failed, {c.cancelled} cancelled, {c.invalid} invalid, "
        f"{c.rejected} rejected, {c.pending_docs} pending docs, {c.awaiting_input} awaiting input; "
        f"results in {results_path}"
    )
    _stderr().print(escape(summary))
    if c.unsuccessful:
        raise typer.Exit(1)
