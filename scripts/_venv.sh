# shellcheck shell=bash
# Sourced (not run) by scripts/test.sh and scripts/demo.sh: one definition of how the project's
# virtualenv is made, so the test and run commands can never disagree about it.
#
# maildesk_venv: create or reuse <repo>/.venv and `pip install -e '.[test]'` into it, but only
# when pyproject.toml changed since the last successful install (a hash stamp in .venv), because
# a no-op pip run still costs seconds on every invocation. Leaves MAILDESK_ROOT and
# MAILDESK_VENV set and the venv's bin/ first on PATH.

MAILDESK_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
MAILDESK_VENV="$MAILDESK_ROOT/.venv"

maildesk_venv() {
    local venv="$MAILDESK_VENV"
    local stamp="$venv/.maildesk-install-stamp"
    local want have=""

    # Two commands started together (tests in one terminal, demo in another) must not both
    # build the venv; flock is in util-linux, so present wherever bash is on Debian.
    mkdir -p "$venv"
    local lock_fd
    exec {lock_fd}>"$venv/.maildesk-lock"
    if command -v flock >/dev/null 2>&1; then
        flock "$lock_fd"
    fi

    # A venv whose interpreter no longer runs (Python upgraded or removed) is rebuilt.
    if [[ -x "$venv/bin/python" ]] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        echo "maildesk: $venv is broken, recreating it" >&2
        python3 -m venv --clear "$venv"
    elif [[ ! -x "$venv/bin/python" ]]; then
        echo "maildesk: creating virtualenv $venv" >&2
        python3 -m venv "$venv"
    fi

    want=$(sha256sum "$MAILDESK_ROOT/pyproject.toml" | cut -d' ' -f1)
    [[ -f "$stamp" ]] && have=$(<"$stamp")
    if [[ "$want" != "$have" ]]; then
        echo "maildesk: installing the project and its test dependencies into $venv" >&2
        rm -f "$stamp"
        (cd "$MAILDESK_ROOT" && "$venv/bin/python" -m pip install --quiet --no-input -e '.[test]')
        # Written only after pip succeeded, so a failed install is retried next time.
        printf '%s\n' "$want" >"$stamp"
    fi

    exec {lock_fd}>&-
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
}
