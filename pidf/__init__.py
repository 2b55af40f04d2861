"""Presence documents: PIDF/RPID ⇄ the REST presence model, watcherinfo, pres-rules.

No I/O and no clock: bytes and `now` in, values and bytes out.
"""

from pidf import model
from pidf.document import Presence, decode, encode, validate_publication
from pidf.errors import PidfError, RemoteProtocolError, ValidationError

# The model's names are listed once, in pidf.model.__all__.
from pidf.model import *  # noqa: F403
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
    *model.__all__,
    "Outcome",
    "PidfError",
    "PresRules",
    "Presence",
    "RemoteProtocolError",
    "Rule",
    "SubHandling",
    "ValidationError",
    "Watcher",
    "WatcherInfo",
    "WatcherInfoState",
    "WatcherList",
    "WatcherStatus",
    "decode",
    "encode",
    "filter_attributes",
    "filter_presence",
    "parse_document",
    "rule_id",
    "validate_publication",
]
