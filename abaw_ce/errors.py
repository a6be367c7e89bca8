"""The kit's user errors: what a user can fix (bad input files, options, settings). The command-line entry
points report them in one line and exit 2; any other exception is a defect of the kit and shows its traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
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

    def __reduce__(self):  # pickled with its own arguments: raised again in the process that ran a stage
        return type(self), (self.path, self.problem, self.line)


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


def run_command(command: Callable[[], int | None], hint: Callable[[Exception], str | None] | None = None,
                other_failures: Mapping[type[Exception], int] | None = None) -> int:
    """Run one command-line command and return its exit status; every entry point of the kit goes through here.

    The command's own status is returned (None counts as 0). A user error, a refusal to overwrite
    (FileExistsError) or a required setting left unset prints `error: <message>` on stderr (and `hint: ...`
    when ``hint(err)`` gives one) and returns 2; ``other_failures`` maps further expected failures to their
    status the same way (e.g. a training whose loss stopped being finite: 3). Anything else is a defect of the
    kit, not of the user's input: it propagates with its traceback, and Python exits with status 1.
    """
    from omegaconf.errors import MissingMandatoryValue  # imported here: every module imports this one

    expected = tuple(other_failures or {})
    try:
        status = command()
    except MissingMandatoryValue as err:  # model.encoder is the one setting the packaged configs leave unset
        key = getattr(err, "full_key", "") or str(err)
        print(f"error: {key} is required (e.g. model.encoder=runs/mae-.../export, or none for a random "
              f"initialisation)", file=sys.stderr)
        return 2
    except (UserError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        extra = hint(err) if hint is not None else None
        if extra:
            print(f"hint: {extra}", file=sys.stderr)
        return 2
    except expected as err:
        print(f"error: {err}", file=sys.stderr)
        return next(code for kind, code in other_failures.items() if isinstance(err, kind))
    return 0 if status is None else int(status)


def require_file(path: Path, what: str) -> None:
    """InputError naming ``path`` unless it is a non-empty regular file (``what``: "video", "image"...)."""
    if not path.is_file():
        raise InputError(path, f"{what} file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
