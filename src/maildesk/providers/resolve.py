"""Name resolution with a deadline and stage-worded errors, shared by the IMAP and SMTP clients."""

from __future__ import annotations

import asyncio
import socket

from maildesk.errors import ProviderUnavailable

Address = tuple[socket.AddressFamily, tuple[object, ...]]


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
