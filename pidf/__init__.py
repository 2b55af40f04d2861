"""Presence documents: PIDF/RPID ⇄ the REST presence model, watcherinfo, pres-rules.

No I/O and no clock: bytes and `now` in, values and bytes out.
"""

from pidf.document import Presence, decode, encode, validate_publication
from pidf.errors import PidfError, RemoteProtocolError, ValidationError
from pidf.model import (
    Activity,
    AttributeType,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    Place,
    PresenceAttribute,
    Privacy,
    Sphere,
    Value,
    format_instant,
    parse_instant,
)
from pidf.parser import parse_document
from pidf.presrules import PresRules, Rule, SubHandling, rule_id
from pidf.privacy import filter_attributes, filter_presence
from pidf.watcherinfo import (
    Outcome,
    Watcher,
    WatcherInfo,
    WatcherInfoState,
    WatcherList,
    WatcherStatus,
)

__all__ = [
    "Activity",
    "AttributeType",
    "Communication",
    "CommunicationMeans",
    "MeansType",
    "Other",
    "Outcome",
    "PidfError",
    "Place",
    "PresRules",
    "Presence",
    "PresenceAttribute",
    "Privacy",
    "RemoteProtocolError",
    "Rule",
    "Sphere",
    "SubHandling",
    "ValidationError",
    "Value",
    "Watcher",
    "WatcherInfo",
    "WatcherInfoState",
    "WatcherList",
    "WatcherStatus",
    "decode",
    "encode",
    "filter_attributes",
    "filter_presence",
    "format_instant",
    "parse_document",
    "parse_instant",
    "rule_id",
    "validate_publication",
]
