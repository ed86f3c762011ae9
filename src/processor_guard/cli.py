"""The ``processor-guard`` command: health, reconcile, locks and the demo.

Every command shares one error format (``processor-guard: error: ...``, one line on
stderr, never a traceback for an expected failure) and one table of exit codes,
:data:`EXIT_CODES`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib
import json
import logging
import os
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

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
        try:
            result = super().main(
                args, prog_name or "processor-guard", complete_var, False, **extra
            )
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(exc.format_message() + hint, EXIT_USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_COULD_NOT_RUN)
        except click.Abort:
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:
            failure = classify_failure(exc)
            if failure is None:
                raise
            _fail(*failure)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else EXIT_OK)


# ---------------------------------------------------------------------- error handling


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"processor-guard: error: {_one_line(message)}", err=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def classify_failure(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an expected failure; None for a bug (keep the traceback)."""
    from ._extras import extra_for
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
    if module.startswith(("google.", "redis", "duckdb", "_duckdb", "grpc")):
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


def completion_client(url: str) -> Any:
    """``firestore://PROJECT`` (or a bare project id) or ``sqlite:///path`` (local docstore)."""
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

        return SQLiteDocumentClient(parts.path)
    if parts.scheme == "firestore" and parts.netloc:
        return _firestore_client(parts.netloc)
    raise ConfigError(
        f"--completion {url!r}: expected firestore://PROJECT, a project id or sqlite:///path"
    )


def _firestore_client(project: str) -> Any:
    from ._extras import needs_extra

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
        try:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]
        except ImportError:
            raise ConfigError(
                "pubsub:// publishers need google-cloud-pubsub (pip install google-cloud-pubsub)"
            ) from None
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
) -> Any:
    from .completion.tracker import CompletionTracker

    if not completion:
        return None
    return CompletionTracker(
        completion_client(completion),
        phase,
        _names(expected, "--expected"),
        publisher(publish) if publish else None,
        collection=collection,
        rpc_timeout=timeout,
    )


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


@main.command()
@click.option("--date", "game_date", required=True, help="Game date, YYYY-MM-DD.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@completion_options
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="Only this table (repeatable; default: every expected processor's table).",
)
@click.option("--scraper-expected", help="When the scraper should first run (ISO date-time).")
@click.option("--scraper-first-run", help="When it first ran (ISO date-time); omit if not yet.")
@click.option(
    "--max-late-hours",
    type=float,
    default=DEFAULT_LATENESS_HOURS,
    show_default=True,
    help="Lateness alert.",
)
def health(
    game_date: str,
    as_json: bool,
    warehouse: str | None,
    completion: str | None,
    phase: str,
    collection: str | None,
    expected: str | None,
    timeout: float,
    tables: Sequence[str],
    scraper_expected: str | None,
    scraper_first_run: str | None,
    max_late_hours: float,
) -> None:
    """Duplicates, completion accuracy, trigger delay and scraper lateness for a date.

    Exit 0 ok, 1 warning, 2 critical (3 could not run, 4 usage error). Signals without
    data are shown as unknown.
    """
    from .completion.health import Thresholds, run_health
    from .tables import resolve_table
    from .writes.inspect import open_warehouse

    day = _date(game_date)
    specs = {name: resolve_table(name) for name in tables} if tables else None
    if scraper_first_run and not scraper_expected:
        raise ConfigError("--scraper-first-run needs --scraper-expected")
    expected_at = _datetime(scraper_expected, "--scraper-expected")
    first_run = _datetime(scraper_first_run, "--scraper-first-run")
    tracker = _tracker(completion, phase, collection, expected, timeout)
    source = open_warehouse(warehouse) if warehouse else None
    try:
        report = run_health(
            day,
            tracker=tracker,
            warehouse=source,
            tables=specs,
            scraper_expected=expected_at,
            scraper_first_run=first_run,
            thresholds=Thresholds(max_scraper_late_hours=max_late_hours),
        )
    finally:
        if source is not None:
            source.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        from rich.table import Table

        colours = {"ok": "green", "warning": "yellow", "critical": "red", "unknown": "dim"}
        table = Table(title=f"processor-guard health {report.game_date}: {report.status.upper()}")
        for col in ("check", "status", "value", "detail"):
            table.add_column(col)
        for check in report.checks:
            colour = colours[check.status]
            value = "-" if check.value is None else str(check.value)
            table.add_row(check.name, f"[{colour}]{check.status}[/]", value, check.detail)
        _console().print(table)
    sys.exit(report.exit_code)


