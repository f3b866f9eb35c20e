"""Running the app so that every error a user can cause is one line on stderr, never a traceback.

Typer 0.29 raises the exceptions of its bundled copy of click (``typer._click``) and its own
``typer.Exit``/``typer.Abort``; older Typer raises click's. Both families are caught here.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer

from emomix.errors import EmomixError

USAGE_STATUS = 2
INTERRUPTED_STATUS = 130


def _classes(name: str) -> tuple[type[BaseException], ...]:
    """``name`` from typer's bundled click, typer itself and click, whichever exist."""
    found: list[type[BaseException]] = []
    for module_name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


CLICK_ERRORS = _classes("ClickException")
USAGE_ERRORS = _classes("UsageError")
NO_ARGS_IS_HELP = _classes("NoArgsIsHelpError")
EXITS = _classes("Exit")
ABORTS = _classes("Abort")
INTERRUPTS: tuple[type[BaseException], ...] = (KeyboardInterrupt, *ABORTS)


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _message(exc: BaseException) -> str:
    """click's formatted message (every click exception has ``format_message``), else ``str(exc)``."""
    format_message = getattr(exc, "format_message", None)
    return str(format_message()) if callable(format_message) else str(exc)


def _error(message: str) -> None:
    typer.echo(f"emomix: error: {_one_line(message)}", err=True)


def run_app(app: Any, argv: list[str] | None = None) -> int:
    """Run ``app`` on ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    ``emomix`` with no command prints the help (status 0); a usage error (unknown command or
    option, missing argument, bad value) prints ``emomix: error: <what>; see '<command> --help'``
    (status 2); :class:`EmomixError` prints ``emomix: error: <message>`` (status 2); Ctrl-C prints
    ``emomix: interrupted`` (status 130).
    """
    try:
        status = app(args=argv, prog_name="emomix", standalone_mode=False)
    except EmomixError as exc:
        _error(str(exc))
        return USAGE_STATUS
    except NO_ARGS_IS_HELP as exc:  # `emomix` or `emomix store` alone: the help, as --help prints it
        context = getattr(exc, "ctx", None)
        typer.echo(context.get_help() if context is not None else _message(exc))
        return 0
    except USAGE_ERRORS as exc:
        context = getattr(exc, "ctx", None)
        hint = f"; see '{context.command_path} --help'" if context is not None else ""
        _error(_message(exc).strip().rstrip(".") + hint)
        return USAGE_STATUS
    except CLICK_ERRORS as exc:  # a file option that cannot be opened and the like
        _error(_message(exc))
        return int(getattr(exc, "exit_code", 1) or 1)
    except EXITS as exc:
        status = getattr(exc, "exit_code", 0)
    except INTERRUPTS:
        status = INTERRUPTED_STATUS
    if status == INTERRUPTED_STATUS:
        typer.echo("emomix: interrupted", err=True)
    return status if isinstance(status, int) else 0
