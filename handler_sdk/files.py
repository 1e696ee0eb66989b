"""Files into a job: ``handler_sdk.files.download(url)`` fetches a URL into the job's own temporary folder.

The folder is made on the first download of a job and removed, with everything in it, when the job ends. A
download has a size cap (``max_bytes``, checked against Content-Length before reading and while reading) and a
timeout for the whole transfer. Only http(s) URLs, and only to public addresses: the host is resolved and the
download refused if *any* of its addresses is private, loopback, link-local (cloud metadata at 169.254.169.254
is), shared, multicast or reserved, and every redirect is checked the same way (at most 5), so a public URL that
redirects inward is refused too. The connection goes to the addresses that were checked (the resolver that
checks them is the connection's own), so DNS cannot answer differently in between.
``HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE=1`` turns the address check off; a comma-separated list of addresses or
networks (``10.0.0.0/8,127.0.0.1``) allows just those. Every failure is a ``FileError`` that says what and why,
which fails the job with that message unless the handler catches it.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .errors import FileError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TIMEOUT_S", "download", "download_async", "job_dir"]

DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_TIMEOUT_S = 60.0
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# The job running in this context (its threads too: the pool copies the context), and the folders downloads made,
# by job id. A job that downloads nothing costs a context-variable set and reset, and nothing else.
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("handler_sdk_job", default=None)
_dirs: dict[str, Path] = {}


def enter_job(job_id: str) -> contextvars.Token[str | None]:
    """The runner: the job ``job_id`` runs in this context."""
    return _current.set(job_id)


def leave_job(job_id: str, token: contextvars.Token[str | None]) -> None:
    """The runner, when the job has ended: remove its download folder, if it made one."""
    _current.reset(token)
    if _dirs and (d := _dirs.pop(job_id, None)) is not None:
        shutil.rmtree(d, ignore_errors=True)


def job_dir() -> Path:
    """This job's temporary folder (made now if need be), removed when the job ends. Outside a job: a fresh
    temporary folder that the caller removes."""
    job_id = _current.get()
    if job_id is None:
        return Path(tempfile.mkdtemp(prefix="handler_sdk-"))
    d = _dirs.get(job_id)
    if d is None:
        d = _dirs[job_id] = Path(tempfile.mkdtemp(prefix=f"handler_sdk-{_UNSAFE_NAME.sub('_', job_id)[:40]}-"))
    return d


# --- which addresses ---------------------------------------------------------------------------------------


def _allowed_networks() -> Sequence[Network] | None:
    """None: every address is allowed; else the private networks allowed besides public addresses."""
    raw = os.environ.get("HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE", "").strip()
    if raw.lower() in ("1", "true", "yes", "on"):
        return None
    nets = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise FileError(
                f"HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE has {part!r}, which is not an address or network; use 1 to "
                "allow every address, or a comma-separated list such as 10.0.0.0/8,127.0.0.1"
            ) from None
    return nets


def refusal(addr: Address, allowed: Sequence[Network] | None) -> str | None:
    """Why a download may not connect to ``addr``, or None when it may."""
    if allowed is None:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_global and not addr.is_multicast:
        return None
    if any(addr.version == n.version and addr in n for n in allowed):
        return None
    kind = next(
        (k for k in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified")
         if getattr(addr, f"is_{k}")), "non-public",
    )  # fmt: skip
    return f"{addr} is a {kind.replace('_', '-')} address (set HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE to allow it)"


class _CheckingResolver(AbstractResolver):
    """Resolves like the system does, then refuses the host if any of its addresses is not allowed."""

    def __init__(self, allowed: Sequence[Network] | None) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self.allowed = allowed
        self.refused: str | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            why = refusal(ipaddress.ip_address(r["host"].split("%")[0]), self.allowed)
            if why is not None:
                self.refused = f"{host} resolves to {why}"
                raise OSError(self.refused)
        return results

    async def close(self) -> None:
        await self._inner.close()


def _check_url(url: str, allowed: Sequence[Network] | None) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FileError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    try:
        addr = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a name: the resolver checks its addresses
    if (why := refusal(addr, allowed)) is not None:
        raise FileError(f"download of {url} refused: {why}")
    return url


def _file_name(url: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = _UNSAFE_NAME.sub("_", unquote(urlsplit(url).path.rsplit("/", 1)[-1]))[:100].strip("._") or "download"
    path, n = dest / name, 1
    while path.exists():
        path, n = dest / f"{n}-{name}", n + 1
    return path


# --- downloading -------------------------------------------------------------------------------------------


async def download_async(
    url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S, dest: Path | None = None
) -> Path:
    """Download ``url`` into the job's folder (or ``dest``) and return the file's path. Raises FileError."""
    allowed = _allowed_networks()
    resolver = _CheckingResolver(allowed)
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    target = url
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(_check_url(target, allowed), allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS and "Location" in resp.headers:
                        target = urljoin(target, resp.headers["Location"])
                        continue
                    return await _save(resp, url, max_bytes, dest or job_dir())
            raise FileError(f"download of {url} failed: more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise FileError(f"download of {url} timed out after {timeout_s:g} s") from None
    except aiohttp.ClientError as e:
        why = resolver.refused or f"{type(e).__name__}: {e}"
        verb = "refused" if resolver.refused else "failed"
        where = "" if target == url else f" (redirected to {target})"
        raise FileError(f"download of {url}{where} {verb}: {why}") from None


async def _save(resp: aiohttp.ClientResponse, url: str, max_bytes: int, dest: Path) -> Path:
    if resp.status >= 400:
        raise FileError(f"download of {url} failed: HTTP {resp.status} {resp.reason or ''}".rstrip())
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise FileError(f"download of {url} refused: it is {resp.content_length} bytes, over max_bytes={max_bytes}")
    path = _file_name(str(resp.url), dest)
    size = 0
    try:
        with path.open("wb") as out:  # page-cache writes of 64 KiB: not worth a thread hop each
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise FileError(f"download of {url} stopped: over max_bytes={max_bytes}")
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def download(
    url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S, dest: Path | None = None
) -> Path:
    """``download_async`` for sync handlers (it blocks the calling thread, which in a sync handler is its own).
    In an async handler use ``await files.download_async(url)``: this one would block the event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise FileError("files.download() would block the event loop; in an async handler use "
                        "`await handler_sdk.files.download_async(url)`")  # fmt: skip
    coro: Any = download_async(url, max_bytes=max_bytes, timeout_s=timeout_s, dest=dest)
    return asyncio.run(coro)  # type: ignore[no-any-return]
