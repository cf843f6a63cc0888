"""The long webhook fuzz run: ≥ 10,000 hypothesis cases per push webhook.

The same properties and strategies as the test suite's short run (``tests/push/webhook_fuzz.py``:
``run_fuzz``; the suite runs a few hundred cases per webhook in
``tests/push/test_webhook_fuzz.py``), here with ``--examples`` cases (default 10,000) against
the real app built on a harness (``tests.support.harness.Harness``: MailDesk's services on
SQLite or a throwaway PostgreSQL, the simulators in-process), set up exactly as those tests set
it up:

- Gmail: one mailbox with push configured (audience and signer), the webhook's key source
  replaced by a freshly generated RSA key, so the fuzzer can sign valid and near-valid tokens;
- Outlook: one mailbox with a live subscription registered through the push manager against an
  in-memory Graph (``tests.support.fake_graph_push.outlook_rig``), so the fuzzer knows the real
  subscription id and clientState.

Every case must get one of the endpoint's documented status codes, no exception may escape the
app, and no request content (markers, anything JWT-shaped, the clientState) may reach the logs.
A broken property is reported (``problems``; hypothesis's falsifying example goes to stderr) and
the exit status is 1.

Prints ONE JSON document on stdout. Usage (repo root)::

    .venv/bin/python bench/fuzz_webhooks.py [--examples 10000] [--db sqlite|postgresql|both]
        [--which gmail,outlook] [--seed N]

Every run is seeded (``hypothesis.seed``). Without ``--seed`` a fresh random seed is drawn, so
repeated runs cover different ground; it is printed in the JSON (``settings.seed``, and each
webhook's ``seed``), and ``--seed`` with it replays that run's cases (with ``--which`` and
``--examples`` as they were; ``--db both`` runs both databases with the one seed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make ``bench`` and ``tests`` importable.
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from tests.push.test_gmail_webhook import (  # noqa: E402
    AUDIENCE,
    EMAIL,
    SIGNER,
    StaticKeys,
    _configure,
)
from tests.push.webhook_fuzz import FuzzReport, FuzzTarget, run_fuzz  # noqa: E402
from tests.support.fake_graph_push import outlook_rig  # noqa: E402
from tests.support.harness import Harness  # noqa: E402

from bench._process import BenchFailure, bench_database, run_per_database  # noqa: E402
from maildesk.app import create_app  # noqa: E402
from maildesk.clock import ManualClock  # noqa: E402
from maildesk.domain.accounts import ProviderKind  # noqa: E402
from maildesk.store import push as push_store  # noqa: E402

TARGET_CASES = 10_000
WHICH = ("gmail", "outlook")


def _report(report: FuzzReport, seconds: float, failure: str | None) -> dict[str, Any]:
    problems = list(report.problems)
    if failure is not None:
        problems.insert(0, failure)
    return {
        "seed": report.seed,
        "cases": report.cases,
        "statuses": {str(k): v for k, v in sorted(report.statuses.items())},
        "problems": problems,
        "seconds": round(seconds, 2),
        "cases_per_s": round(report.cases / seconds, 1) if seconds else None,
    }


async def _fuzz(client: httpx.AsyncClient, target: FuzzTarget, examples: int,
                which: str, seed: int) -> dict[str, Any]:
    """``run_fuzz`` with hypothesis's own printing kept off stdout (our JSON goes there) and a
    broken property turned into a reported problem."""
    started = time.perf_counter()
    failure: str | None = None
    report = FuzzReport(seed=seed)
    with contextlib.redirect_stdout(sys.stderr):
        try:
            report = await run_fuzz(client, target, examples=examples, which=which, seed=seed)
        except AssertionError as exc:  # hypothesis re-raises the shrunk failing case
            failure = f"property broken: {str(exc)[:500]}"
    return _report(report, time.perf_counter() - started, failure)


async def fuzz_gmail(h: Harness, examples: int, seed: int) -> dict[str, Any]:
    """As ``test_gmail_webhook_survives_fuzzing``: a configured mailbox, our own signing key."""
    account_id = await h.add_gmail(EMAIL)
    await _configure(h, account_id)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    h.services.gmail_webhook._keys = StaticKeys({"k1": key.public_key()})
    target = FuzzTarget(key, AUDIENCE, SIGNER, EMAIL, h.clock.now().timestamp(),
                        subscription_id="none", client_state="")
    app = create_app(h.services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://maildesk") as client:
        return await _fuzz(client, target, examples, "gmail", seed)


async def fuzz_outlook(h: Harness, examples: int, seed: int) -> dict[str, Any]:
    """As ``test_outlook_webhooks_survive_fuzzing``: a live subscription, its clientState known;
    afterwards the subscription must still be the one registered."""
    async with outlook_rig(h) as rig:
        account_id = await rig.add_outlook("fuzz@contoso.example")
        row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
        client_state = await rig.push.client_state(account_id)
        if row.sub.subscription_id is None or client_state is None:
            raise BenchFailure("the Outlook subscription was not registered")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        target = FuzzTarget(key, "", "", "", h.clock.now().timestamp(),
                            subscription_id=row.sub.subscription_id, client_state=client_state)
        result = await _fuzz(rig.client, target, examples, "outlook", seed)
        async with h.services.db.read() as conn:
            rows = await push_store.for_account(conn, account_id)
        kept = [r.sub.subscription_id for r in rows] == [row.sub.subscription_id]
        result["subscription_intact"] = kept
        if not kept:
            result["problems"].append("the subscription changed under fuzzing")
    return result


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {"db": kind}
    for which in args.which:
        # A fresh store per webhook, so one webhook's recorded notifications do not slow the
        # other's statements.
        with tempfile.TemporaryDirectory(prefix="maildesk-fuzz-") as tmp:
            async with bench_database(kind, f"fuzz_{which}") as store:
                url = store.url or f"sqlite+aiosqlite:///{tmp}/maildesk.db"
                async with Harness.open(db_url=url, clock=ManualClock(),
                                        data_dir=Path(tmp)) as h:
                    fuzz = fuzz_gmail if which == "gmail" else fuzz_outlook
                    run[which] = await fuzz(h, args.examples, args.seed)
        print(f"[{kind}] {which}: {run[which]['cases']} cases in {run[which]['seconds']} s, "
              f"problems: {len(run[which]['problems'])}", file=sys.stderr)
    run["meets_target"] = {
        f"{w}_cases_ge_{TARGET_CASES}": run[w]["cases"] >= TARGET_CASES for w in args.which
    } | {f"{w}_no_problems": not run[w]["problems"] for w in args.which}
    return run


def _quiet_logging() -> None:
    """``run_fuzz`` captures every log record at DEBUG (to look for leaks); only warnings and
    worse reach stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=TARGET_CASES,
                        help="hypothesis cases per webhook")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--which", default=",".join(WHICH),
                        help="webhooks to fuzz: gmail, outlook or both (comma-separated)")
    parser.add_argument("--seed", type=int, default=None,
                        help="hypothesis seed (default: a random one, printed in the JSON); "
                             "a printed seed replays that run")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbelow(2**32)
    args.which = [w.strip() for w in args.which.split(",") if w.strip()]
    if not args.which or set(args.which) - set(WHICH):
        parser.error(f"--which takes {', '.join(WHICH)}")
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    _quiet_logging()
    # Also here, in case the run never gets to print its JSON (killed at its time limit).
    print(f"fuzz_webhooks: seed {args.seed}", file=sys.stderr)
    try:
        if args.db == "both":
            def command(kind: str) -> list[str]:
                return [sys.executable, str(Path(__file__).resolve()), "--db", kind,
                        "--examples", str(args.examples), "--which", ",".join(args.which),
                        "--seed", str(args.seed)]
            runs = run_per_database(command, timeout=600 + args.examples * 0.2)
        else:
            runs = [asyncio.run(measure(args.db, args))]
    except BenchFailure as exc:
        print(f"fuzz_webhooks: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({
        "benchmark": "fuzz_webhooks",
        "targets": {"cases_per_webhook": TARGET_CASES},
        "settings": {"examples": args.examples, "which": args.which, "seed": args.seed},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "runs": runs,
    }, indent=2))
    ok = all(not r[w]["problems"] for r in runs for w in args.which)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
