"""Hashed application passwords: Argon2id PHC strings (RFC 9106), made and checked by argon2-cffi.

A configuration may hold ``password_hash = "$argon2id$v=19$m=65536,t=3,p=4$…"``
instead of a password; ``presence-adapter hash-password`` prints one.  The
parameters travel inside the string, so hashes made by any Argon2 library (or
with other costs) verify too.
"""

from __future__ import annotations

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["hash_password", "hash_problem", "verify_password"]

# argon2-cffi's defaults: argon2id with RFC 9106's "second recommended option",
# slow by design, which is why adapter.auth remembers a password once it verified.
_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """A new PHC string for ``password``, with a fresh random salt."""
    return _HASHER.hash(password)


def hash_problem(text: str) -> str | None:
    """Why ``text`` is not an Argon2 PHC string this adapter can verify, or None."""
    try:
        extract_parameters(text)
    except InvalidHashError:
        # The text itself is not repeated: it may be a password pasted by mistake.
        return (
            "is not an Argon2 hash ($argon2id$v=19$...; "
            "make one with presence-adapter hash-password)"
        )
    return None


def verify_password(phc: str, password: str) -> bool:
    """Whether ``password`` matches the PHC string (slow by design; the digest
    comparison inside libargon2 is constant-time)."""
    try:
        # Bytes, so that a lone surrogate (possible in JSON) is a mismatch, not an error.
        return _HASHER.verify(phc, password.encode("utf-8", "surrogatepass"))
    except (VerificationError, InvalidHashError):
        return False
