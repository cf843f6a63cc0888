"""MailDesk: a self-hosted realtime mailbox sync server."""
