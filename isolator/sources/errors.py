"""The base of every error an adapter raises, so callers catch one family per boundary."""

from __future__ import annotations


class SourceError(Exception):
    """A failure talking to an outside system; the message names the system and the cause."""


class SourceUnavailableError(SourceError):
    """The outside system did not answer in time or refused the connection: retry later."""
