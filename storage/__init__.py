"""SQLite storage: one schema with migrations, small query functions that take the db first."""

from storage.db import AsyncStore, Transaction, fetch_all, fetch_one, now, open_db

__all__ = ["AsyncStore", "Transaction", "fetch_all", "fetch_one", "now", "open_db"]
