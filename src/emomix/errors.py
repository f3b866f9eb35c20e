"""The project's own exception types.

Every error a user can cause (a missing file, a malformed line, an unknown label, a config typo,
silence-only audio) is raised as one of these, with a message that says what went wrong and what
to do. The CLI prints the message on one line without a traceback and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class EmomixError(Exception):
    """Base class of every error a user can cause."""


class CorpusFormatError(EmomixError):
    """A corpus file does not follow its release's format.

    The message names the file and, where there is one, the 1-based line number.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class MissingDataError(EmomixError):
    """A file or folder that the task needs does not exist."""


class LabelError(EmomixError):
    """A label scheme is unknown or a label cannot be mapped."""


class ConfigError(EmomixError):
    """A configuration value is missing, misspelt or out of range."""


class AudioError(EmomixError):
    """An audio file cannot be read or holds nothing usable (empty, corrupt, silence only)."""


class VideoError(AudioError):
    """A video file cannot be read (empty, corrupt, no video stream, a span outside it)."""


class ProtocolError(EmomixError):
    """A cross-validation protocol cannot be built on the given table."""


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error as ``line L, column C: <problem>`` (1-based), without the parser's
    multi-line excerpt of the text, so it fits the one-line messages above."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)
