"""The lesson engine's error, shared by the engine and the turn writer."""

from __future__ import annotations


class LessonError(Exception):
    """A lesson cannot start or go on; the message is fit to show a member."""

    status = "failed"  # how a running lesson ends when this is raised
