"""Realistic, deterministic mailbox contents for tests, the demo and benchmarks."""

from __future__ import annotations

import random
from dataclasses import dataclass

from maildesk.sim.mailbox import Mailbox

_FIRST = (
    "Alice", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Greta", "Hiro", "Ines", "Jonas",
    "Kavya", "Liam", "Mei", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Zoë",
    "Łukasz", "José", "Ana María",
)  # fmt: skip
_LAST = (
    "Adams", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hansen", "Ito",
    "Jensen", "Kowalski", "Li", "Müller", "Nakamura", "O'Brien", "Petrov", "Rossi", "Smith",
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "acme.test", "globex.test", "initech.test")
_SERVICES = (
    ("GitHub", "notifications@github.test", "CATEGORY_UPDATES"),
    ("Shop Receipts", "receipts@shop.test", "CATEGORY_UPDATES"),
    ("Weekly Digest", "digest@weekly.test", "CATEGORY_PROMOTIONS"),
    ("Travel Desk", "bookings@travel.test", "CATEGORY_UPDATES"),
    ("Forum", "noreply@forum.test", "CATEGORY_FORUMS"),
    ("Friends Network", "notify@social.test", "CATEGORY_SOCIAL"),
)
_USER_LABELS = ("Work", "Receipts", "Travel", "Family", "Projects/Apollo")
_TOPICS = (
    "budget", "roadmap", "offsite", "hiring plan", "release 2.4", "customer visit",
    "board deck", "security review", "migration", "launch",
)  # fmt: skip
_PERSONAL_SUBJECTS = (
    "Lunch on {day}?", "Notes from the {topic} meeting", "Question about the {topic}",
    "Draft: {topic} proposal", "Can we move our call to {day}?", "Photos from the weekend",
    "Quick favour", "{topic} — next steps", "Re: {topic} timeline", "Thanks!",
)  # fmt: skip
_SERVICE_SUBJECTS = (
    "Your order #{n} has shipped", "Invoice {n} is available", "[maildesk] Pull request #{n}",
    "Your weekly summary", "Booking confirmation {n}", "New reply in “{topic}”",
)  # fmt: skip
_SENTENCES = (
    "Hope you are doing well.", "Please find the details below.",
    "Let me know what you think.", "I have attached the latest numbers.",
    "Can you take a look before Friday?", "We should sync on this next week.",
    "The team agreed on the plan yesterday.", "Thanks again for your help with this.",
    "I will follow up with the others.", "Nothing urgent, just keeping you posted.",
)  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


@dataclass(frozen=True, slots=True)
class _Person:
    name: str
    address: str

    def header(self) -> str:
        return f"{self.name} <{self.address}>"


def seed_mailbox(
    mailbox: Mailbox, rng: random.Random, *, now_ms: int, count: int, days: int = 365
) -> list[str]:
    """Add ``count`` messages dated over the last ``days`` days; returns their ids, oldest first.

    Mix: most in INBOX (some unread, starred, important, categorised, user-labelled), about 12%
    SENT, some archived under a user label only, ~2% TRASH and ~2% SPAM; ~20% are replies that
    join an earlier thread.
    """
    span = max(1, days) * 86_400_000
    dates = sorted(now_ms - rng.randrange(span) for _ in range(count))
    people = [
        _Person(f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", f"user{i}@{rng.choice(_DOMAINS)}")
        for i in range(60)
    ]
    labels = [mailbox.create_label(name).id for name in _USER_LABELS]
    recent_threads: list[tuple[str, str, _Person]] = []  # (thread id, subject, correspondent)
    ids: list[str] = []
    for date in dates:
        roll = rng.random()
        correspondent = rng.choice(people)
        category = "CATEGORY_PERSONAL"
        if recent_threads and rng.random() < 0.2:
            thread_id, root_subject, correspondent = rng.choice(recent_threads)
            subject = root_subject if root_subject.startswith("Re: ") else f"Re: {root_subject}"
        elif roll >= 0.16 and rng.random() < 0.3:
            name, address, category = rng.choice(_SERVICES)
            correspondent = _Person(name, address)
            thread_id, subject = "", _fill(rng.choice(_SERVICE_SUBJECTS), rng)
        else:
            thread_id, subject = "", _fill(rng.choice(_PERSONAL_SUBJECTS), rng)
        me = mailbox.email
        sender, to = correspondent.header(), me
        chosen: set[str]
        if roll < 0.02:
            chosen = {"TRASH"}
        elif roll < 0.04:
            chosen = {"SPAM", "UNREAD"}
        elif roll < 0.16:
            chosen = {"SENT"}
            sender, to = me, correspondent.header()
        elif roll < 0.22:
            chosen = {rng.choice(labels), category}
        else:
            chosen = {"INBOX", category}
            if rng.random() < 0.25:
                chosen.add("UNREAD")
            if rng.random() < 0.05:
                chosen.add("STARRED")
            if rng.random() < 0.15:
                chosen.add("IMPORTANT")
            if rng.random() < 0.12:
                chosen.add(rng.choice(labels))
        text, html = _body(rng, correspondent.name)
        message = mailbox.add(
            subject=subject,
            sender=sender,
            to=to,
            text=text,
            html=html,
            labels=chosen,
            internal_date=date,
            thread_id=thread_id or None,
        )
        ids.append(message.id)
        if not thread_id:
            recent_threads.append((message.thread_id, subject, correspondent))
            del recent_threads[:-50]
    return ids


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        day=rng.choice(_DAYS), topic=rng.choice(_TOPICS), n=rng.randrange(10_000, 99_999)
    )


def _body(rng: random.Random, name: str) -> tuple[str, str]:
    first = name.split()[0]
    sentences = [rng.choice(_SENTENCES) for _ in range(rng.randint(2, 5))]
    text = f"Hi {first},\n\n" + " ".join(sentences) + "\n\nBest,\nThe sender\n"
    paragraphs = "".join(f"<p>{s}</p>" for s in sentences)
    html = f'<div dir="ltr"><p>Hi {first},</p>{paragraphs}<p>Best,<br>The sender</p></div>'
    return text, html
