"""Store schema versions: which migrations bring an older store up to date.

Each backend numbers its own schema (their SQL differs) and keeps, for every
version it has left behind, the statements that turn a store of that version
into one of the next.  Opening a store then:

* a new, empty store is created at the current version directly;
* an older one is migrated: all its steps in one transaction together with
  the new version number, so that a crash half-way leaves the store as it
  was, at its old version, with everything in it (SQLite also keeps a copy of
  the file as it was: an older adapter can be put back on it);
* a newer one is refused with one line: an adapter must not write a store
  whose shape it does not know, nor read what it cannot understand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapter.store.interface import StoreError

__all__ = ["Migrations", "steps"]

#: Version -> the statements that migrate a store of that version to the next.
Migrations = Mapping[int, Sequence[str]]


def steps(where: str, found: int, current: int, migrations: Migrations) -> list[str]:
    """The statements that bring a store of version ``found`` to ``current``, in order.

    Raises StoreError (one line naming ``where``) for a newer store, or one no
    migration path starts from.
    """
    if found > current:
        raise StoreError(
            f"{where}: store schema version {found} is newer than {current}, the newest this "
            f"adapter supports; run the adapter version that wrote it, or a newer one"
        )
    if found < 1 or any(version not in migrations for version in range(found, current)):
        raise StoreError(f"{where}: store schema version {found} cannot be migrated to {current}")
    return [sql for version in range(found, current) for sql in migrations[version]]
