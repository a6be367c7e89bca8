"""The kit's user errors: what a user can fix (bad input files, options, settings). The command-line entry
points report them in one line and exit 2; any other exception is a defect of the kit and shows its traceback."""
from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Something the user can fix; the message says what was expected."""


class OptionError(UserError):
    """A command-line option or configuration value the kit cannot use (no file to name)."""


class InputError(UserError):
    """Bad user input. Its message reads `<file>:<line>: <problem>` so users can jump straight to it."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


def read_text_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file without line endings; clear errors for missing, empty or non-UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    data = path.read_bytes()
    if not data.strip():
        raise InputError(path, "file is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(path, f"byte 0x{data[err.start]:02x} is not valid UTF-8 (expected a UTF-8 text file)",
                         line) from None
    return text.splitlines()
