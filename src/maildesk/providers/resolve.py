"""Connection set-up shared by the IMAP and SMTP clients: one deadline for all its stages, and
name resolution with stage-worded errors."""

from __future__ import annotations

import asyncio
import socket

from maildesk.errors import ProviderUnavailable

Address = tuple[socket.AddressFamily, tuple[object, ...]]


class Deadline:
    """One budget of seconds for a whole set-up (resolve, connect, TLS, greeting, sign-in)."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._at = self._loop.time() + seconds

    def remaining(self) -> float:
        """Seconds left (a sliver at least, so a late stage fails by its own timeout)."""
        return max(0.01, self._at - self._loop.time())


async def resolve(host: str, port: int, limit: float) -> list[Address]:
    """The distinct (family, sockaddr) of ``host:port``, in the resolver's order.

    ``ProviderUnavailable`` worded "DNS: …" when the name does not resolve, has no address, or
    resolving takes longer than ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(limit):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ProviderUnavailable(f"DNS: cannot resolve {host!r}: {exc.strerror or exc}") from exc
    except TimeoutError as exc:
        raise ProviderUnavailable(f"DNS: resolving {host!r} timed out") from exc
    addresses: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        entry = (family, tuple(sockaddr))
        if entry not in addresses:
            addresses.append(entry)
    if not addresses:
        raise ProviderUnavailable(f"DNS: {host!r} has no address")
    return addresses
