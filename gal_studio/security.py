"""The web surface's guard: one ASGI middleware in front of every Gradio route (page, API, files, queue).

- Host allow-list: a request whose ``Host`` is not an allowed name gets 400. Loopback names (127.0.0.1,
  localhost, [::1], any port) are always allowed, plus ``--host``'s name and each ``--allowed-host``.
  This closes DNS rebinding: a page at evil.example that re-points its name to 127.0.0.1 still sends
  ``Host: evil.example``.
- Origin check (CSRF): a state-changing request (POST, PUT, PATCH, DELETE, and any websocket) whose
  ``Origin`` is not this server's own address (nor an allowed non-loopback name, for a reverse proxy)
  gets 403. No ``Origin`` (gradio_client, curl, the CLI) passes: browsers always send one cross-origin.
- Body bound: a request body over ``max_body`` bytes gets 413 before it is read (by its Content-Length)
  or as soon as it passes the bound (chunked). Gradio's ``max_file_size`` bounds each uploaded file.
- Login throttle: after ``free_logins`` wrong passwords from one client address, each further try waits
  ``base_delay * 2**n`` seconds (capped); meanwhile ``POST /login`` answers 429 with ``Retry-After``
  without checking the password. A right password clears the count. The client address is the socket
  peer: ``X-Forwarded-For`` counts only when the peer is a proxy the operator named
  (``--forwarded-allow-ips``, none by default). uvicorn would otherwise rewrite the ASGI client from
  ``X-Forwarded-For`` for any connection from 127.0.0.1 (its default ``FORWARDED_ALLOW_IPS``), so that a
  local TLS terminator or ``ssh -L`` tunnel let every login pick its own address:
  :func:`peer_addresses_only` turns that off before the server starts, and the guard reads the header
  itself, only from named proxies.
- A request with more than one ``Host`` header gets 400 (servers and proxies disagree on which one counts).

Gradio's own CORS layer sits outside this one and answers CORS preflights (OPTIONS with
Access-Control-Request-Method) itself with a bare "OK"; the request that follows a preflight comes here.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$|^[0-9a-f:.]+$")
_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def parse_size(text: str | int) -> int:
    """``"20mb"`` -> 20971520; a whole number of bytes, kb, mb or gb; raises ValueError naming the fix."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = text, ""
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([kmg]?b?)\s*", str(text).lower())
        if not match:
            raise ValueError(f"--max-file-size must be a size like 20mb, 512kb or 1048576, got {text!r}")
        value, unit = int(match.group(1)), match.group(2)
        unit = unit if unit.endswith("b") or not unit else unit + "b"
    size = value * _UNITS[unit]
    if size < 1:
        raise ValueError(f"--max-file-size must be at least 1 byte, got {text!r}")
    return size


def host_name(host: str) -> str | None:
    """The name in a Host header or netloc, lower-cased, without port or IPv6 brackets; None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not re.fullmatch(r":\d{1,5}", host[end + 1 :])):
            return None
        return host[1:end] or None
    name, sep, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if sep and not port.isdigit():
        return None
    return name if name and _NAME.match(name) else None


def check_allowed_host(value: str) -> str:
    """An ``--allowed-host`` value as a bare name (``studio.example``, ``*.example.org``, ``10.0.0.5``)."""
    wildcard = value.strip().startswith("*.")
    name = host_name(value.strip()[2:] if wildcard else value)
    if name is None or "/" in value or (":" in value and ":" not in name):  # a scheme, a path or a port
        raise ValueError(
            f"--allowed-host takes a bare host name such as studio.example or *.example.org "
            f"(no scheme, path or port), got {value!r}"
        )
    return f"*.{name}" if wildcard else name


def check_proxy(value: str) -> str:
    """A ``--forwarded-allow-ips`` value: an IP address or network (``127.0.0.1``, ``10.0.0.0/8``)."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"--forwarded-allow-ips takes the IP address or network of a proxy you run (127.0.0.1, "
            f"10.0.0.0/8), got {value!r}; '*' is not accepted: it lets anyone choose their address"
        ) from None


