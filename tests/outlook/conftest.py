"""The CLI fixtures of tests/test_cli.py, shared with the Outlook command-line tests."""

from tests.test_cli import base_env, cli, db_env  # noqa: F401 - re-exported pytest fixtures
