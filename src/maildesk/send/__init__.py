"""Sending mail: the outbox, one sender per provider, the local Sent entry and retries.

* ``service.py`` — what the UI, the API and the CLI call (prepare, send, resend, listings);
* ``delivery.py`` — one attempt of one outbox row and what its outcome does;
* ``senders.py`` — SMTP (IMAP mailboxes), Gmail ``messages.send``, Graph ``sendMail``;
* ``entries.py`` — the local Sent/Draft entry and the original of a reply, read from the store;
* ``outbox_job.py`` — the periodic ``outbox`` job: due retries, crashed attempts, owed Sent
  copies, and local entries a provider sweep removed.

See ``docs/architecture.md`` ("Sending") for states, reconciliation and failure rules.
"""
