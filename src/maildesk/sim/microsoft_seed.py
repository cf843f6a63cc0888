"""Realistic, deterministic Outlook mailbox contents for tests, the demo and benchmarks."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from maildesk.errors import NotFound
from maildesk.sim.graph_mailbox import OutlookMailbox

_NAMES = (
    "Amara Okafor",
    "Bjørn Lind",
    "Carmen Vidal",
    "Deepak Rao",
    "Elif Demir",
    "Farah Haddad",
    "Gustav Holm",
    "Hana Sato",
    "Iker Etxeberria",
    "Julia Nowak",
    "Kofi Mensah",
    "Lucía Pérez",
    "Mateo Ricci",
    "Nadia Popescu",
    "Oskar Wiśniewski",
    "Priya Nair",
    "Rafael Souza",
)
_DOMAINS = ("contoso.test", "fabrikam.test", "northwind.test", "example.org")
_SERVICES = (
    ("Azure DevOps", "azuredevops@service.test"),
    ("Expense Bot", "expenses@service.test"),
    ("Travel Desk", "travel@service.test"),
    ("Newsletter", "news@service.test"),
)
_SUBJECTS = (
    "Quarterly review — agenda",
    "Re: contract renewal",
    "Invoice {n}",
    "Build {n} failed",
    "Lunch {day}?",
    "Minutes: planning meeting",
    "Your trip to {city}",
    "Action items for {day}",
    "Weekly newsletter #{n}",
    "Question about the proposal",
    "Re: Re: budget numbers",
)
_SENTENCES = (
    "Please see the notes below.",
    "Could you confirm by end of day?",
    "The numbers look good so far.",
    "I have moved the meeting to the afternoon.",
    "Thanks for the quick turnaround.",
    "Let us discuss this on Teams.",
    "The draft is in the shared folder.",
    "No action needed from your side.",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_CITIES = ("Lisbon", "Oslo", "Kyoto", "Nairobi", "Montréal")
# Custom folders the seeder creates (a "/" nests the second under the first).
FOLDERS = ("Projects", "Projects/Apollo", "Receipts")


def ensure_folders(mailbox: OutlookMailbox) -> list[str]:
    """Create ``FOLDERS`` where missing; returns their ids."""
    ids: list[str] = []
    for path in FOLDERS:
        parent = mailbox.root_id
        for name in path.split("/"):
            found = [
                c
                for c in mailbox.folders[parent].children
                if mailbox.folders[c].display_name == name
            ]
            parent = found[0] if found else mailbox.add_folder(name, parent).id
        ids.append(parent)
    return ids


def seed_outlook(
    mailbox: OutlookMailbox, rng: random.Random, *, now: datetime, count: int, days: int = 365
) -> list[str]:
    """Add ``count`` messages dated over the last ``days`` days; returns ids, oldest first.

    Mix: most in the inbox (about a quarter unread, some flagged), ~12% in Sent Items, ~8% in
    the custom folders, ~3% in Archive (when the mailbox has one), ~2% Deleted Items, ~2% Junk.
    """
    custom = ensure_folders(mailbox)
    people = [
        (name, f"{name.split()[0].lower()}.{i}@{rng.choice(_DOMAINS)}")
        for i, name in enumerate(_NAMES)
    ]
    me = (mailbox.display_name, mailbox.email)
    span = max(1, days) * 86_400
    offsets = sorted((rng.randrange(span) for _ in range(count)), reverse=True)
    ids: list[str] = []
    for offset in offsets:
        roll = rng.random()
        correspondent = rng.choice(_SERVICES) if rng.random() < 0.25 else rng.choice(people)
        folder, sender, to = "inbox", correspondent, [me]
        is_read, flag = rng.random() > 0.25, "flagged" if rng.random() < 0.05 else "notFlagged"
        if roll < 0.02:
            folder = "deleteditems"
        elif roll < 0.04:
            folder, is_read = "junkemail", False
        elif roll < 0.16:
            folder, sender, to, is_read = "sentitems", me, [correspondent], True
        elif roll < 0.24:
            folder = rng.choice(custom)
        elif roll < 0.27:
            folder = "archive"
        try:
            folder_id = mailbox.folder(folder).id
        except NotFound:
            folder_id = mailbox.folder("inbox").id
        sentences = [rng.choice(_SENTENCES) for _ in range(rng.randint(2, 4))]
        first = correspondent[0].split()[0]
        text = f"Hi {first},\n\n" + " ".join(sentences) + "\n\nRegards\n"
        html = f"<html><body><p>Hi {first},</p>" + "".join(f"<p>{s}</p>" for s in sentences)
        message = mailbox.add(
            folder=folder_id,
            subject=_subject(rng),
            sender=sender,
            to=to,
            html=html + "</body></html>",
            text=text,
            received_at=now - timedelta(seconds=offset),
            is_read=is_read,
            flag_status=flag,
        )
        ids.append(message.id)
    return ids


def _subject(rng: random.Random) -> str:
    return rng.choice(_SUBJECTS).format(
        n=rng.randrange(1000, 99_999), day=rng.choice(_DAYS), city=rng.choice(_CITIES)
    )
