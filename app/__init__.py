"""Wiring shared by the bot and the CLI: settings → store → model registry → lesson engine."""

from app.context import AppContext, open_app

__all__ = ["AppContext", "open_app"]
