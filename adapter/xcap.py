"""XCAP client for presence rules (RFC 4825, RFC 5025) and, read only, the
watchers' rls-services documents (RFC 4826).

A presentity's authorisation lives in one document on the presence server:
``{root}/pres-rules/users/{presentity}/index``.  Every change is a
read-modify-write guarded by the entity tag: GET (ETag), change one rule, PUT
with ``If-Match`` — and on 412 (RFC 4825 §7.11, someone else wrote in
between) start over from a fresh GET.  A document that does not exist yet is
created with ``If-None-Match: *`` so two first writers cannot overwrite each
other either — where the server honours it.

The bundled Kamailio 5.6 does not (measured: a second ``If-None-Match: *`` PUT
replaces the document, 200), and answers 500 to writes that meet another in
its SQLite database ("database is locked").  So this client also runs one
read-modify-write per document at a time itself (concurrent decisions about
several watchers of one presentity were lost, or refused with 502), and
starts a read-modify-write over after a 500 or 503, a few times, with a short
pause: the write did not happen, and the change is applied to a fresh read.

The requests go out through aiohttp: a burst of subscriptions asks for
thousands of reads, each on a connection of its own (Kamailio's xhttp closes
after every reply), and aiohttp's work per request is far lighter than
httpx's (its client, cookie jar, httpcore over anyio; figures in
docs/benchmarks-history.md).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from yarl import URL

from pidf import PresRules
from pidf.errors import PidfError
from pidf.presrules import CONTENT_TYPE

__all__ = ["XcapClient", "XcapError", "XcapTimeout", "RulesDocument"]

logger = logging.getLogger(__name__)

#: Attempts of one read-modify-write before giving up on a busy document.
MAX_ATTEMPTS = 5
#: Statuses after which a PUT is tried again (the store was busy; nothing written).
BUSY = (500, 503)
#: Pause before the n-th new attempt after a busy answer: n times this (seconds).
BUSY_PAUSE = 0.05


#: What a request URL keeps as written (RFC 3986 reserved characters, and
#: '%' of an escape already made); anything else is percent-encoded in UTF-8,
#: as httpx does: a document is found under the path it was written to.
URL_SAFE = ":/?#[]@!$&'()*+,;=%"

#: Requests to the XCAP server under way at once, and how long one waits its turn.
CONNECTIONS = 8
POOL_WAIT = 60.0


class XcapError(Exception):
    """The XCAP server refused or garbled a request."""

    def __init__(self, what: str, status: int | None, detail: str) -> None:
        self.status = status
        self.detail = detail
        where = f"{status} " if status is not None else ""
        super().__init__(f"XCAP {what} failed: {where}{detail}".rstrip())


class XcapTimeout(XcapError):
    """The XCAP server did not answer in time."""


@dataclass(frozen=True)
class RulesDocument:
    rules: PresRules
    etag: str | None  # None: the document does not exist yet


@dataclass(frozen=True, slots=True)
class Answer:
    """An XCAP server's answer, read to the end."""

    status_code: int
    reason_phrase: str
    headers: Mapping[str, str]  # names case-insensitive
    content: bytes


class _Aiohttp:
    """Requests through one aiohttp session, made on the first request (it
    belongs to the running event loop)."""

    def __init__(
        self, timeout: float, auth: tuple[str, str] | None, tls: ssl.SSLContext | None
    ) -> None:
        self._timeout = timeout
        self._auth = auth
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # No keep-alive: Kamailio's xhttp closes the connection after every
        # reply without saying "Connection: close", so a reused connection
        # fails the next request (measured, docs/kamailio.md).
        connector = aiohttp.TCPConnector(
            limit=CONNECTIONS, force_close=True,
            ssl=self._tls if self._tls is not None else True,
        )
        middlewares = () if self._auth is None else (aiohttp.DigestAuthMiddleware(*self._auth),)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout, sock_read=self._timeout
            ),
            middlewares=middlewares,
            headers={"Connection": "close"},
            cookie_jar=aiohttp.DummyCookieJar(),  # XCAP sets none; nothing to parse
        )

    async def send(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str] | None
    ) -> Answer:
        session = self._session
        if session is None:
            session = self._session = self._open()
        try:
            # The path goes out as it always did, never normalised: the
            # server stores the document URI literally (rules_url).  No
            # redirect is followed: a write goes where it was sent, or fails.
            async with session.request(
                method, URL(quote(url, safe=URL_SAFE), encoded=True), data=content,
                headers=headers, allow_redirects=False,
            ) as response:
                body = await response.read()
                return Answer(response.status, response.reason or "", response.headers, body)
        except TimeoutError:
            raise  # aiohttp's timeouts are ClientErrors too: they stay timeouts
        except aiohttp.ClientError as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Unreachable(Exception):
    """The request got no answer: refused, reset, not resolvable, TLS refused."""


