"""Watches as the store keeps them: records of plain JSON values.

A record keeps what the application asked for and what it was told (the
decisions sent), so that a restart neither loses a watch nor repeats a
notifySubscription.  What the SIP subscription was (dialog, presence state)
is not kept: the watch is subscribed afresh.  A group watch keeps that it is
one (it is subscribed again as a list) and, per member, the decisions and
what was told of them.  Schedules have their records
beside their machine (:mod:`adapter.notification`).
"""

from __future__ import annotations

import json
from typing import Any

from adapter.notification import Schedule
from adapter.watch import Reference, Watch, WatchState
from pidf import AttributeType

__all__ = [
    "SCHEDULE",
    "WATCH",
    "schedule_key",
    "schedule_lease",
    "watch_from_record",
    "watch_key",
    "watch_to_record",
]

WATCH = "watch"  # store kinds
SCHEDULE = "schedule"


def watch_key(watch: Watch) -> str:
    return json.dumps(watch.key)


def schedule_key(schedule: Schedule) -> str:
    return json.dumps((schedule.app_id, schedule.correlator))


def schedule_lease(schedule: Schedule) -> tuple[str, str]:
    """The work a schedule is part of, its watch's record: a node of a cluster
    writes the schedule under that watch's lease (adapter.store.postgres)."""
    return WATCH, json.dumps((schedule.watcher, schedule.presentity))


def watch_to_record(watch: Watch) -> dict[str, Any]:
    reference = None
    if watch.reference is not None:
        reference = {
            "correlator": watch.reference.correlator,
            "endpoint": watch.reference.endpoint,
            "interfaceName": watch.reference.interface_name,
        }
    record = _decisions_record(watch)
    record.update({
        "watcher": watch.watcher,
        "presentity": watch.presentity,
        "app_id": watch.app_id,
        "application": watch.application,
        "attributes": sorted(kind.value for kind in watch.attributes),
        "reference": reference,
        "blocked": watch.state is WatchState.BLOCKED,
    })
    if watch.is_list:
        record["list"] = True
        record["members"] = {
            uri: _decisions_record(member) for uri, member in watch.listed.items()
        }
    return record


def _decisions_record(watch: Watch) -> dict[str, Any]:
    return {
        "decisions": (
            None if watch.decisions is None
            else {kind.value: granted for kind, granted in watch.decisions.items()}
        ),
        "decisions_sent": (
            None if watch.decisions_sent is None
            else [[kind.value, granted] for kind, granted in watch.decisions_sent]
        ),
    }


def _decisions_from_record(
    record: dict[str, Any],
) -> tuple[dict[AttributeType, bool] | None, tuple[tuple[AttributeType, bool], ...] | None]:
    decisions = None
    if record.get("decisions") is not None:
        decisions = {AttributeType(k): bool(v) for k, v in record["decisions"].items()}
    sent = None
    if record.get("decisions_sent") is not None:
        sent = tuple((AttributeType(k), bool(v)) for k, v in record["decisions_sent"])
    return decisions, sent


def watch_from_record(record: dict[str, Any]) -> Watch:
    reference = None
    if record.get("reference"):
        ref = record["reference"]
        reference = Reference(ref["correlator"], ref["endpoint"], ref.get("interfaceName", ""))
    decisions, sent = _decisions_from_record(record)
    watch = Watch(
        watcher=record["watcher"],
        presentity=record["presentity"],
        app_id=record["app_id"],
        application=record.get("application", ""),
        attributes=frozenset(AttributeType(k) for k in record.get("attributes", [])),
        reference=reference,
        state=WatchState.BLOCKED if record.get("blocked") else WatchState.PENDING,
        decisions=decisions,
        decisions_sent=sent,
        is_list=bool(record.get("list")),
    )
    for uri, member_record in (record.get("members") or {}).items():
        member = watch.member_of(str(uri))
        member.decisions, member.decisions_sent = _decisions_from_record(member_record)
    return watch
