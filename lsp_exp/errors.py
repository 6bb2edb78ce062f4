"""The framework's clear errors: failures whose message says it all.

Every clear error subclasses `LspError`; the entry points print its message as one line on stderr and
exit with code 2, no traceback. An error class keeps the built-in class it refines as a second base
(a ConfigError is a ValueError, a MissingFileError a FileNotFoundError), so a caller may catch either.
Errors that only one layer raises live in that layer's module, as subclasses of LspError.
"""
from __future__ import annotations


class LspError(Exception):
    """A failure whose message says it all: lsp-train prints one line, exit code 2."""


class ConfigError(LspError, ValueError):
    """A configuration value is out of range or inconsistent; the message names the key."""


class MissingFileError(LspError, FileNotFoundError):
    """A file or folder the run needs is not there; the message names it and how to make it."""
