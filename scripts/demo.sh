#!/usr/bin/env bash
# The run command: start MailDesk's demo (simulated providers, sample mailboxes) in the project's
# .venv, built the same way as for the tests. Arguments go to `maildesk demo`.
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
maildesk_venv

exec "$MAILDESK_VENV/bin/maildesk" demo "$@"
