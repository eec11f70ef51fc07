"""The one base of every error a user can fix: a front end catches MedchatError and prints its message."""

from __future__ import annotations


class MedchatError(Exception):
    """A problem the user can fix. The message is one line naming the file, value or flag and what to do;
    every command prints it instead of a traceback."""
