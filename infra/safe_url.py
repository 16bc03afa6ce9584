"""Outgoing URLs we were given (webhooks): checked against SSRF, and fetched at the address checked.

A URL is refused unless it is http(s) and every address its host resolves to is public (not loopback,
private, link-local, multicast, unspecified or reserved). The request then goes to those addresses
themselves (the next if one refuses the connection), with the original Host header and TLS server
name: the name is not resolved a second time between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

RESOLVE_TIMEOUT_S = 5.0
MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURLError(ValueError):
    """The URL may not be fetched; the message says why, for the caller."""


@dataclass(frozen=True)
class CheckedURL:
    url: str
    host: str
    addresses: list[IPAddress]


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL we may try to fetch; UnsafeURLError for anything else."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURLError("only http and https URLs are allowed")
    if not parts.hostname:
        raise UnsafeURLError("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURLError("credentials in the URL are not allowed")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check(url: str, *, allow_private: bool = False) -> CheckedURL:
    """Resolve the URL's host and check every address; UnsafeURLError if any may not be reached."""
    _, host, port = parse(url)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise UnsafeURLError(f"the host {host!r} does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise UnsafeURLError(f"the host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise UnsafeURLError(
                    f"the host {host!r} resolves to {address}, a loopback, private, link-local or multicast address"
                )
    return CheckedURL(url, host, list(dict.fromkeys(addresses)))


def pinned_request(
    client: httpx.AsyncClient, checked: CheckedURL, address: IPAddress, content: bytes, headers: dict[str, str]
) -> httpx.Request:
    """A POST to one checked address, naming the original host (Host header, TLS server name)."""
    url = httpx.URL(checked.url)
    authority = url.netloc.decode("ascii")
    pinned = url.copy_with(host=str(address))
    request = client.build_request(
        "POST", pinned, content=content, headers={**headers, "Host": authority},
        extensions={"sni_hostname": checked.host},
    )  # fmt: skip
    return request