def peer_addresses_only() -> None:
    """Stop uvicorn from rewriting the ASGI client address from ``X-Forwarded-For`` (its default trusts
    127.0.0.1 and ::1; Gradio does not pass ``proxy_headers``). Call before ``launch()``: uvicorn reads
    ``FORWARDED_ALLOW_IPS`` when Gradio builds its config. An empty value trusts no one."""
    os.environ["FORWARDED_ALLOW_IPS"] = ""


@dataclass
class WebPolicy:
    """What the guard accepts; ``extra_hosts`` are the non-loopback names (``--host``, ``--allowed-host``)."""

    extra_hosts: tuple[str, ...] = ()
    max_body: int = 32 * 20 * 1024**2
    free_logins: int = 5
    base_delay: float = 1.0
    max_delay: float = 600.0
    trusted_proxies: tuple[str, ...] = ()  # networks whose X-Forwarded-For names the client (none: the peer)

    @classmethod
    def from_flags(
        cls,
        host: str,
        allowed_hosts: list[str],
        share: bool,
        max_file_size: int,
        forwarded_allow_ips: list[str] = (),
    ) -> WebPolicy:
        """Bodies up to 32 files at ``max_file_size`` each (Gradio bounds each file) plus 1 MiB of
        form data."""
        listed = [p for value in forwarded_allow_ips for p in value.split(",") if p.strip()]
        proxies = tuple(dict.fromkeys(check_proxy(p) for p in listed))
        names = [check_allowed_host(h) for h in allowed_hosts]
        bind = host.strip("[]").lower()
        if bind not in ANY_ADDRESS and bind not in LOOPBACK_NAMES:
            names.append(check_allowed_host(bind))
        if share:
            names.append("*.gradio.live")  # the share tunnel forwards its public name as the Host
        return cls(
            extra_hosts=tuple(dict.fromkeys(names)),
            max_body=32 * max_file_size + 1024**2,
            trusted_proxies=proxies,
        )

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(net) for net in self.trusted_proxies)

    def client_address(self, peer: str, forwarded_for: list[str]) -> str:
        """The login throttle's client: the socket ``peer``, unless it is a named proxy; then the last
        address of ``X-Forwarded-For`` (all its headers, in order) that is not a named proxy itself — the
        one the nearest untrusted hop appended, which a client cannot forge."""
        if not self.trusts(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self.trusts(hop):
                return hop
        return peer

    def host_allowed(self, name: str | None) -> bool:
        if name is None:
            return False
        return name in LOOPBACK_NAMES or any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.extra_hosts
        )

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Same origin (Origin's host:port is the request's Host), or an allowed non-loopback name."""
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
            return False  # "null" (sandboxed frames, file://) and anything unparsable
        if parts.netloc.lower() == host.strip().lower():
            return True
        name = host_name(parts.netloc)
        return name is not None and any(fnmatch.fnmatchcase(name, pattern) for pattern in self.extra_hosts)


@dataclass
class LoginThrottle:
    """Wrong logins per client address; each try is charged when it starts and refunded if it succeeds,
    so a burst of parallel tries cannot slip past the count."""

    free: int = 5
    base_delay: float = 1.0
    max_delay: float = 600.0
    clock: object = time.monotonic
    _state: dict[str, list[float]] = field(default_factory=dict)  # client -> [tries, blocked_until]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, client: str) -> float:
        """0.0 and a charged try, or the seconds this client must still wait (no try charged)."""
        now = self.clock()
        with self._lock:
            tries, until = self._state.get(client, [0, 0.0])
            if now < until:
                return until - now
            tries += 1
            if tries >= self.free:
                until = now + min(self.base_delay * 2 ** (tries - self.free), self.max_delay)
            self._state.pop(client, None)
            self._state[client] = [tries, until]  # re-inserted: the dict's order is least recent first
            if len(self._state) > 10_000:  # bound the memory many addresses can take: drop the stalest
                for key in list(self._state)[:1_000]:
                    del self._state[key]
            return 0.0

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._state.pop(client, None)


def client_key(address: str) -> str:
    """What the login throttle counts by: the address, or its /64 for IPv6 (one host often holds a /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip) if ip.is_loopback else str(ipaddress.ip_network(f"{ip}/64", strict=False))


