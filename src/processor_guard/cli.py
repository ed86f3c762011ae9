"""The ``processor-guard`` command: health, reconcile, locks and the demo.

Every command shares one error format (``processor-guard: error: ...``, one line on
stderr, never a traceback for an expected failure) and one table of exit codes,
:data:`EXIT_CODES`.
``health`` exits 0 ok, 1 warning or unknown, 2 critical; ``reconcile`` 0 when nothing
is (left) wrong, 1 otherwise; ``locks break`` 1 when the key was free. Under ``--json``
an error is also a JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import importlib
import json
import logging
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from ._extras import extra_for, needs_extra
from .completion.lateness import DEFAULT_LATENESS_HOURS
from .dates import parse_game_date, parse_instant
from .errors import ConfigError, GuardError
from .leases import STORE_ENV

log = logging.getLogger("processor_guard.cli")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_CRITICAL = 2
EXIT_COULD_NOT_RUN = 3
EXIT_USAGE = 4
EXIT_INTERRUPTED = 130
#: What each exit code means, for every command (shown by ``--help``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok (locks show: the key is held)",
    EXIT_WARNING: "warning, problems found, demo not clean, locks show: key free",
    EXIT_CRITICAL: "critical (health)",
    EXIT_COULD_NOT_RUN: "could not run: unreachable store or warehouse, missing extra",
    EXIT_USAGE: "usage error: bad option, date, URL, path or table name",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
MAX_SCAN_DAYS = 62
AUDIT_LOG_ENV = "PROCESSOR_GUARD_AUDIT_LOG"
WAREHOUSE_ENV = "PROCESSOR_GUARD_WAREHOUSE"
COMPLETION_ENV = "PROCESSOR_GUARD_COMPLETION"
PUBLISHER_ENV = "PROCESSOR_GUARD_PUBLISHER"
DEFAULT_EXPECTED = (
    "player_game_summary",
    "team_offense_game_summary",
    "team_defense_game_summary",
    "upcoming_player_game_context",
    "upcoming_team_game_context",
)

# ---------------------------------------------------------------------- lazy commands
# Commands defined in other modules, imported only when run (or listed by --help).
# The demo lives in processor_guard.demo (owned by the demo); add others here.
LAZY_COMMANDS: dict[str, str] = {
    "demo": "processor_guard.demo.runner:demo_command",
}


class _Group(click.Group):
    """The top-level group: serves LAZY_COMMANDS and maps every failure to one line
    and one exit code, whichever command raised it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        module_name, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
        try:
            loaded = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"command {cmd_name!r} is not available: {exc}") from None
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"{LAZY_COMMANDS[cmd_name]} is not a click command")
        return loaded

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        # Under --json an error is a JSON object on stdout too, whatever raised it.
        as_json = "--json" in (sys.argv[1:] if args is None else list(args))
        try:
            result = super().main(
                args, prog_name or "processor-guard", complete_var, False, **extra
            )
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(exc.format_message() + hint, EXIT_USAGE, as_json=as_json)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_COULD_NOT_RUN, as_json=as_json)
        except click.Abort:
            _fail("interrupted", EXIT_INTERRUPTED, as_json=as_json)
        except Exception as exc:
            failure = classify_failure(exc)
            if failure is None:
                raise
            _fail(*failure, as_json=as_json)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else EXIT_OK)


# ---------------------------------------------------------------------- error handling


