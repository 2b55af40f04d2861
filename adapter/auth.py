"""Who is calling, and as which SIP address.

Every REST request authenticates an application instance account with HTTP
Basic (RFC 7617).  The account then acts as one of its SIP addresses: its
first address, unless the request names another of its addresses in the
``X-Presence-Identity`` header.  Naming an address the account does not hold
is a policy error (403), never a silent fallback.

Passwords are compared in constant time (``hmac.compare_digest``).  An account
with a ``password_hash`` costs an Argon2 verification (slow by design), far too
much for every request of HTTP Basic: the password that verified is remembered
as HMAC-SHA256 under a key drawn at start and kept only in memory, one digest
per account.  A later request costs one HMAC and one constant-time comparison;
the cache holds nothing that reveals the password without the key, and cannot
grow beyond the number of accounts.  :meth:`Accounts.check_async` runs the slow
verification in a worker thread, so the event loop keeps serving meanwhile; it
also remembers the last few credentials it *refused* (the same keyed digests,
bounded), so that the synchronous check that follows it on the event loop
(Bayeux's handshake, the REST endpoint) does not verify them a second time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from starlette.requests import HTTPConnection

from adapter.bayeux.endpoints import basic_credentials
from adapter.config import Account
from adapter.errors import PolicyError
from adapter.passwords import verify_password

__all__ = ["IDENTITY_HEADER", "REALM", "Accounts", "Caller", "basic_credentials"]

REALM = "presence-adapter"
IDENTITY_HEADER = "X-Presence-Identity"

#: Refused credentials remembered (digests, oldest forgotten first).
REFUSALS_KEPT = 1024


@dataclass(frozen=True)
class Caller:
    account: Account
    address: str  # the SIP address this request acts as


class Accounts:
    """The configured application accounts, checked in constant time."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self._accounts: dict[str, Account] = {account.id: account for account in accounts}
        self._key = secrets.token_bytes(32)
        #: account id -> HMAC of the password that last verified against its hash.
        self._verified: dict[str, bytes] = {}
        #: HMACs of (user, password) pairs whose verification failed, oldest first.
        self._refused: dict[bytes, None] = {}
        # An unknown user is verified against some account's hash anyway, so that
        # timing does not tell which ids exist when hashes are in use.
        self._decoy = next(
            (a.password_hash for a in self._accounts.values() if a.password_hash), None
        )
        self._workers: anyio.CapacityLimiter | None = None

    def check(self, user: str, password: str) -> Account | None:
        """The account these credentials open, or None (may take a hash verification)."""
        account, phc = self._quick(user, password)
        if phc is None:
            return account
        return self._settle(account, password, verify_password(phc, password))

    async def check_async(self, user: str, password: str) -> Account | None:
        """As :meth:`check`, with a slow hash verified in a worker thread.

        One verification at a time: a flood of wrong passwords waits on itself
        and never takes more than one core, and remembered passwords skip the queue.
        """
        account, phc = self._quick(user, password)
        if phc is None:
            return account
        if self._workers is None:
            self._workers = anyio.CapacityLimiter(1)
        matches = await anyio.to_thread.run_sync(
            verify_password, phc, password, limiter=self._workers
        )
        if not matches:
            self._refused[self._refusal(user, password)] = None
            if len(self._refused) > REFUSALS_KEPT:
                del self._refused[next(iter(self._refused))]
        return self._settle(account, password, matches)

    def _quick(self, user: str, password: str) -> tuple[Account | None, str | None]:
        """(the account, None) when settled without a hash; else (account, hash to verify)."""
        account = self._accounts.get(user)
        if account is not None and account.password is not None:
            matches = hmac.compare_digest(_utf8(password), _utf8(account.password))
            return (account if matches else None), None
        if account is None and self._decoy is None:
            # Compare even for an unknown user, so timing does not tell which ids exist.
            hmac.compare_digest(_utf8(password), b"")
            return None, None
        if account is not None:
            known = self._verified.get(account.id)
            if known is not None and hmac.compare_digest(known, self._digest(password)):
                return account, None
        if self._refused and self._refusal(user, password) in self._refused:
            return None, None
        return account, account.password_hash if account is not None else self._decoy

    def _settle(self, account: Account | None, password: str, matches: bool) -> Account | None:
        if account is None or not matches:
            return None
        self._verified[account.id] = self._digest(password)
        return account

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, _utf8(password), hashlib.sha256).digest()

    def _refusal(self, user: str, password: str) -> bytes:
        # Length-prefixed: ("ab", "c") and ("a", "bc") must differ.
        return self._digest(f"{len(user)}:{user}{password}")

    def authenticate(self, connection: HTTPConnection) -> Caller:
        """The caller of this request, or a 401/403 PolicyError."""
        headers = connection.headers
        return self.caller(headers.get("Authorization"), headers.get(IDENTITY_HEADER))

    def caller(self, authorization: str | None, named: str | None) -> Caller:
        """The caller given the request's ``Authorization`` and identity header values."""
        credentials = basic_credentials(authorization)
        if credentials is None:
            raise PolicyError.unauthenticated(REALM)
        account = self.check(*credentials)
        if account is None:
            raise PolicyError.unauthenticated(REALM)
        if named is None:
            return Caller(account, account.default_address)
        named = named.strip()
        if not account.may_act_as(named):
            raise PolicyError.policy_error(f"account {account.id} may not act as {named}")
        return Caller(account, named)


def _utf8(text: str) -> bytes:
    # "surrogatepass": a password from JSON (a Bayeux handshake) may hold a lone
    # surrogate (\ud800); it must compare unequal, not raise.
    return text.encode("utf-8", "surrogatepass")