class WebGuard:
    """ASGI middleware applying a ``WebPolicy``;
    add it with ``app_kwargs={"middleware": [guard(policy)]}``."""

    def __init__(self, app, policy: WebPolicy) -> None:
        self.app = app
        self.policy = policy
        self.logins = LoginThrottle(policy.free_logins, policy.base_delay, policy.max_delay)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        headers = dict(raw)
        if sum(key == "host" for key, _ in raw) > 1:
            await _refuse(scope, receive, send, 400, "more than one Host header: send exactly one")
            return
        host = headers.get("host", "")
        if not self.policy.host_allowed(host_name(host)):
            shown = host_name(host) or host or "(none)"
            port = (scope.get("server") or ("", "PORT"))[1]
            await _refuse(
                scope,
                receive,
                send,
                400,
                f"Host {shown!r} is not allowed here. Open the app at http://127.0.0.1:{port}/, or, to serve "
                f"this name on purpose, start it with --allowed-host {shown}",
            )
            return
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        if (scope["type"] == "websocket" or method not in SAFE_METHODS) and origin is not None:
            if not self.policy.origin_allowed(origin, host):
                await _refuse(
                    scope,
                    receive,
                    send,
                    403,
                    f"cross-origin {method} from {origin!r} refused: use the app from its own address, or "
                    f"start it with --allowed-host NAME for the name a reverse proxy serves it under",
                )
                return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_body:
            await _refuse(scope, receive, send, 413, self._too_large())
            return
        path = scope.get("path", "").rstrip("/")
        if method == "POST" and path in ("/login", scope.get("root_path", "").rstrip("/") + "/login"):
            forwarded = [v for key, v in raw if key == "x-forwarded-for"]
            await self._login(scope, receive, send, forwarded)
            return
        await self._bounded(scope, receive, send)

    def _too_large(self) -> str:
        return (
            f"request body over {self.policy.max_body} bytes refused: send fewer or smaller files, or start "
            f"the app with a larger --max-file-size"
        )

    async def _bounded(self, scope, receive, send) -> None:
        """Count a body without Content-Length (chunked) as it arrives: past the bound, answer 413 and tell
        the app the client left; whatever the app then sends or raises is dropped."""
        seen = 0
        started = refused = False

        async def counted():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.policy.max_body and not refused:
                    refused = True
                    if not started:
                        await _respond(send, 413, self._too_large())
                    return {"type": "http.disconnect"}
            return {"type": "http.disconnect"} if refused else message

        async def tracked(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not refused:
                raise

    async def _login(self, scope, receive, send, forwarded_for: list[str]) -> None:
        peer = (scope.get("client") or ("unknown", 0))[0]
        client = self.policy.client_address(peer, forwarded_for)
        wait = self.logins.start(client_key(client))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            await _respond(
                send,
                429,
                f"too many wrong logins from {client}: wait {seconds} s, then try again",
                [(b"retry-after", str(seconds).encode())],
            )
            return
        status = 0

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self._bounded(scope, receive, watched)
        if 200 <= status < 300:
            self.logins.succeeded(client_key(client))


async def _refuse(scope, receive, send, status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
        return
    await _respond(send, status, text)


async def _respond(send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guard(policy: WebPolicy):
    """The Starlette ``Middleware`` entry for ``Blocks.launch(app_kwargs={"middleware": [...]})``."""
    from starlette.middleware import Middleware

    return Middleware(WebGuard, policy=policy)