def _fail(message: str, code: int, *, as_json: bool = False) -> NoReturn:
    if as_json:
        error = {"error": _one_line(message), "exit_code": code, "schema_version": 1}
        click.echo(json.dumps(error, sort_keys=True))
    click.echo(f"processor-guard: error: {_one_line(message)}", err=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def classify_failure(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an expected failure; None for a bug (keep the traceback)."""
    from .errors import MissingDependency

    text = str(exc) or type(exc).__name__
    if isinstance(exc, MissingDependency):
        return text, EXIT_COULD_NOT_RUN
    if isinstance(exc, ModuleNotFoundError):
        extra = extra_for(exc.name)
        install = f"pip install 'processor-guard[{extra}]'" if extra else "install it"
        return f"{text}: {install}", EXIT_COULD_NOT_RUN
    if isinstance(exc, (ConfigError, ValueError)):
        return text, EXIT_USAGE
    if isinstance(exc, (GuardError, OSError)):
        return text, EXIT_COULD_NOT_RUN
    module = type(exc).__module__
    if module.startswith(("google.", "redis", "duckdb", "_duckdb", "grpc", "sqlite3")):
        return f"{type(exc).__name__}: {text}", EXIT_COULD_NOT_RUN
    return None


# ---------------------------------------------------------------------- helpers


def _date(value: str) -> dt.date:
    return parse_game_date(value, argument="--date")


def _datetime(value: str | None, option: str) -> dt.datetime | None:
    return None if value is None else parse_instant(value, argument=option)


def _names(value: str | None, option: str) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_EXPECTED
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ConfigError(f"{option} needs at least one name")
    return names


def completion_client(url: str, *, read_only: bool = False) -> Any:
    """``firestore://PROJECT`` (or a bare project id) or ``sqlite:///path`` (local docstore);
    ``read_only`` opens a local file without changing it (Firestore reads are reads)."""
    if "://" not in url:
        if "/" in url or url.endswith(".db"):
            raise ConfigError(
                f"--completion {url!r} looks like a file path: a local completion store is "
                f"sqlite://{url if url.startswith('/') else '/' + url}"
                " (a bare value is read as a Firestore project id)"
            )
        return _firestore_client(url)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not parts.path or parts.path == "/":
            raise ConfigError(f"--completion {url!r}: sqlite needs a file path")
        path = Path(parts.path)
        if path.is_dir():
            raise ConfigError(
                f"--completion {url!r}: {str(path)!r} is a directory, not a completion file"
            )
        if not path.is_file():
            raise ConfigError(f"--completion {url!r}: file {str(path)!r} does not exist")
        from .completion.docstore import SQLiteDocumentClient

        return SQLiteDocumentClient(parts.path, read_only=read_only)
    if parts.scheme == "firestore" and parts.netloc:
        return _firestore_client(parts.netloc)
    raise ConfigError(
        f"--completion {url!r}: expected firestore://PROJECT, a project id or sqlite:///path"
    )


def _firestore_client(project: str) -> Any:

    with needs_extra("firestore", "--completion firestore://"):
        from google.cloud import firestore

    return firestore.Client(project=project)


def publisher(spec: str) -> Callable[[str, Any], str]:
    """A publish callable from ``file:///path.jsonl``, ``python:module:function`` or
    ``pubsub://projects/P/topics/T`` (needs google-cloud-pubsub)."""
    if spec.startswith("python:"):
        module_name, _, attr = spec[len("python:") :].partition(":")
        if not module_name or not attr:
            raise ConfigError(f"bad publisher {spec!r}: use python:module:function")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"bad publisher {spec!r}: {exc}") from None
        if not callable(func):
            raise ConfigError(f"bad publisher {spec!r}: {attr} is not callable")
        return func  # type: ignore[no-any-return]
    parts = urlsplit(spec)
    if parts.scheme == "file" and parts.path:
        path = Path(parts.path)

        def to_file(game_date: str, state: Any) -> str:
            message = {"dedup_id": state.dedup_id, "game_date": game_date, **state.to_dict()}
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(message, sort_keys=True) + "\n")
            with path.open(encoding="utf-8") as inp:
                line = sum(1 for _ in inp)
            return f"file:{path}:{line}"

        return to_file
    if parts.scheme == "pubsub" and parts.netloc == "projects":
        topic = f"projects{parts.path}"
        with needs_extra("pubsub", "a pubsub:// publisher"):
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]
        client = pubsub_v1.PublisherClient()

        def to_pubsub(game_date: str, state: Any) -> str:
            data = json.dumps(state.to_dict(), sort_keys=True).encode()
            future = client.publish(topic, data, dedup_id=state.dedup_id, game_date=game_date)
            return str(future.result(timeout=60))

        return to_pubsub
    raise ConfigError(
        f"bad publisher {spec!r}: use file:///path.jsonl, python:module:function "
        "or pubsub://projects/P/topics/T"
    )


