"""docs/settings.md lists every setting with its real default, and names no setting that does
not exist (datasette's documentation test).

The checker is a pure function of the page text, so it is tested against broken pages too:
a test that cannot fail would prove nothing.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from maildesk.config import Settings, documented_settings, env_name

DOCS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"

# Variables that are real but are not fields of Settings.
EXTRA_VARIABLES = {"MAILDESK_CONFIG_FILE"}

_ROW = re.compile(r"^\|\s*`(MAILDESK_[A-Z0-9_]+)`\s*\|([^|]*)\|([^|]*)\|\s*$")
_VARIABLE = re.compile(r"\bMAILDESK_[A-Z0-9_]+")
_EMPTY = "(empty)"


def render_default(default: str) -> str:
    """How the page writes a default (also how the page was generated)."""
    return f"`{default}`" if default else _EMPTY


def expected_row(name: str, default: str, doc: str) -> str:
    return f"| `{name}` | {render_default(default)} | {doc} |"


def table_rows(page: str) -> dict[str, tuple[str, str]]:
    """env name -> (default cell, description cell) of the settings table."""
    rows: dict[str, tuple[str, str]] = {}
    for line in page.splitlines():
        match = _ROW.match(line.strip())
        if match:
            name, default, doc = match.groups()
            if name in rows:
                raise AssertionError(f"{name} is listed twice")
            rows[name] = (default.strip(), doc.strip())
    return rows


def problems(page: str) -> list[str]:
    """Everything wrong with ``page``; empty when it documents the settings exactly."""
    found: list[str] = []
    rows = table_rows(page)
    known = {name for name, _, _ in documented_settings()}
    for name, default, doc in documented_settings():
        if name not in rows:
            found.append(f"missing: {name} (add: {expected_row(name, default, doc)})")
            continue
        cell, description = rows[name]
        if cell != render_default(default):
            found.append(f"{name}: default is {render_default(default)}, the page says {cell}")
        if not description:
            found.append(f"{name}: no description")
    for name in sorted(set(_VARIABLE.findall(page)) - known - EXTRA_VARIABLES):
        found.append(f"the page names {name}, which is not a setting")
    return found


# ------------------------------------------------------------------------------ the real page
def test_the_settings_page_documents_every_setting_exactly() -> None:
    assert problems(DOCS.read_text()) == []


def test_the_table_lists_the_settings_in_declaration_order() -> None:
    names = list(table_rows(DOCS.read_text()))
    assert names == [name for name, _, _ in documented_settings()]


def test_secret_settings_are_marked_secret_on_the_page() -> None:
    rows = table_rows(DOCS.read_text())
    for f in dataclasses.fields(Settings):
        says_secret = "Secret:" in rows[env_name(f.name)][1]
        assert says_secret == bool(f.metadata.get("secret")), env_name(f.name)


def test_the_names_operators_rely_on_are_settings() -> None:
    # DESIGN.md §7: scripts depend on these names; renaming one is a breaking change.
    contract = {
        "MAILDESK_DATA_DIR", "MAILDESK_DATABASE_URL", "MAILDESK_BASE_URL", "MAILDESK_SECRET_KEY",
        "MAILDESK_HOST", "MAILDESK_PORT", "MAILDESK_POLL_INTERVAL",
        "MAILDESK_PUSH_SILENCE_THRESHOLD", "MAILDESK_PUSH_RENEWAL_INTERVAL",
        "MAILDESK_ALLOW_LOOPBACK_WEBHOOKS", "MAILDESK_GOOGLE_CLIENT_ID",
        "MAILDESK_GOOGLE_CLIENT_SECRET", "MAILDESK_GOOGLE_AUTHORIZE_URL",
        "MAILDESK_GOOGLE_TOKEN_URL", "MAILDESK_GOOGLE_REVOKE_URL", "MAILDESK_GOOGLE_CERTS_URL",
        "MAILDESK_GMAIL_API_URL", "MAILDESK_MICROSOFT_CLIENT_ID",
        "MAILDESK_MICROSOFT_CLIENT_SECRET", "MAILDESK_MICROSOFT_TENANT",
        "MAILDESK_MICROSOFT_AUTHORITY_URL", "MAILDESK_GRAPH_API_URL",
    }
    defaults = {name: default for name, default, _ in documented_settings()}
    assert contract <= set(defaults)
    assert float(defaults["MAILDESK_POLL_INTERVAL"]) == 120
    assert float(defaults["MAILDESK_PUSH_SILENCE_THRESHOLD"]) == 21600
    assert defaults["MAILDESK_GMAIL_API_URL"] == "https://gmail.googleapis.com"
    assert defaults["MAILDESK_MICROSOFT_AUTHORITY_URL"] == "https://login.microsoftonline.com"
    assert defaults["MAILDESK_GRAPH_API_URL"] == "https://graph.microsoft.com/v1.0"


def test_every_setting_has_a_description_where_it_is_declared() -> None:
    for name, _, doc in documented_settings():
        assert doc.strip(), name


def test_the_intro_covers_file_precedence_durations_and_rotation() -> None:
    page = DOCS.read_text()
    for phrase in ("MAILDESK_CONFIG_FILE", "environment wins", "seconds", "newest key first",
                   "maildesk rotate-secrets", "lower-case"):
        assert phrase in page, phrase


# ------------------------------------------------------------------------------ the checker
def _page_with(rows: list[str], extra: str = "") -> str:
    return "# Settings\n\n" + extra + "\n| Environment variable | Default | Description |\n" \
        "|---|---|---|\n" + "\n".join(rows) + "\n"


@pytest.fixture
def good_rows() -> list[str]:
    return [expected_row(*row) for row in documented_settings()]


def test_the_checker_accepts_a_complete_page(good_rows: list[str]) -> None:
    assert problems(_page_with(good_rows, "Set MAILDESK_CONFIG_FILE to a TOML file.")) == []


def test_the_checker_reports_a_missing_setting(good_rows: list[str]) -> None:
    page = _page_with([r for r in good_rows if "`MAILDESK_POLL_INTERVAL`" not in r])
    assert problems(page) == [
        "missing: MAILDESK_POLL_INTERVAL (add: "
        + expected_row(*next(r for r in documented_settings()
                             if r[0] == "MAILDESK_POLL_INTERVAL")) + ")"
    ]


@pytest.mark.parametrize(("name", "wrong"), [
    ("MAILDESK_POLL_INTERVAL", "`60.0`"),
    ("MAILDESK_PORT", "8025"),  # right value, not written as the generator writes it
    ("MAILDESK_DATABASE_URL", "`sqlite`"),  # the real default is empty
    ("MAILDESK_HOST", _EMPTY),
])
def test_the_checker_reports_a_wrong_default(good_rows: list[str], name: str, wrong: str) -> None:
    rows = [
        f"| `{name}` | {wrong} | {r.split('|')[3].strip()} |" if f"`{name}`" in r else r
        for r in good_rows
    ]
    found = problems(_page_with(rows))
    assert len(found) == 1
    assert found[0].startswith(f"{name}: default is")


def test_the_checker_reports_an_unknown_variable(good_rows: list[str]) -> None:
    page = _page_with(good_rows, "Set MAILDESK_POLL_SECONDS=60 to poll faster.")
    assert problems(page) == ["the page names MAILDESK_POLL_SECONDS, which is not a setting"]


def test_the_checker_reports_an_unknown_row(good_rows: list[str]) -> None:
    page = _page_with([*good_rows, "| `MAILDESK_TURBO` | `True` | Go faster. |"])
    assert problems(page) == ["the page names MAILDESK_TURBO, which is not a setting"]


def test_the_checker_reports_an_empty_description(good_rows: list[str]) -> None:
    rows = [r if "`MAILDESK_HOST`" not in r else "| `MAILDESK_HOST` | `127.0.0.1` |  |"
            for r in good_rows]
    assert problems(_page_with(rows)) == ["MAILDESK_HOST: no description"]
