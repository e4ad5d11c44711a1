"""Command-line pieces the operations tools share."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def command_after_separator(
    parser: argparse.ArgumentParser, remainder: Sequence[str], what: str
) -> list[str]:
    """The command a wrapper runs: its `argparse.REMAINDER` without the leading `--`;
    a usage error naming `what` when there is none."""
    command = list(remainder[1:] if remainder[:1] == ["--"] else remainder)
    if not command:
        parser.error(f"give {what} after `--`")
    return command
