"""`classroom backup PATH` and `classroom restore PATH`: the community's data, owned by whoever runs the bot."""

from __future__ import annotations

import argparse

from cli import CliError
from settings import Settings
from storage import backup as b


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `backup` and `restore` on the CLI's subcommand parser."""
    s = sub.add_parser("backup", help="copy the database to a file, safely, even while the bot runs")
    s.add_argument("path", help="the backup file to write (must not exist yet)")
    s = sub.add_parser("restore", help="replace the database with a backup (stop the bot first); the old one is kept")
    s.add_argument("path", help="a file written by `classroom backup`")


async def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    """Take an online backup of the live database."""
    try:
        snap = b.backup(settings.db_path, args.path)
    except b.BackupError as e:
        raise CliError(str(e)) from e
    print(f"backed up {settings.db_path} to {snap.path}: {_contents(snap)}, integrity ok")
    return 0


async def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    """Restore the database from a backup, keeping the replaced one beside it."""
    try:
        snap, aside = b.restore(args.path, settings.db_path)
    except b.BackupError as e:
        raise CliError(str(e)) from e
    print(f"restored {settings.db_path} from {snap.path}: {_contents(snap)}")
    if aside is not None:
        print(f"the database it replaced is kept at {aside}")
    return 0


def _contents(snap: b.Snapshot) -> str:
    return f"{snap.lessons} lessons, {snap.turns} turns, {snap.votes} votes ({snap.size_bytes / 1024:.0f} KiB)"