class XcapClient:
    """Reads and writes presentities' pres-rules documents."""

    def __init__(
        self,
        root: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls`` verifies an https:// root (None: the system's trust store)."""
        self.root = root.rstrip("/")
        auth = (username, password) if username and password else None
        # A few connections at a time: a burst of reads (the members of many
        # watched lists) otherwise opens one each, and every connection costs
        # Kamailio tcp_rd_buf_size of its shared memory.  The others queue.
        self._http = _Aiohttp(timeout, auth, tls)
        #: Requests sent, by (method, application usage): for /metrics.
        self.requests: dict[tuple[str, str], int] = {}
        # The bound on requests under way is kept here, not by the connection
        # pool: a pool's queue may cost work per waiter each time a request
        # completes, and a burst of first subscriptions queues thousands.  A
        # semaphore's waiters cost nothing, and its wait is bounded.
        self._slots = asyncio.Semaphore(CONNECTIONS)
        # One lock per document being written; gone once no update holds it.
        self._writing: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def close(self) -> None:
        await self._http.close()

    def rules_url(self, presentity: str) -> str:
        # RFC 5025 §9.7: pres-rules documents of a user live under
        # users/<xui>/; the presence server stores the URI as written, so we
        # always write it the same way (the SIP URI, verbatim — ':' and '@'
        # are pchars, RFC 3986 §3.3).
        return f"{self.root}/pres-rules/users/{presentity}/index"

    async def rls_services(self, owner: str) -> bytes | None:
        """The ``owner``'s rls-services document (RFC 4826 §4.4.4 names it
        ``index``, as the bundled server does); None when it has none."""
        url = f"{self.root}/rls-services/users/{owner}/index"
        response = await self._send("GET", url, "rls-services")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise XcapError("GET", response.status_code, _detail(response))
        return response.content

    async def get(self, presentity: str) -> RulesDocument:
        response = await self._request("GET", presentity)
        if response.status_code == 404:
            return RulesDocument(PresRules(), None)
        if response.status_code != 200:
            raise XcapError("GET", response.status_code, _detail(response))
        try:
            rules = PresRules.parse(response.content)
        except PidfError as exc:
            raise XcapError("GET", None, f"unreadable pres-rules document: {exc}") from exc
        return RulesDocument(rules, response.headers.get("ETag"))

    async def update(
        self, presentity: str, change: Callable[[PresRules], PresRules]
    ) -> PresRules:
        """Apply ``change`` to the presentity's rules; returns what was stored."""
        lock = self._writing.get(presentity)
        if lock is None:
            lock = self._writing[presentity] = asyncio.Lock()
        async with lock:
            return await self._update(presentity, change)

    async def _update(
        self, presentity: str, change: Callable[[PresRules], PresRules]
    ) -> PresRules:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            document = await self.get(presentity)
            rules = change(document.rules)
            headers = {"Content-Type": CONTENT_TYPE}
            if document.etag is not None:
                headers["If-Match"] = document.etag
            else:
                headers["If-None-Match"] = "*"
            response = await self._request("PUT", presentity, rules.to_xml(), headers)
            if response.status_code in (200, 201):
                return rules
            if response.status_code == 412:
                logger.info(
                    "pres-rules of %s changed under us (attempt %d); retrying",
                    presentity,
                    attempt,
                )
                continue
            if response.status_code in BUSY and attempt < MAX_ATTEMPTS:
                logger.info(
                    "pres-rules of %s not stored (%d, attempt %d); retrying",
                    presentity,
                    response.status_code,
                    attempt,
                )
                await asyncio.sleep(BUSY_PAUSE * attempt)
                continue
            raise XcapError("PUT", response.status_code, _detail(response))
        raise XcapError("PUT", 412, f"document kept changing ({MAX_ATTEMPTS} attempts)")

    async def _request(
        self,
        method: str,
        presentity: str,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        return await self._send(method, self.rules_url(presentity), "pres-rules", content,
                                headers)

    async def _send(
        self,
        method: str,
        url: str,
        usage: str,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        key = (method, usage)
        self.requests[key] = self.requests.get(key, 0) + 1
        try:
            async with asyncio.timeout(POOL_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            logger.warning("XCAP %s %s: no answer (waited %g s for a connection)",
                           method, url, POOL_WAIT)
            raise XcapTimeout(method, None, "no answer from the XCAP server") from None
        try:
            return await self._http.send(method, url, content, headers)
        except TimeoutError as exc:
            # The root URL goes to the log only: it is the operator's business,
            # not the applications' (the error text reaches them).
            logger.warning("XCAP %s %s: no answer", method, url)
            raise XcapTimeout(method, None, "no answer from the XCAP server") from exc
        except _Unreachable as exc:
            logger.warning("XCAP %s %s: %s", method, url, exc)
            raise XcapError(method, None, "XCAP server unreachable") from exc
        finally:
            self._slots.release()


def _detail(response: Answer) -> str:
    text = response.reason_phrase or ""
    body = response.content.decode("utf-8", "replace").strip().splitlines()
    if body:
        text = f"{text}: {body[0][:200]}"
    return text
