"""What keeps the review server to its reader: loopback by default, a token beyond it, no
cross-site POSTs, a strict Content-Security-Policy, and logs without identifiers.

- **Binding**: 127.0.0.1 unless ``--host`` says otherwise; any other address needs a token
  (``$FIBROSIS_REVIEW_TOKEN``, never a command-line argument, which ``ps`` would show). The first
  visit carries it as ``?token=``; the server answers with an HttpOnly, SameSite=Strict cookie and a
  redirect to the same page without it, so the token leaves the address bar and the history.
- **Host header**: a loopback server answers only requests addressed to a loopback name, so a web
  page elsewhere cannot reach it through a DNS name that resolves to 127.0.0.1 (DNS rebinding).
- **POSTs** must carry the page's CSRF token in ``X-CSRF-Token`` (a cross-site form cannot set a
  header) and, when the browser sends one, an ``Origin`` of this server.
- **Content-Security-Policy**: scripts, styles and images from this server only; no inline script,
  no frames, no forms posted elsewhere.
- **Logs**: one line per request with the method, the path (opaque keys only) and the status; never
  the query string (filters, the token) or a header.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

logger = logging.getLogger(__name__)

TOKEN_ENV = "FIBROSIS_REVIEW_TOKEN"
MIN_TOKEN_CHARS = 16
COOKIE = "fibrosis_review_token"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Resource-Policy": "same-origin"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """ValueError when ``host`` reaches beyond this machine and no usable token was set."""
    if is_loopback(host):
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"${TOKEN_ENV}: {len(token)} characters; expected at least {MIN_TOKEN_CHARS}")
        return
    if not token or len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"--host {host}: binding beyond this machine needs a token: set ${TOKEN_ENV} to a secret "
                         f"of at least {MIN_TOKEN_CHARS} characters (e.g. `export {TOKEN_ENV}=$(openssl rand -hex 16)`)"
                         " and open the address with ?token=<it>")


@dataclass
class Guard:
    """The checks of every request, as a Starlette ``http`` middleware (``dispatch``)."""

    loopback: bool
    token: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def _host_ok(self, request: Request) -> bool:
        if not self.loopback:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.cookies.get(COOKIE, "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _cross_site(self, request: Request) -> str:
        """Why a POST is refused as possibly cross-site ("" when it is not)."""
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            return "missing or wrong CSRF token (reload the page: the server may have restarted)"
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return "cross-origin request"
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request"
        return ""

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await self._checked(request, call_next)
        for name, value in HEADERS.items():
            response.headers[name] = value
        # the path holds opaque keys only; the query string (filters, a token) is never logged. Pixels
        # and static files at debug level: a page view is one line.
        path = request.url.path
        quiet = path.startswith(("/image/", "/cam/", "/static/")) and response.status_code < 400
        logger.log(logging.DEBUG if quiet else logging.INFO, "%s %s %d", request.method, path, response.status_code)
        return response

    async def _checked(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not self._host_ok(request):
            return PlainTextResponse("this server answers requests to localhost / 127.0.0.1 only", 403)
        offered = request.query_params.get("token")
        if self.token is not None and offered is not None:
            if not hmac.compare_digest(offered.encode(), self.token.encode()):
                return PlainTextResponse("wrong token", 403)
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response: Response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        if not self._authorised(request):
            return PlainTextResponse("this review server needs its token: open the address with ?token=<the value "
                                     f"of ${TOKEN_ENV}>", 401)
        if request.method not in ("GET", "HEAD"):
            why = self._cross_site(request)
            if why:
                return PlainTextResponse(f"refused: {why}", 403)
        return await call_next(request)
