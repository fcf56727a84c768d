"""Who may use the app Voila serves (`make playground`): this machine's pages, not another site's."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from jupyter_server.auth.identity import PasswordIdentityProvider
from tornado import web
from tornado.httputil import HTTPServerRequest

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SHUTDOWN = re.compile(r"/voila/api/shutdown/[0-9a-f-]+$")
CROSS_SITE = ("This app starts a kernel for each page, so it opens only from this machine's own pages or a link "
              "you follow yourself, not from another site's page or script.")
REFUSED = "Refused: a request from another site's page"  # the status line and the error page's title


def own_origin(request: HTTPServerRequest) -> bool:
    """Does the request's Origin name this server itself (scheme, Host and port as the browser asked)?"""
    origin = urlparse(request.headers.get("Origin", ""))
    return origin.scheme == request.protocol and origin.netloc.lower() == request.host.lower()


def cross_site(request: HTTPServerRequest) -> bool:
    """Was the request sent by a page of another site (another origin: another host or port)?

    Browsers name the sender in `Origin` (scripts' requests, POSTs) and, for every request, say in
    `Sec-Fetch-Site` whether it comes from this origin, another site, or the user (typed, bookmarked:
    "none"). A link another site shows and the user follows (a top-level navigation the user made:
    `Sec-Fetch-User: ?1`) is the user's own request; a script, a frame or an image is not. Programs
    that are not browsers (curl, the tests' HTTP clients) send neither header and are not a web page."""
    headers = request.headers
    if "Origin" in headers and not own_origin(request):
        return True
    site = headers.get("Sec-Fetch-Site")
    if site in (None, "same-origin", "none"):
        return False
    followed_by_user = (headers.get("Sec-Fetch-Mode") == "navigate" and headers.get("Sec-Fetch-Dest") == "document"
                        and headers.get("Sec-Fetch-User") == "?1")
    return not followed_by_user


class AppIdentityProvider(PasswordIdentityProvider):
    """Voila's identity provider (a token where one is set: `make playground HOST=0.0.0.0`), refusing what a
    page of another site sends: each page load starts a kernel of hundreds of MiB, and the kernel's
    websocket drives the widgets. Voila takes it as `--Voila.identity_provider_class`; jupyter_server
    asks it about every request (page, REST, websocket) before the request's handler runs.

    The Host check (against DNS rebinding) is jupyter_server's own: `allow_remote_access=False` with
    `local_hostnames` in Voila's tornado settings, as `make playground` passes them."""

    def get_user(self, handler: web.RequestHandler):
        if cross_site(handler.request):
            self.log.warning("Refused a cross-site request for %s (Origin: %s, Sec-Fetch-Site: %s)",
                             handler.request.path, handler.request.headers.get("Origin"),
                             handler.request.headers.get("Sec-Fetch-Site"))
            handler.current_user = None  # tornado's setter, as jupyter_server's own Host refusal: the error page reads it
            raise web.HTTPError(403, CROSS_SITE, reason=REFUSED)
        return super().get_user(handler)

    def is_token_authenticated(self, handler: web.RequestHandler) -> bool:
        """Token requests skip the XSRF check; so does exactly one more: Voila's shutdown of a closed page's
        kernel (a POST to /voila/api/shutdown/<kernel id> from its page's beforeunload), which Voila 0.5
        sends without the _xsrf cookie it never sets (voila#1458). The XSRF check is there to refuse what
        other sites send; this request carries its page's Origin, this server's own (checked here and in
        `get_user`), which a page of another site cannot send."""
        if super().is_token_authenticated(handler):
            return True
        request = handler.request
        return (request.method == "POST" and SHUTDOWN.search(request.path) is not None and own_origin(request)
                and request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin")
