"""The ``studystream`` command: one entry point for the stack, the pipeline processes and the tools.

Sub-commands import their implementation lazily so ``studystream --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from pydantic import ValidationError

from app.settings import ENV_PREFIX, Settings, get_settings
from domain.errors import StudyStreamError


class StudyStreamGroup(click.Group):
    """Turns StudyStream's own errors into one clear line and exit status 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except StudyStreamError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            _report_settings(exc)
            ctx.exit(2)


def _report_settings(exc: ValidationError) -> None:
    """A bad STUDYSTREAM_* value: one line per variable, saying why, without a traceback."""
    for error in exc.errors():
        name = f"{ENV_PREFIX}{'_'.join(str(part) for part in error['loc']).upper()}"
        click.echo(f"error: {name}: {error['msg'].removeprefix('Value error, ')}", err=True)


@click.group(cls=StudyStreamGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """StudyStream: DICOM in, Kafka through, FHIR ImagingStudy out."""


# --- stack -----------------------------------------------------------------------------------------

_services_option = click.option(
    "--service",
    "services",
    type=click.Choice(["kafka", "fhir"]),
    multiple=True,
    help="Only this service (repeatable). Default: both.",
)


@cli.group()
def stack() -> None:
    """The local Kafka broker and HAPI FHIR server (fetched with Maven, run with Java)."""


@stack.command("up")
@_services_option
def stack_up(services: tuple[str, ...]) -> None:
    """Fetch what is missing, start what is not running, wait until both answer."""
    from infra import stack as local_stack

    local_stack.up(get_settings(), services or local_stack.SERVICES, echo=click.echo)


@stack.command("down")
@_services_option
@click.option("--purge", is_flag=True, help="Also delete the services' data and logs.")
def stack_down(services: tuple[str, ...], purge: bool) -> None:
    """Stop what `stack up` started (data is kept unless --purge)."""
    from infra import stack as local_stack

    local_stack.down(get_settings(), services or local_stack.SERVICES, purge=purge, echo=click.echo)


@stack.command("status")
@_services_option
def stack_status(services: tuple[str, ...]) -> None:
    """Say what runs where. Exit status 0 only when every service answers."""
    from infra import stack as local_stack

    items = local_stack.status(get_settings(), services or local_stack.SERVICES)
    for item in items:
        owner = f"pid {item.pid}" if item.pid else "not started by this stack"
        state = "up" if item.healthy else "down"
        click.echo(f"{item.name:6} {state:5} {item.address:40} {owner:28} log: {item.log_file}")
    sys.exit(0 if all(item.healthy for item in items) else 1)


@stack.command("logs")
@_services_option
@click.option("-n", "--lines", default=50, show_default=True, help="Lines per service.")
def stack_logs(services: tuple[str, ...], lines: int) -> None:
    """Print the last lines of each service's log."""
    from infra import processes
    from infra import stack as local_stack

    for item in local_stack.status(get_settings(), services or local_stack.SERVICES):
        click.echo(f"==> {item.log_file} <==")
        for line in processes.tail(item.log_file, lines):
            click.echo(line)


# --- pipeline processes ----------------------------------------------------------------------------


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.option("--datadir", type=click.Path(path_type=Path), default=None, help="Worker table data directory.")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Level of StudyStream's own lines [STUDYSTREAM_LOG_LEVEL, default INFO]; libraries: STUDYSTREAM_LOG_LEVELS.",
)
@click.pass_context
def worker(ctx: click.Context, datadir: Path | None, log_level: str | None) -> None:
    """Run a Faust worker (Faust's worker options pass through: --web-port 6067, ...).

    Each worker on one host needs its own --web-port; its table data goes to
    <STUDYSTREAM_STATE_DIR>/worker-<web port> unless --datadir says otherwise. Faust's -l/--loglevel
    sets the same level as --log-level.
    """
    from app.worker import run_worker

    run_worker(get_settings(), list(ctx.args), datadir, log_level)


@cli.command()
def run() -> None:
    """Start the whole pipeline on the local stack in the foreground; Ctrl-C stops it all."""
    from app.supervisor import run_pipeline

    sys.exit(run_pipeline(get_settings(), echo=click.echo))


def _register_optional(module: str, names: tuple[str, ...]) -> None:
    """Commands of the DICOM side, registered from their own packages."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:  # pragma: no cover - a package under construction
        return
    except ValidationError:  # options read the settings: main() reports the bad value
        return
    for name in names:
        command = getattr(mod, name, None)
        if isinstance(command, click.Command):
            cli.add_command(command)


_register_optional("scp.cli", ("receive", "receiver"))
_register_optional("scu.cli", ("send", "send_file", "echo", "synth"))
_register_optional("app.replay_cli", ("replay",))
_register_optional("app.redrive", ("redrive",))
_register_optional("app.resolve", ("resolve",))
_register_optional("app.status", ("status",))


def main() -> None:
    try:
        get_settings()
    except ValidationError as exc:
        _report_settings(exc)
        sys.exit(2)
    cli(prog_name="studystream")


if __name__ == "__main__":
    main()
