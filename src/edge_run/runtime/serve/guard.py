"""Cross-site protection for `edge-run serve`: which Host names and browser Origins may talk to it.

A web page the user opens can send requests to a server on the user's machine. Two doors are shut here:

* DNS rebinding: a page on ``evil.example`` re-points that name at 127.0.0.1 and then reads the answers as its
  own origin. Its requests carry ``Host: evil.example``, so only known names are served: loopback names
  (``localhost``, ``*.localhost``, loopback addresses), the address the server is bound to, this machine's
  hostname when it listens beyond loopback, any IP address when it listens on every interface (a literal
  address cannot be rebound), and the names given with ``--allow-host``. Bound to every interface with an API
  key, any Host is accepted: the key is the protection there.
* Cross-origin requests: a request with an ``Origin`` other than the server's own is refused unless
  ``--cors`` allows that origin; allowed origins get CORS headers and answered preflights.

JSON bodies must say ``Content-Type: application/json`` (checked where bodies are read, app.py): a browser can
send a form or text/plain POST anywhere without a preflight, but not that.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_run.core.errors import UsageError

_NAME = re.compile(r"[a-z0-9*]([a-z0-9*\-.]*[a-z0-9*])?")  # a DNS name, '*' as a wildcard label or part
_ORIGIN = re.compile(r"[a-z][a-z0-9+.\-]*://[^/?#\s]+")  # scheme://host[:port], nothing after
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~\-]+)*")
PREFLIGHT_MAX_AGE_S = 600
ALLOWED_METHODS = "GET, POST, OPTIONS"


def check_api_key(key: str) -> str:
    """The key if it is usable in an ``Authorization: Bearer`` header: printable ASCII, no spaces."""
    if not key.strip():
        raise UsageError("--api-key is empty", "pass a non-empty key or leave --api-key out")
    if not all("!" <= c <= "~" for c in key):
        raise UsageError("--api-key (or EDGE_RUN_API_KEY) must be printable ASCII without spaces",
                         "use letters, digits and punctuation only, e.g. from `openssl rand -hex 24`")
    return key


def _is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(header: str) -> str | None:
    """The name of a Host header value (lowercase, IPv6 without brackets, no port, no trailing dot); None when the
    value is not a host[:port]."""
    value = header.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii())):
            return None
        return name if _ip(name) is not None else None
    name, _, port = value.partition(":")
    if port and not (port.isdigit() and port.isascii() and len(port) <= 5):
        return None
    name = name[:-1] if name.endswith(".") else name
    return name if name and (_ip(name) is not None or _NAME.fullmatch(name)) else None


@dataclass(frozen=True)
class AccessPolicy:
    """Who may talk to the server: built once at startup (``access_policy``) and checked on every request."""

    bound: str  # the address the socket listens on
    allow_hosts: tuple[str, ...] = ()  # exact names or fnmatch patterns ('*' alone: any Host)
    cors: tuple[str, ...] = ()  # origins or fnmatch patterns ('*' alone: any origin)
    any_host: bool = False
    local_names: frozenset[str] = field(default_factory=frozenset)  # this machine's names (when not loopback-only)

    def host_allowed(self, header: str | None) -> bool:
        if header is None:  # HTTP/1.0 without Host: no browser sends that, so no rebinding either
            return True
        name = split_host(header)
        if name is None:
            return False
        if self.any_host or name == "localhost" or name.endswith(".localhost") or name in self.local_names:
            return True
        ip = _ip(name)
        if ip is not None and (ip.is_loopback or _is_wildcard(self.bound) or ip == _ip(self.bound)):
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allow_hosts)

    def origin_allowed(self, origin: str) -> bool:
        return any(fnmatch.fnmatchcase(origin.lower(), pattern) for pattern in self.cors)


def access_policy(bound: str, allow_hosts: list[str] | None, cors: list[str] | None,
                  api_key: str | None) -> AccessPolicy:
    """The policy for a server listening on ``bound`` with ``--allow-host`` names,
    ``--cors`` origins and maybe a key; a malformed name or origin is a UsageError."""
    names = []
    for raw in allow_hosts or []:
        name = raw.strip().lower().rstrip(".")
        if name != "*" and not (_ip(name.strip("[]")) or _NAME.fullmatch(name)):
            raise UsageError(f"--allow-host {raw!r} is not a host name",
                             "pass a name such as mybox.lan or *.lan (no scheme, no port), or * for any")
        names.append(name.strip("[]"))
    origins = []
    for raw in cors or []:
        origin = raw.strip().lower().rstrip("/")
        if origin not in ("*", "null") and not _ORIGIN.fullmatch(origin):
            raise UsageError(f"--cors {raw!r} is not an origin",
                             "pass scheme://host[:port] such as http://localhost:3000 (* in it matches anything)")
        origins.append(origin)
    local: frozenset[str] = frozenset()
    bound_ip = _ip(bound)
    if bound_ip is None or not bound_ip.is_loopback:
        hostname = socket.gethostname().lower()
        local = frozenset({hostname, f"{hostname}.local"})
    return AccessPolicy(bound=bound, allow_hosts=tuple(names), cors=tuple(origins),
                        any_host="*" in names or (_is_wildcard(bound) and api_key is not None), local_names=local)


def _refuse(status: int, message: str, code: str) -> Response:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}}, status_code=status)


class AccessGuard:
    """ASGI middleware: Host allowlist, then Origin check, CORS headers and preflights; everything else passes."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host, origin = headers.get("host"), headers.get("origin")
        if not self.policy.host_allowed(host):
            shown = (host or "")[:80]
            await _refuse(403, f"the Host {shown!r} is not one this server answers to (it guards against DNS "
                          "rebinding); start it with --allow-host NAME to add a name", "host_not_allowed")(
                scope, receive, send)
            return
        origin = origin or ""
        cross = "origin" in headers and origin.lower() != f"http://{(host or '').lower()}"
        if cross and not self.policy.origin_allowed(origin):
            await _refuse(403, f"requests from the web origin {origin[:80]!r} are not allowed; start the server "
                          "with --cors ORIGIN to allow it", "origin_not_allowed")(scope, receive, send)
            return
        if not cross:
            await self.app(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(headers, cors, scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, headers: dict[str, str], cors: list[tuple[bytes, bytes]], scope: Scope,
                         receive: Receive, send: Send) -> None:
        asked = headers.get("access-control-request-headers", "").strip()
        allow = asked if asked and _HEADER_LIST.fullmatch(asked) else "Authorization, Content-Type"
        response = Response(status_code=204, headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS, "Access-Control-Allow-Headers": allow,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S)})
        response.raw_headers.extend(cors)
        await response(scope, receive, send)
