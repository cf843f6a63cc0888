"""`maildesk` commands for imap."""

from __future__ import annotations

import argparse

from maildesk.cli_support import Handler, Parser


def add_commands(sub: argparse._SubParsersAction[Parser],
                 account: argparse._SubParsersAction[Parser]) -> None:
    """Add this module's parsers: top-level commands to ``sub``, ``account …`` ones to
    ``account``."""


HANDLERS: dict[str, Handler] = {}
