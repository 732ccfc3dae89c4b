"""`classroom …`: every feature from a terminal, without Discord.

Every error is one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from backends.base import BackendError
from cli import CliError, data_commands, gguf_commands, quiz_commands
from lessons.engine import LessonError
from lessons.sources import SourceError
from settings import ConfigError, load_settings


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand maps to a function in cli.commands."""
    p = argparse.ArgumentParser(prog="classroom", description="AI teacher, AI student, community-approved training.")
    p.add_argument("--config", help="path to classroom.toml (default: ./classroom.toml if present)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug output to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("lesson", help="run a lesson and store every turn")
    s.add_argument("--topic", required=True)
    s.add_argument("--source", help="a text or markdown file (≤ 1 MB) the teacher teaches from")
    s.add_argument("--teacher", action="append", default=[], help="teacher model (repeat for several)")
    s.add_argument("--student", action="append", default=[], help="student model (repeat for several)")
    s.add_argument("--turns", type=int, default=None, help="maximum number of turns (default: lessons.max_turns, or lessons.max_source_turns with --source)")
    s.add_argument("--mode", choices=["single", "rotate", "panel"], default=None,
                   help="how several teachers share a lesson: rotate (sections in turn) or panel (all answer each question)")
    s.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run N lessons of it at once (each samples its own turns; a local model batches them)")
    s.add_argument("--json", action="store_true", help="print a JSON summary last")

    sub.add_parser("lessons", help="list recent lessons")
    s = sub.add_parser("show", help="print one lesson with its turns and votes")
    s.add_argument("lesson_id", type=int)
    s = sub.add_parser("approve", help="approve lessons for training (the curator's approval)")
    s.add_argument("lesson_ids", type=int, nargs="+")
    s.add_argument("--reject", action="store_true", help="reject instead of approve")
    s = sub.add_parser("ballot", help="pick a panel answer as the best one (a member's ballot, from the terminal)")
    s.add_argument("turn_id", type=int, help="the panel answer's turn id (`classroom show` lists them)")
    s.add_argument("--member", default="cli", help="whose ballot this is (one per member per question)")
    s = sub.add_parser("ask", help="ask a student a question")
    s.add_argument("question")
    s.add_argument("--student", default=None)
    s = sub.add_parser("export", help="write lessons as fine-tuning JSONL")
    s.add_argument("--format", choices=["openai", "sharegpt", "dpo"], default="openai",
                   help="dpo: chosen/rejected pairs from panel ballots and votes, in TRL's conversational preference form")
    s.add_argument("--approved-only", action="store_true")
    s.add_argument("--out", required=True)
    sub.add_parser("models", help="list configured teachers and students")
    s = sub.add_parser("train", help="train students on newly approved lessons now (the nightly job)")
    s.add_argument("--student", default=None, help="only this student (default: every trainable student)")
    s.add_argument("--json", action="store_true", help="print the result object last")
    s = sub.add_parser("runs", help="training history")
    s.add_argument("--student", default=None)
    s = sub.add_parser("versions", help="a student's adapter lineage with scores")
    s.add_argument("--student", default=None)
    s = sub.add_parser("rollback", help="switch a student back to an earlier adapter version")
    s.add_argument("version", help="a version number, or 'base' for no adapter")
    s.add_argument("--student", default=None)
    quiz_commands.add_parsers(sub)
    data_commands.add_parsers(sub)
    gguf_commands.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `classroom` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TQDM_DISABLE", "1")
    from cli import commands

    try:
        settings = load_settings(args.config)
        name = f"cmd_{args.command.replace('-', '_')}"
        handler = next(getattr(m, name) for m in (commands, quiz_commands, data_commands, gguf_commands) if hasattr(m, name))
        return asyncio.run(handler(settings, args)) or 0
    except (ConfigError, LessonError, SourceError, BackendError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError | CliError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
