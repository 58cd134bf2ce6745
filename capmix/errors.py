"""The errors capmix reports to a user as one line, with the exit code the CLI returns."""
from __future__ import annotations


class CapmixError(Exception):
    """A failure the user can act on; the CLI prints it as one line, without a traceback."""

    exit_code = 1


class ConfigError(CapmixError):
    """A bad configuration value, unknown key or missing file, found before any I/O."""

    exit_code = 2

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config error: {key}: {message}" if key else f"config error: {message}")


def check(ok: bool, key: str, message: str) -> None:
    """The config validators' one test: ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, message)


class InputError(CapmixError):
    """Bad command-line input or a missing input/table, found before anything is written."""

    exit_code = 2


class ConflictError(CapmixError):
    """Another writer committed to the same table at the same time; nothing of this run's
    current step was committed, and a re-run completes the work."""

    exit_code = 2


class ResourceError(CapmixError):
    """The run would not fit in the memory the machine has; found before anything starts."""

    exit_code = 2