@main.command()
@click.option("--date", "game_date", required=True, help="Game date, YYYY-MM-DD.")
@click.option("--fix", is_flag=True, help="Repair the document and publish a due trigger.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@completion_options
@click.option(
    "--publisher",
    envvar=PUBLISHER_ENV,
    help="How --fix publishes a trigger: file:///path.jsonl, python:module:function or "
    f"pubsub://projects/P/topics/T [env {PUBLISHER_ENV}].",
)
def reconcile(
    game_date: str,
    fix: bool,
    as_json: bool,
    warehouse: str | None,
    completion: str | None,
    phase: str,
    collection: str | None,
    expected: str | None,
    timeout: float,
    publisher: str | None,
) -> None:
    """Compare a date's completion document with the data; dry run unless --fix.

    --fix records processors whose data exists, recomputes the count and publishes a
    due trigger for real (never marks it triggered without publishing). Exit 0 when
    nothing is (left) wrong, 1 otherwise (3 could not run, 4 usage error).
    """
    from .writes.inspect import open_warehouse

    day = _date(game_date)
    if not warehouse:
        raise ConfigError(f"reconcile needs --warehouse (or {WAREHOUSE_ENV})")
    if not completion:
        raise ConfigError(f"reconcile needs --completion (or {COMPLETION_ENV})")
    if publisher is None and fix:
        log.warning("no --publisher: a due trigger will be left pending, not published")
    tracker = _tracker(completion, phase, collection, expected, timeout, publisher)
    source = open_warehouse(warehouse)
    try:
        report = tracker.reconcile(day, source, dry_run=not fix)
        remaining = tracker.reconcile(day, source, dry_run=True) if fix else report
    finally:
        source.close()
    if as_json:
        data = report.to_dict()
        data["remaining_problems"] = list(remaining.problems)
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        console = _console()
        mode = "fix" if fix else "dry run"
        console.print(f"reconcile {tracker.collection}/{report.game_date} ({mode})")
        for check in report.tables:
            console.print(
                f"  {check.table}: {check.rows} rows, {check.duplicate_keys} duplicate keys, "
                f"document says {'complete' if check.doc_complete else 'not complete'}",
                markup=False,
            )
        for problem in report.problems:
            console.print(f"  problem: {problem}", markup=False)
        for change in report.changes:
            console.print(f"  change: {change}", markup=False)
        if fix:
            for problem in remaining.problems:
                console.print(f"  still wrong: {problem}", markup=False)
        if report.ok:
            console.print("  nothing wrong")
    sys.exit(0 if remaining.ok else 1)


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
    from .stores import open_store

    if not url:
        raise ConfigError(f"no lease store: pass --store or set {STORE_ENV}")
    return open_store(url)


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
@click.option("--reason", default="", help="Why; written to the log line.")
def locks_break(key: str, store: str | None, force: bool, reason: str) -> None:
    """Free KEY whoever holds it and raise its fence, so the old holder's writes are refused."""
    if not force:
        raise ConfigError(f"refusing to break {key!r} without --force")
    lease_store = _open_store(store)
    try:
        before = lease_store.holder(key)
        fence = lease_store.break_lease(key)
    finally:
        lease_store.close()
    who = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
    was = "free" if before is None else f"held by {before.owner} with fence {before.fence}"
    why = f" reason: {reason}" if reason else ""
    log.warning("lease %s broken by %s (%s); fence raised to %d.%s", key, who, was, fence, why)
    click.echo(f"broke {key} ({was}); fence is now {fence}; broken by {who}")


if __name__ == "__main__":  # pragma: no cover
    main()
