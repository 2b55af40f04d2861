import threading

import anyio
import pytest
from argon2 import PasswordHasher

import adapter.auth
from adapter.auth import Accounts
from adapter.config import Account

# Cheap parameters: the hash carries them, so verification is as cheap.
HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("bob-secret")
ALICE = Account(id="alice-app", password="alice-secret", addresses=("sip:alice@example.com",))
BOB = Account(id="bob-app", addresses=("sip:bob@example.com",), password_hash=HASH)


@pytest.fixture
def verifications(monkeypatch) -> list[tuple[str, int]]:
    """Every hash verification: (the password tried, the thread it ran on)."""
    calls: list[tuple[str, int]] = []
    real = adapter.auth.verify_password

    def counted(phc: str, password: str) -> bool:
        calls.append((password, threading.get_ident()))
        return real(phc, password)

    monkeypatch.setattr(adapter.auth, "verify_password", counted)
    return calls


def test_plain_passwords() -> None:
    accounts = Accounts([ALICE])
    assert accounts.check("alice-app", "alice-secret") is ALICE
    assert accounts.check("alice-app", "alice-secreT") is None
    assert accounts.check("alice-app", "") is None
    assert accounts.check("nobody", "alice-secret") is None


def test_a_hash_is_verified_once_then_remembered(verifications) -> None:
    accounts = Accounts([ALICE, BOB])
    assert accounts.check("bob-app", "bob-secret") is BOB
    assert accounts.check("bob-app", "bob-secret") is BOB
    assert [p for p, _ in verifications] == ["bob-secret"]
    # Wrong passwords are verified each time and never remembered...
    assert accounts.check("bob-app", "bob-secreT") is None
    assert accounts.check("bob-app", "bob-secreT") is None
    assert [p for p, _ in verifications] == ["bob-secret", "bob-secreT", "bob-secreT"]
    # ...and do not displace the right one.
    assert accounts.check("bob-app", "bob-secret") is BOB
    assert len(verifications) == 3
    # Plain accounts never touch the hash.
    assert accounts.check("alice-app", "alice-secret") is ALICE
    assert len(verifications) == 3


def test_the_remembered_password_is_not_kept_in_clear() -> None:
    accounts = Accounts([BOB])
    assert accounts.check("bob-app", "bob-secret") is BOB
    (kept,) = accounts._verified.values()
    assert b"bob-secret" not in kept and len(kept) == 32
    # Another process (another key) would keep another digest.
    other = Accounts([BOB])
    other.check("bob-app", "bob-secret")
    assert other._verified["bob-app"] != kept


def test_an_unknown_user_costs_a_verification_too(verifications) -> None:
    accounts = Accounts([ALICE, BOB])
    # Even with bob's password: the decoy verification never opens an account.
    assert accounts.check("nobody", "bob-secret") is None
    assert len(verifications) == 1


def test_check_async_verifies_in_a_worker_thread(verifications) -> None:
    accounts = Accounts([BOB])

    async def run() -> None:
        assert await accounts.check_async("bob-app", "wrong") is None
        assert await accounts.check_async("bob-app", "bob-secret") is BOB
        assert await accounts.check_async("bob-app", "bob-secret") is BOB

    anyio.run(run)
    assert [p for p, _ in verifications] == ["wrong", "bob-secret"]
    assert all(thread != threading.get_ident() for _, thread in verifications)
    # What the worker verified, the event loop's own check finds remembered.
    assert accounts.check("bob-app", "bob-secret") is BOB
    assert len(verifications) == 2


def test_a_refusal_found_off_the_loop_is_not_verified_again_on_it(verifications) -> None:
    accounts = Accounts([BOB])

    async def run() -> None:
        assert await accounts.check_async("bob-app", "wrong") is None
        assert await accounts.check_async("nobody", "wrong") is None

    anyio.run(run)
    assert len(verifications) == 2
    assert accounts.check("bob-app", "wrong") is None
    assert accounts.check("nobody", "wrong") is None
    assert len(verifications) == 2
    # The pair is what is remembered: the same password for another user is not.
    assert accounts.check("bob-app", "bob-secret") is BOB
    assert len(verifications) == 3


def test_a_password_with_a_lone_surrogate_is_refused_not_an_error(verifications) -> None:
    # JSON ("\ud800") can carry one into a Bayeux handshake's ext.authentication.
    accounts = Accounts([ALICE, BOB])
    assert accounts.check("alice-app", "alice-secret\ud800") is None
    assert accounts.check("bob-app", "\ud800") is None
    assert accounts.check("nobody", "\ud800") is None
    assert anyio.run(accounts.check_async, "bob-app", "x\udfff") is None
