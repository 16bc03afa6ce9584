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
from client.models import PendingDocs, RunEvent, RunRecord
from client.sync_client import StoryflowClient

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts and pipes.")]
UrlOption = Annotated[str, typer.Option("--url", envvar="STORYFLOW_URL", help="Base URL of the storyflow API.")]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="STORYFLOW_API_KEY", help="API key, sent as a Bearer token.", show_default=False),
]
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
        file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON lines, one run body each.")],
        out: Annotated[Path | None, typer.Option("--out", help="Results file [default: <FILE>.results.jsonl].")] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel status polls.")] = 16,
        restart: Annotated[
            bool, typer.Option("--restart", help="Forget <FILE>.state.json and submit every line again.")
        ] = False,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        """Submit every run of a JSON-lines file, follow them, write one result line per input line.

        Resumable: <FILE>.state.json remembers what was submitted, so running the same command
        again after an interruption submits nothing twice. Exits 1 if any run failed, was
        cancelled or was invalid.
        """
        state_path = batching.state_path_for(file)
        results_path = out or batching.results_path_for(file)
        if restart:
            state_path.unlink(missing_ok=True)
        with _errors_reported(), _interruption_reported():
            lines = batching.read_input(file)
            state = batching.load_state(state_path)
            counts = _run_batch(self._factory.asynchronous(url, api_key), lines, state, state_path, concurrency)
            batching.write_results(results_path, lines, state)
        _report_batch(counts, results_path)


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
    concurrency: int,
) -> batching.BatchCounts:
    with _batch_progress() as progress:
        display = _BatchDisplay(progress, len(lines))
        runner = batching.BatchRunner(
            client, lines, state, state_path, concurrency=concurrency, on_change=display.update
        )
        return asyncio.run(_closing_after(client, runner))


async def _closing_after(client: AsyncStoryflowClient, runner: batching.BatchRunner) -> batching.BatchCounts:
    async with client:
        return await runner.run()


def _batch_progress() -> Progress:
    return Progress(
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "[green]{task.fields[complete]} done[/] [red]{task.fields[failed]} failed[/] "
            "[yellow]{task.fields[pending]} pending[/]{task.fields[needs_docs]}"
        ),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=_stderr(),
    )


class _BatchDisplay:
    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task(
            "batch", total=total, complete=0, failed=0, pending=total, needs_docs="", rate=""
        )
        self._started = time.monotonic()
        self._finished_before: int | None = None

    def update(self, counts: batching.BatchCounts) -> None:
        if self._finished_before is None:
            self._finished_before = counts.finished
        self._progress.update(
            self._task,
            completed=counts.finished,
            complete=counts.complete,
            failed=counts.failed,
            pending=counts.unfinished,
            needs_docs=f" [magenta]{counts.pending_docs} need docs[/]" if counts.pending_docs else "",
            rate=self._rate(counts.finished - self._finished_before),
        )

    def _rate(self, finished_now: int) -> str:
        elapsed = time.monotonic() - self._started
        return f"{finished_now / elapsed:.1f} runs/s" if elapsed > 0 and finished_now else ""


def _report_batch(counts: batching.BatchCounts, results_path: Path) -> None:
    summary = (
        f"{counts.complete} complete, {counts.failed} failed or invalid, "
        f"{counts.pending_docs} pending docs; results in {results_path}"
    )
    _stderr().print(escape(summary))
    if counts.failed:
        raise typer.Exit(1)
