"""What every `maildesk` command module shares: the parser class, the handler type, table output.

Command groups live in their own modules (``cli_imap``, ``cli_send``) that add their parsers and
handlers through ``add_commands`` and ``HANDLERS``; ``cli`` assembles them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, NoReturn

from maildesk.config import Settings

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
"""A command: its parsed arguments and the settings in, the exit status out."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
