"""Errors that mean "the user asked for something invalid".

The CLI turns every :class:`PonderError` into one line on stderr and exit status 2,
never a traceback. Library code raises the most specific subclass.
"""


class PonderError(Exception):
    """Base class of user-facing errors (bad names, knobs, configs, files)."""


class ConfigError(PonderError, ValueError):
    """An unknown name, an unknown key, a knob out of range, a malformed config."""


class CheckpointError(PonderError):
    """A missing, truncated or incompatible checkpoint or run directory."""
