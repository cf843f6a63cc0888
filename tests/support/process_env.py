"""The environment of a real MailDesk process (``maildesk worker``/``web`` started by a test)
pointed at a Google simulator: only the test's own MAILDESK_* settings, none of the caller's."""

from __future__ import annotations

import os
from pathlib import Path


def google_sim_env(
    sim: str, *, db_url: str, data_dir: Path, client_id: str, client_secret: str,
    secret_key: str, **settings: str,
) -> dict[str, str]:
    """``os.environ`` without MAILDESK_* variables, plus the store, the secret key, the
    simulator's Google endpoints and ``settings`` (``MAILDESK_WORKER_TICK="60"``, …)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILDESK_")}
    env.update({
        "MAILDESK_DATA_DIR": str(data_dir),
        "MAILDESK_DATABASE_URL": db_url,
        "MAILDESK_SECRET_KEY": secret_key,
        "MAILDESK_GOOGLE_CLIENT_ID": client_id,
        "MAILDESK_GOOGLE_CLIENT_SECRET": client_secret,
        "MAILDESK_GOOGLE_TOKEN_URL": f"{sim}/token",
        "MAILDESK_GOOGLE_REVOKE_URL": f"{sim}/revoke",
        "MAILDESK_GOOGLE_AUTHORIZE_URL": f"{sim}/o/oauth2/v2/auth",
        "MAILDESK_GMAIL_API_URL": sim,
        "MAILDESK_GOOGLE_CERTS_URL": f"{sim}/oauth2/v1/certs",
        **settings,
    })
    return env
