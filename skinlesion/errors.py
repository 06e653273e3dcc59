"""Errors that carry a message meant for the user: what was wrong, where, and what was expected."""


class SkinLesionError(Exception):
    """Base class; the entry points print these without a traceback."""


class ConfigError(SkinLesionError):
    """A config value or combination that cannot work (caught at start, before any training)."""


class DataError(SkinLesionError):
    """A dataset file, row or field that does not match the official layout."""
