"""Hypothesis fuzzing of both push webhooks: what a hostile or broken sender can throw at them.

Each case is one HTTP request (method, path, query, headers, body) drawn from strategies that
mix well-formed pieces (a correctly signed OIDC token, the real subscription id and clientState)
with garbage (random bytes, wrong types, truncated base64, odd encodings, oversized bodies).
The properties, checked on every case:

- never a 5xx other than the documented 503 (Gmail push not configured), never an exception
  escaping the app (the in-process transport re-raises it, failing the run);
- every answer is one of the documented codes for that endpoint;
- no secret and no body content reaches the logs: every string a case carries embeds a marker,
  and neither the markers, nor anything shaped like a JWT, nor the real clientState may appear
  in any log record.

The requests are sent by hypothesis on a worker thread into the test's event loop, so the app
keeps its database connections on one loop and hypothesis can still shrink a failing case.
``run_fuzz`` is shared by the test suite (a few hundred cases) and ``bench`` (≥ 10,000).

Every run is seeded (``hypothesis.seed``): by the caller, or with a fresh random seed. The seed
is in the report and in the note of a failure, and the same seed replays the same cases (the
same draws; the key, secrets and ids they embed are the target's), so a failure found by a long
run can be replayed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MARK = "FUZZMARK"
GMAIL_URL = "/maildesk/push/gmail"
OUTLOOK_URL = "/maildesk/push/outlook"
LIFECYCLE_URL = "/maildesk/push/outlook/lifecycle"
BODY_LIMIT = 64 * 1024

# The codes each endpoint documents (docs/push-webhooks: 202 accepted, 400 malformed, 401 no
# token, 403 bad token, 405 wrong method, 413 too large, 503 not configured; Graph's handshake
# answers 200).
GMAIL_CODES = frozenset({202, 400, 401, 403, 405, 413, 503})
OUTLOOK_CODES = frozenset({200, 202, 400, 405, 413})


@dataclass(frozen=True, slots=True)
class Case:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class FuzzTarget:
    """What the strategies need to build convincing requests, and the secrets to watch for."""

    gmail_key: RSAPrivateKey
    gmail_audience: str
    gmail_signer: str
    gmail_email: str
    now: float
    subscription_id: str
    client_state: str
    secrets: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FuzzReport:
    seed: int | None = None  # what replays this run (``run_fuzz(..., seed=)``)
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Each case's method, path, body size and answer, in order: what a replay must repeat.
    trail: list[tuple[str, str, int, int]] = field(default_factory=list)


# --------------------------------------------------------------------------------- strategies
def _marked_text() -> st.SearchStrategy[str]:
    """Text that carries the marker, so a leak into the logs is detectable."""
    return st.text(max_size=40).map(lambda t: f"{MARK}{t}")


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                       _marked_text(), st.text(max_size=20))
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _raw_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        _JSON.map(_encode),
        _marked_text().map(lambda t: t.encode("utf-16")),
        _marked_text().map(lambda t: t.encode("latin-1", "replace")),
        st.integers(BODY_LIMIT - 2, BODY_LIMIT + 4096).map(lambda n: b"{" + b"x" * n + b"}"),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(target: FuzzTarget, claims: dict[str, Any], kid: str, key: RSAPrivateKey) -> str:
    """An RS256 JWT signed by hand: PyJWT refuses to encode some of the odd claims we want
    to send (a non-string ``iss``), and a real attacker is not bound by it either."""
    header = _b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims, allow_nan=True).encode())
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


def _gmail_tokens(target: FuzzTarget) -> st.SearchStrategy[str]:
    good_claims = {
        "iss": "https://accounts.google.com", "aud": target.gmail_audience,
        "email": target.gmail_signer, "email_verified": True, "sub": "1", "azp": "1",
        "iat": int(target.now), "exp": int(target.now) + 3600,
    }
    claim_values = st.one_of(_JSON_LEAF, st.just(target.gmail_audience),
                             st.just(target.gmail_signer), st.integers(0, 2**40))

    @st.composite
    def signed(draw: st.DrawFn) -> str:
        claims = dict(good_claims)
        for name in draw(st.lists(st.sampled_from(sorted(good_claims)), max_size=3)):
            if draw(st.booleans()):
                claims.pop(name, None)
            else:
                claims[name] = draw(claim_values)
        kid = draw(st.sampled_from(["k1", "k1", "unknown", f"{MARK}kid"]))
        return _sign(target, claims, kid, target.gmail_key)

    def mangle(token: str) -> st.SearchStrategy[str]:
        head, _, rest = token.partition(".")
        return st.sampled_from([token[:-3], head + "." + MARK + rest, token + "A", token.upper()])

    return st.one_of(signed(), signed().flatmap(mangle), _marked_text(),
                     st.just(_sign(target, good_claims, "k1", target.gmail_key)))


def _gmail_bodies(target: FuzzTarget) -> st.SearchStrategy[bytes]:
    payloads = st.one_of(
        st.fixed_dictionaries({"emailAddress": st.one_of(st.just(target.gmail_email),
                                                         _marked_text()),
                               "historyId": st.one_of(st.integers(-5, 2**70), _JSON_LEAF)}),
        _JSON,
    )

    @st.composite
    def envelope(draw: st.DrawFn) -> bytes:
        data = _encode(draw(payloads))
        encoder = draw(st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))
        encoded = encoder(data).decode()
        if draw(st.booleans()):
            encoded = encoded.rstrip("=")
        if draw(st.integers(0, 5)) == 0:
            encoded = encoded[: len(encoded) // 2] + MARK
        message: dict[str, Any] = {"data": encoded, "messageId": draw(_JSON_LEAF),
                                   "publishTime": draw(_JSON_LEAF), "attributes": draw(_JSON)}
        for name in draw(st.lists(st.sampled_from(sorted(message)), max_size=2)):
            message.pop(name, None)
        return _encode({"message": message, "subscription": draw(_JSON_LEAF)})

    return st.one_of(envelope(), _raw_bodies())


def gmail_cases(target: FuzzTarget) -> st.SearchStrategy[Case]:
    """Half near-valid (a correctly signed token and a well-formed envelope whose content
    varies, so the parsing and recording past the token check are reached), half wild."""
    good = _sign(target, {
        "iss": "https://accounts.google.com", "aud": target.gmail_audience,
        "email": target.gmail_signer, "email_verified": True, "sub": "1", "azp": "1",
        "iat": int(target.now), "exp": int(target.now) + 3600,
    }, "k1", target.gmail_key)
    near_valid = st.builds(
        Case, method=st.just("POST"), path=st.just(GMAIL_URL), params=st.just({}),
        headers=st.just({"authorization": f"Bearer {good}", "content-type": "application/json"}),
        body=st.builds(
            lambda email, history: _encode({"message": {
                "data": base64.b64encode(_encode({"emailAddress": email,
                                                  "historyId": history})).decode(),
                "messageId": "1"}, "subscription": "s"}),
            st.one_of(st.just(target.gmail_email), _marked_text()),
            st.one_of(st.integers(0, 2**63), _JSON_LEAF),
        ),
    )
    headers = st.fixed_dictionaries(
        {},
        optional={
            "authorization": st.one_of(
                _gmail_tokens(target).map(lambda t: f"Bearer {t}"),
                _gmail_tokens(target).map(lambda t: f"bearer  {t}"),
                _marked_text(),
            ),
            "content-type": st.sampled_from(["application/json", "text/plain",
                                             "application/json; charset=utf-16", MARK]),
            "content-encoding": st.sampled_from(["gzip", "identity", MARK]),
        },
    )
    wild = st.builds(Case, method=st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"]),
                     path=st.just(GMAIL_URL), params=st.just({}), headers=headers,
                     body=_gmail_bodies(target))
    return st.one_of(near_valid, wild)


def _graph_items(target: FuzzTarget, lifecycle: bool) -> st.SearchStrategy[Any]:
    item = st.fixed_dictionaries(
        {"subscriptionId": st.one_of(st.just(target.subscription_id), _marked_text(),
                                     _JSON_LEAF)},
        optional={
            "clientState": st.one_of(st.just(target.client_state), _marked_text(), _JSON_LEAF),
            "changeType": st.one_of(st.sampled_from(["created", "updated", "deleted"]),
                                    _JSON_LEAF),
            "lifecycleEvent": st.one_of(st.sampled_from(["reauthorizationRequired",
                                                         "subscriptionRemoved", "missed"]),
                                        _JSON_LEAF),
            "resource": _JSON_LEAF,
            "resourceData": _JSON,
            "subscriptionExpirationDateTime": st.one_of(st.just("2026-01-08T09:00:00Z"),
                                                        _JSON_LEAF),
            "tenantId": _JSON_LEAF,
        },
    )
    return st.one_of(st.fixed_dictionaries({"value": st.lists(item, max_size=4)}),
                     st.fixed_dictionaries({"value": _JSON}), _JSON)


def outlook_cases(target: FuzzTarget) -> st.SearchStrategy[Case]:
    @st.composite
    def case(draw: st.DrawFn) -> Case:
        lifecycle = draw(st.booleans())
        path = LIFECYCLE_URL if lifecycle else OUTLOOK_URL
        params: dict[str, str] = {}
        if draw(st.integers(0, 4)) == 0:
            params["validationToken"] = draw(st.one_of(
                _marked_text(), st.text(min_size=0, max_size=3000).map(lambda t: MARK + t)))
        body = draw(st.one_of(_graph_items(target, lifecycle).map(_encode), _raw_bodies()))
        headers = draw(st.fixed_dictionaries({}, optional={
            "content-type": st.sampled_from(["application/json", "text/plain", MARK]),
        }))
        method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PATCH"]))
        return Case(method, path, params, headers, body)

    return case()


# ---------------------------------------------------------------------------------- running
class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("httpx", "httpcore", "hpack")):
            return  # the fuzzing client's own request log, not the server's
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@contextmanager
def captured_logs() -> Iterator[_Captured]:
    handler = _Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def run_fuzz(
    client: httpx.AsyncClient,
    target: FuzzTarget,
    *,
    examples: int,
    which: str,
    seed: int | None = None,
    on_case: Callable[[], None] | None = None,
) -> FuzzReport:
    """Send ``examples`` fuzzed requests to one webhook (``which``: "gmail" or "outlook") and
    raise AssertionError on the first broken property (hypothesis shrinks it first; the
    exception's note names the seed). ``seed`` None draws a fresh one (recorded in the report),
    so unseeded runs keep covering new ground and each can still be replayed."""
    loop = asyncio.get_running_loop()
    if seed is None:
        seed = secrets.randbelow(2**32)
    report = FuzzReport(seed=seed)
    strategy = gmail_cases(target) if which == "gmail" else outlook_cases(target)
    allowed = GMAIL_CODES if which == "gmail" else OUTLOOK_CODES

    async def send(case: Case) -> httpx.Response:
        # Header values go out as raw bytes (UTF-8): senders are not bound to ASCII.
        headers = {k.encode(): v.encode("utf-8", "replace") for k, v in case.headers.items()}
        return await client.request(case.method, case.path, params=case.params,
                                    headers=headers, content=case.body)

    # No example database: a replay must depend on the seed alone.
    @hypothesis.seed(seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(case: Case) -> None:
        if on_case is not None:
            on_case()
        future = asyncio.run_coroutine_threadsafe(send(case), loop)
        response = future.result(timeout=60)
        report.cases += 1
        report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        report.trail.append((case.method, case.path, len(case.body), response.status_code))
        assert response.status_code in allowed, (
            f"{which}: undocumented status {response.status_code} for {case.method} "
            f"{case.path} ({len(case.body)} bytes)")

    with captured_logs() as logs:
        try:
            await asyncio.to_thread(check)
        except Exception as exc:
            exc.add_note(f"webhook fuzz ({which}) seed {seed}: run_fuzz(..., seed={seed}) or "
                         f"bench/fuzz_webhooks.py --which {which} --seed {seed} replays it")
            raise
    # Every JWT starts with a base64url JSON header, "eyJ": none may reach the logs.
    watched = [MARK, "eyJ", target.client_state, *target.secrets]
    for line in logs.lines:
        for secret in watched:
            if secret and secret in line:
                report.problems.append(f"a log line carries request content: {line[:120]!r}")
                break
    return report
