"""Who is calling, and as which SIP address.

Every REST request authenticates an application instance account with HTTP
Basic (RFC 7617).  The account then acts as one of its SIP addresses: its
first address, unless the request names another of its addresses in the
``X-Presence-Identity`` header.  Naming an address the account does not hold
is a policy error (403), never a silent fallback.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from adapter.config import Account
from adapter.errors import PolicyError

__all__ = ["IDENTITY_HEADER", "REALM", "Accounts", "Caller"]

REALM = "presence-adapter"
IDENTITY_HEADER = "X-Presence-Identity"


@dataclass(frozen=True)
class Caller:
    account: Account
    address: str  # the SIP address this request acts as


class Accounts:
    """The configured application accounts, checked in constant time."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self._accounts = {account.id: account for account in accounts}

    def check(self, user: str, password: str) -> Account | None:
        account = self._accounts.get(user)
        expected = account.password if account is not None else ""
        # Compare even for an unknown user, so timing does not tell which ids exist.
        matches = hmac.compare_digest(password.encode(), expected.encode())
        return account if account is not None and matches else None

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


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` value (RFC 7617 §2)."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password
