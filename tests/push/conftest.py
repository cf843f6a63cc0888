"""Fixtures shared by the push tests."""

from tests.push.gmail_pubsub import pushing  # noqa: F401 - re-exported pytest fixture