def _tracker(
    completion: str | None,
    phase: str,
    collection: str | None,
    expected: str | None,
    timeout: float,
    publish: str | None = None,
    *,
    read_only: bool = False,
) -> Any:
    from .completion.tracker import CompletionTracker

    if not completion:
        return None
    return CompletionTracker(
        completion_client(completion, read_only=read_only),
        phase,
        _names(expected, "--expected"),
        publisher(publish) if publish else None,
        collection=collection,
        rpc_timeout=timeout,
    )


@contextlib.contextmanager
def _opened_source(url: str | None) -> Iterator[Any]:
    """The warehouse at ``url`` (None: none) for the block; a DuckDB file is opened
    read-only (nothing here writes to the warehouse, and health must not change the
    files it inspects)."""
    from .writes.inspect import WarehouseSource, open_warehouse

    if url is None:
        yield None
        return
    source = open_warehouse(url)  # validates the URL (and that a DuckDB file exists)
    if urlsplit(url).scheme.lower() != "duckdb":
        try:
            yield source
        finally:
            source.close()
        return
    import duckdb

    from .writes.warehouse import DuckDBWarehouse

    assert isinstance(source.warehouse, DuckDBWarehouse) and source.warehouse.path is not None
    conn = duckdb.connect(source.warehouse.path, read_only=True)
    try:
        yield WarehouseSource(DuckDBWarehouse(conn))
    finally:
        conn.close()


def table_specs(tables: Sequence[str], tables_file: str | None) -> dict[str, Any] | None:
    """TableSpecs from ``--table`` (a built-in name, or ``NAME=KEY1,KEY2[@PARTITION]``) and
    a JSON ``--tables-file`` (``{"NAME": {"keys": [...], "partition_field": ...}}``)."""
    from .tables import TableSpec, resolve_table

    specs: dict[str, TableSpec] = {}
    if tables_file:
        try:
            raw = json.loads(Path(tables_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--tables-file {tables_file!r}: {_one_line(str(exc))}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--tables-file {tables_file!r} must hold a JSON object")
        for name, body in raw.items():
            if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
                raise ConfigError(f"--tables-file: {name!r} needs a keys list")
            extra = {k: v for k, v in body.items() if k in ("partition_field", "order_by")}
            specs[name] = TableSpec(name, tuple(body["keys"]), **extra)
    for item in tables:
        name, sep, rest = item.partition("=")
        if not sep:
            specs[name] = resolve_table(name)
            continue
        keys, _, partition = rest.partition("@")
        columns = tuple(k.strip() for k in keys.split(",") if k.strip())
        if not name or not columns:
            raise ConfigError(f"--table {item!r}: use NAME or NAME=KEY1,KEY2[@PARTITION]")
        specs[name] = TableSpec(name, columns, partition_field=partition or "game_date")
    return specs or None


def _console() -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else 120
    return Console(width=width, highlight=False)


def completion_options(func: F) -> F:
    """--warehouse, --completion, --phase, --collection, --expected."""
    options = [
        click.option(
            "--warehouse",
            envvar=WAREHOUSE_ENV,
            help=f"duckdb:///path/file.db or bigquery://PROJECT/DATASET [env {WAREHOUSE_ENV}].",
        ),
        click.option(
            "--completion",
            envvar=COMPLETION_ENV,
            help="Where completion documents live: firestore://PROJECT (FIRESTORE_EMULATOR_HOST "
            f"is honoured), a project id, or sqlite:///path [env {COMPLETION_ENV}].",
        ),
        click.option("--phase", default="phase3", show_default=True, help="Phase name."),
        click.option("--collection", help="Collection (default: {phase}_completion)."),
        click.option(
            "--expected",
            help="Comma-separated expected processors (default: the five analytics tables).",
        ),
        click.option(
            "--table",
            "tables",
            multiple=True,
            help="A table to check: a built-in name, or NAME=KEY1,KEY2[@PARTITION] for "
            "any other (repeatable).",
        ),
        click.option(
            "--tables-file",
            type=click.Path(dir_okay=False),
            help='JSON table specs: {"NAME": {"keys": [...], "partition_field": "game_date"}}.',
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=10.0,
            show_default=True,
            help="Seconds one completion-store call may take before it counts as unreachable.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# ---------------------------------------------------------------------- commands


def _exit_code_help() -> str:
    lines = [f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\b\nExit codes (every command):\n" + "\n".join(lines)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_exit_code_help(),
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level on stderr.")
@click.version_option(package_name="processor-guard", prog_name="processor-guard")
def main(verbose: bool) -> None:
    """Keep data-pipeline processors from corrupting output: inspect and repair."""
    # google-api-core warns on every start under Python versions it plans to drop; on a
    # command line that is noise around the one line an error is meant to be.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.api_core\.")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def threshold_options(func: F) -> F:
    """One option per health threshold (defaults: pipeline-facts.md)."""
    from .completion.health import Thresholds

    base = Thresholds()
    options = [
        click.option("--max-duplicate-keys", type=click.IntRange(min=0),
                     default=base.max_duplicate_keys, show_default=True,
                     help="Duplicate keys per table before critical."),
        click.option("--min-accuracy", type=click.FloatRange(0, 1),
                     default=base.min_accuracy, show_default=True,
                     help="Completion accuracy below which it is critical."),
        click.option("--max-trigger-delay", type=click.FloatRange(min=0),
                     default=base.max_trigger_delay_minutes, show_default=True,
                     help="Minutes from completion to trigger before a warning."),
        click.option("--max-late-hours", type=click.FloatRange(min=0),
                     default=DEFAULT_LATENESS_HOURS, show_default=True,
                     help="Scraper lateness alert (hours)."),
        click.option("--warn-after", type=click.FloatRange(min=0),
                     default=base.completion_warn_after_hours, show_default=True,
                     help="Hours after the date ends by which the phase should be complete "
                     "(warning past it)."),
        click.option("--error-after", type=click.FloatRange(min=0),
                     default=base.completion_error_after_hours, show_default=True,
                     help="Hours after the date ends past which an incomplete phase is critical."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@main.command()
@click.option("--date", "game_date", required=True, help="Game date, YYYY-MM-DD.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the JSON report to this file (an artifact, like dbt's sources.json).",
)
@completion_options
@click.option("--scraper-expected", help="When the scraper should first run (ISO date-time).")
@click.option("--scraper-first-run", help="When it first ran (ISO date-time); omit if not yet.")
@threshold_options
def health(
    game_date: str,
    as_json: bool,
    output: str | None,
    warehouse: str | None,
    completion: str | None,
    phase: str,
    collection: str | None,
    expected: str | None,
    tables: Sequence[str],
    tables_file: str | None,
    timeout: float,
    scraper_expected: str | None,
    scraper_first_run: str | None,
    **thresholds: float,
) -> None:
    """Rows and duplicates, completion against its deadline, accuracy, trigger delay and
    scraper lateness for a date. Reads only: nothing is created or changed.

    Exit 0 ok, 1 warning or unknown, 2 critical (3 could not run, 4 usage error).
    """
    from .completion.health import Thresholds, run_health

    day = _date(game_date)
    specs = table_specs(tables, tables_file)
    if scraper_first_run and not scraper_expected:
        raise ConfigError("--scraper-first-run needs --scraper-expected")
    limits = Thresholds(
        max_duplicate_keys=int(thresholds["max_duplicate_keys"]),
        min_accuracy=thresholds["min_accuracy"],
        max_trigger_delay_minutes=thresholds["max_trigger_delay"],
        max_scraper_late_hours=thresholds["max_late_hours"],
        completion_warn_after_hours=thresholds["warn_after"],
        completion_error_after_hours=thresholds["error_after"],
    )
    expected_at = _datetime(scraper_expected, "--scraper-expected")
    first_run = _datetime(scraper_first_run, "--scraper-first-run")
    if not warehouse and not completion:
        raise ConfigError(
            f"health needs --warehouse and/or --completion (or {WAREHOUSE_ENV}/{COMPLETION_ENV})"
            ": with neither, nothing would be checked"
        )
    tracker = _tracker(completion, phase, collection, expected, timeout, read_only=True)
    with _opened_source(warehouse or None) as source:
        report = run_health(
            day,
            tracker=tracker,
            warehouse=source,
            tables=specs,
            scraper_expected=expected_at,
            scraper_first_run=first_run,
            thresholds=limits,
        )
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True)
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
    if as_json:
        click.echo(text)
    else:
        _print_health(report)
    sys.exit(report.exit_code)


def _scan_dates(game_date: str | None, date_from: str | None, date_to: str | None) -> list[Any]:
    """The dates to reconcile: --date, or --from..--to (at most MAX_SCAN_DAYS)."""
    from .dates import date_range

    if game_date and (date_from or date_to):
        raise ConfigError("give either --date or --from/--to, not both")
    if game_date:
        return [_date(game_date)]
    if not date_from or not date_to:
        raise ConfigError("give --date, or --from and --to for a range")
    start = parse_game_date(date_from, argument="--from")
    end = parse_game_date(date_to, argument="--to")
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    days = date_range(start, end)
    if len(days) > MAX_SCAN_DAYS:
        raise ConfigError(f"--from..--to spans {len(days)} days; at most {MAX_SCAN_DAYS}")
    return list(days)


def _print_health(report: Any) -> None:
    from rich.table import Table

    colours = {
        "ok": "green",
        "warning": "yellow",
        "critical": "red",
        "unknown": "magenta",
        "skipped": "dim",
    }
    table = Table(title=f"processor-guard health {report.game_date}: {report.status.upper()}")
    for col in ("check", "status", "value", "detail"):
        table.add_column(col)
    for check in report.checks:
        colour = colours[check.status]
        value = "-" if check.value is None else str(check.value)
        table.add_row(check.name, f"[{colour}]{check.status}[/]", value, check.detail)
    _console().print(table)


@main.command()
@click.option("--date", "game_date", help="Game date, YYYY-MM-DD.")
@click.option("--from", "date_from", help="Scan from this date (with --to).")
@click.option(
    "--to", "date_to", help=f"Scan to this date, inclusive (at most {MAX_SCAN_DAYS} days)."
)
@click.option("--fix", is_flag=True, help="Repair what the data proves and publish a due trigger.")
@click.option(
    "--force",
    is_flag=True,
    help="Let --expected replace different expected processors stored in a document.",
)
@click.option(
    "--retrigger",
    metavar="REASON",
    help="Publish complete dates' triggers again after a backfill (new dedup id).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@completion_options
@click.option(
    "--publisher",
    envvar=PUBLISHER_ENV,
    help="How --fix publishes a trigger: file:///path.jsonl, python:module:function or "
    f"pubsub://projects/P/topics/T [env {PUBLISHER_ENV}].",
)
def reconcile(
    game_date: str | None,
    date_from: str | None,
    date_to: str | None,
    fix: bool,
    force: bool,
    retrigger: str | None,
    as_json: bool,
    warehouse: str | None,
    completion: str | None,
    phase: str,
    collection: str | None,
    expected: str | None,
    tables: Sequence[str],
    tables_file: str | None,
    timeout: float,
    publisher: str | None,
) -> None:
    """Compare completion documents with the data; dry run unless --fix.

    --fix records only what the data proves (a processor with no entry, clean rows and
    no declared requirement), never a failed or partial run; recomputes the count; and
    publishes a due trigger for real. --from/--to scans a range for triggers that never
    fired. Exit 0 when nothing is (left) wrong, 1 otherwise (3 could not run, 4 usage
    error).
    """
    days = _scan_dates(game_date, date_from, date_to)
    if not warehouse:
        raise ConfigError(f"reconcile needs --warehouse (or {WAREHOUSE_ENV})")
    if not completion:
        raise ConfigError(f"reconcile needs --completion (or {COMPLETION_ENV})")
    if retrigger is not None and not publisher:
        raise ConfigError("--retrigger needs --publisher")
    if publisher is None and fix:
        log.warning("no --publisher: a due trigger will be left pending, not published")
    specs = table_specs(tables, tables_file)
    writes = fix or retrigger is not None
    tracker = _tracker(
        completion, phase, collection, expected, timeout, publisher, read_only=not writes
    )
    reports: list[dict[str, Any]] = []
    with _opened_source(warehouse) as source:
        for day in days:
            reports.append(_reconcile_one(tracker, source, day, fix, force, retrigger, specs))
    if as_json:
        body: Any = reports[0] if game_date else {"dates": reports}
        click.echo(json.dumps(body, indent=2, sort_keys=True))
    else:
        _print_reconcile(tracker.collection, reports, fix)
    sys.exit(0 if all(not r["remaining_problems"] for r in reports) else 1)


def _reconcile_one(
    tracker: Any,
    source: Any,
    day: dt.date,
    fix: bool,
    force: bool,
    retrigger: str | None,
    specs: dict[str, Any] | None,
) -> dict[str, Any]:
    report = tracker.reconcile(day, source, dry_run=not fix, tables=specs, force=force)
    remaining = (
        tracker.reconcile(day, source, dry_run=True, tables=specs, force=force) if fix else report
    )
    data: dict[str, Any] = report.to_dict()
    data["remaining_problems"] = list(remaining.problems)
    if retrigger is not None and data["remaining_problems"]:
        data["remaining_problems"].append("not re-triggered while problems remain")
    elif retrigger is not None and not report.empty:
        state = tracker.retrigger(day, reason=retrigger)
        data["retriggered"] = {"dedup_id": state.dedup_id, "message_id": state.message_id}
        if not state.triggered:
            data["remaining_problems"].append(f"re-trigger pending: {state.publish_error}")
    return data


def _print_reconcile(collection: str, reports: list[dict[str, Any]], fix: bool) -> None:
    console = _console()
    mode = "fix" if fix else "dry run"
    for r in reports:
        console.print(f"reconcile {collection}/{r['game_date']} ({mode})", markup=False)
        if r["empty"]:
            console.print("  no document and no rows for this date; nothing written", markup=False)
            continue
        for check in r["tables"]:
            recorded = (
                "" if check["recorded_rows"] is None else f", {check['recorded_rows']} recorded"
            )
            console.print(
                f"  {check['table']}: {check['rows']} rows{recorded}, "
                f"{check['duplicate_keys']} duplicate keys, document says "
                f"{'complete' if check['doc_complete'] else 'not complete'}",
                markup=False,
            )
        for problem in r["problems"]:
            console.print(f"  problem: {problem}", markup=False)
        for change in r["changes"]:
            console.print(f"  change: {change}", markup=False)
        if "retriggered" in r:
            console.print(f"  re-triggered: {r['retriggered']}", markup=False)
        if fix:
            for problem in r["remaining_problems"]:
                console.print(f"  still wrong: {problem}", markup=False)
        if not r["problems"]:
            console.print("  nothing wrong", markup=False)


@main.group()
def locks() -> None:
    """Inspect and break leases in a lease store."""


def store_option(func: F) -> F:
    return click.option(
        "--store",
        envvar=STORE_ENV,
        help=f"Lease store URL: redis://, firestore://, sqlite:///, memory:// [env {STORE_ENV}].",
    )(func)


def _open_store(url: str | None) -> Any:
    """The lease store at ``url``; a sqlite:/// file must already exist (a mistyped path
    would otherwise create a new, empty store that says every key is free)."""
    from .stores import open_store

    if not url:
        raise ConfigError(f"no lease store: pass --store or set {STORE_ENV}")
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = f"{parts.netloc}{parts.path}"
        if not path or not Path(path).is_file():
            raise ConfigError(f"lease store file {path!r} does not exist (--store {STORE_ENV})")
    return open_store(url)


def _check_key(key: str) -> str:
    """A lease key as the library makes them: ``SCOPE:YYYY-MM-DD``."""
    from .leases import lease_key

    scope, sep, day = key.rpartition(":")
    try:
        if sep and lease_key(scope, parse_game_date(day, argument="KEY")) == key:
            return key
    except ConfigError:
        pass
    raise ConfigError(
        f"KEY must be SCOPE:YYYY-MM-DD (e.g. player_game_summary:2026-02-03), got {key!r}"
    )


def _holder_dict(h: Any) -> dict[str, Any]:
    """One lease as JSON: the same keys and rounding from every store."""
    remaining = None if h.remaining is None else round(float(h.remaining), 3)
    return {"key": h.key, "held": True, "owner": h.owner, "fence": h.fence, "remaining": remaining}


@locks.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def locks_list(store: str | None, as_json: bool) -> None:
    """Every live lease: key, owner, fence, seconds left.

    JSON: a list of {"key", "held": true, "owner", "fence", "remaining"} (seconds, 3
    decimals, null if unknown), sorted by key.
    """
    lease_store = _open_store(store)
    try:
        holders = sorted(lease_store.holders(), key=lambda h: h.key)
    finally:
        lease_store.close()
    if as_json:
        click.echo(json.dumps([_holder_dict(h) for h in holders], indent=2))
        return
    if not holders:
        click.echo("no live leases")
        return
    from rich.table import Table

    table = Table(title=f"live leases ({len(holders)})")
    for col in ("key", "owner", "fence", "remaining"):
        table.add_column(col)
    for h in holders:
        left = "-" if h.remaining is None else f"{h.remaining:.1f}s"
        table.add_row(h.key, h.owner, str(h.fence), left)
    _console().print(table)


@locks.command("show")
@click.argument("key")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def locks_show(key: str, store: str | None, as_json: bool) -> None:
    """Who holds KEY (e.g. player_game_summary:2026-02-03): exit 0 if held, 1 if free.

    JSON: {"key", "held": true, "owner", "fence", "remaining"} (seconds, 3 decimals,
    null if unknown), or {"key", "held": false} for a free key.
    """
    _check_key(key)
    lease_store = _open_store(store)
    try:
        holder = lease_store.holder(key)
    finally:
        lease_store.close()
    if as_json:
        data = {"key": key, "held": False} if holder is None else _holder_dict(holder)
        click.echo(json.dumps(data, indent=2))
    elif holder is None:
        click.echo(f"{key}: free (no live lease)")
    else:
        left = "unknown" if holder.remaining is None else f"{holder.remaining:.1f}s"
        click.echo(f"{key}: held by {holder.owner} (fence {holder.fence}, {left} left)")
    sys.exit(EXIT_OK if holder is not None else EXIT_WARNING)


@locks.command("break")
@click.argument("key")
@store_option
@click.option("--force", is_flag=True, help="Required: breaking a live lease is deliberate.")
@click.option("--reason", default="", help="Why; written to the audit record.")
@click.option(
    "--audit-log",
    envvar=AUDIT_LOG_ENV,
    type=click.Path(dir_okay=False),
    help=f"Append who broke what, when and why as a JSON line to this file [env {AUDIT_LOG_ENV}].",
)
def locks_break(
    key: str, store: str | None, force: bool, reason: str, audit_log: str | None
) -> None:
    """Free KEY whoever holds it and raise its fence, so the old holder's writes are refused.

    Exit 0 when a held lease was broken, 1 when KEY was free (nothing broken).
    """
    _check_key(key)
    if not force:
        raise ConfigError(f"refusing to break {key!r} without --force")
    lease_store = _open_store(store)
    try:
        before = lease_store.holder(key)
        fence = None if before is None else lease_store.break_lease(key)
    finally:
        lease_store.close()
    who = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
    if before is None or fence is None:
        click.echo(f"{key} is free: nothing broken", err=True)
        sys.exit(1)
    record = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "event": "lease_broken",
        "key": key,
        "by": who,
        "was_owner": before.owner,
        "was_fence": before.fence,
        "fence": fence,
        "reason": reason,
    }
    if audit_log:
        with open(audit_log, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")
    why = f" reason: {reason}" if reason else ""
    log.warning(
        "lease %s broken by %s (held by %s with fence %s); fence raised to %d.%s",
        key, who, before.owner, before.fence, fence, why,
    )  # fmt: skip
    click.echo(
        f"broke {key} (held by {before.owner} with fence {before.fence}); fence is now {fence}; "
        f"broken by {who}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
