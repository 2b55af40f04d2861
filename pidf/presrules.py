"""Presence authorization rules (RFC 4745 common policy, RFC 5025 pres-rules).

The adapter stores one rule per watcher, found by a stable id derived from the
watcher's URI, so that changing one watcher's decisions never touches the
others' rules. Rules written by others (several identities, domains,
validity, unknown transformations) are parsed as far as we understand them
and written back byte for byte unless the caller replaces them.

Transformations per presence attribute (RFC 5025 §3.2):

=============  ==========================================================
Activity       provide-activities
Place          provide-place-type and provide-place-is
Privacy        provide-privacy
Sphere         provide-sphere
Communication  provide-services ``<all-services/>`` when granted, else
               ``<class>`` of our status tuple only
Other          provide-unknown-attribute for our extension element
               (``ns`` = EXT_NS, ``name`` = "other")
=============  ==========================================================

So whatever it was granted, a SIP watcher keeps our status tuple and sees
the basic status (pidf.document: the status tuple carries no note).

Booleans are written ``true`` or ``false`` explicitly: RFC 5025 treats a
missing transformation as "not provided", but Kamailio 5.6 keeps elements a
rule does not mention, and an explicit ``false`` makes it strip them.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from lxml import etree

from pidf.document import EXT_NS, STATUS_CLASS
from pidf.errors import RemoteProtocolError, ValidationError
from pidf.model import AttributeType, is_uri
from pidf.parser import parse_document

COMMON_POLICY_NS = "urn:ietf:params:xml:ns:common-policy"
PRES_RULES_NS = "urn:ietf:params:xml:ns:pres-rules"
CONTENT_TYPE = "application/auth-policy+xml"

_CP = f"{{{COMMON_POLICY_NS}}}"
_PR = f"{{{PRES_RULES_NS}}}"
_NSMAP = {"cr": COMMON_POLICY_NS, "pr": PRES_RULES_NS}


class SubHandling(Enum):
    """RFC 5025 §3.2.1, in increasing order of permission."""

    BLOCK = "block"
    CONFIRM = "confirm"
    POLITE_BLOCK = "polite-block"
    ALLOW = "allow"


# The boolean provide-* transformations behind each attribute.
_BOOLEAN_TRANSFORMS: dict[AttributeType, tuple[str, ...]] = {
    AttributeType.ACTIVITY: ("provide-activities",),
    AttributeType.PLACE: ("provide-place-type", "provide-place-is"),
    AttributeType.PRIVACY: ("provide-privacy",),
    AttributeType.SPHERE: ("provide-sphere",),
}
_OTHER_ELEMENT = "other"


def rule_id(watcher: str) -> str:
    """The stable id of the adapter's rule for `watcher` (an xs:ID)."""
    return "w" + hashlib.sha256(watcher.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Rule:
    """One common-policy rule.

    `watchers` are the ``<one id>`` identities; `grants` the attributes its
    transformations provide. `source` holds the rule as it was read, to be
    written back unchanged; rules built here have none.
    """

    id: str
    watchers: tuple[str, ...]
    sub_handling: SubHandling | None
    grants: frozenset[AttributeType]
    source: bytes | None = None

    def decisions(self) -> dict[AttributeType, bool]:
        return {kind: kind in self.grants for kind in AttributeType}


@dataclass(frozen=True, slots=True)
class PresRules:
    """A presentity's ruleset."""

    rules: tuple[Rule, ...] = ()

    # -- building -----------------------------------------------------------

    @classmethod
    def build(
        cls,
        decisions: Mapping[str, Mapping[AttributeType, bool]],
        blocked: Iterable[str] = (),
    ) -> PresRules:
        rules = cls()
        for watcher, granted in decisions.items():
            rules = rules.allow(watcher, granted)
        for watcher in blocked:
            rules = rules.set_handling(watcher, SubHandling.BLOCK)
        return rules

    def allow(self, watcher: str, decisions: Mapping[AttributeType, bool]) -> PresRules:
        """Authorize `watcher` for the attributes decided true, and only those."""
        _check_decisions(decisions)
        grants = frozenset(k for k, granted in decisions.items() if granted)
        return self._put(_own_rule(watcher, SubHandling.ALLOW, grants))

    def decide(self, watcher: str, decisions: Mapping[AttributeType, bool]) -> PresRules:
        """Apply `decisions` attribute by attribute on top of what `watcher` is granted.

        An attribute decided true is added, one decided false withdrawn, the
        others stay as they were.  Nothing left granted: the watcher is
        politely blocked (RFC 5025 §3.2.1: its subscription stays, it learns
        nothing); a blocked one is allowed again by a grant.
        """
        _check_decisions(decisions)
        current = self.decisions_for(watcher)
        current.update(decisions)
        grants = frozenset(kind for kind, granted in current.items() if granted)
        handling = SubHandling.ALLOW if grants else SubHandling.POLITE_BLOCK
        return self._put(_own_rule(watcher, handling, grants))

    def set_handling(self, watcher: str, handling: SubHandling) -> PresRules:
        """Block, polite-block, confirm or allow `watcher`, keeping its grants."""
        current = self.rule_for(watcher)
        grants = current.grants if current is not None else frozenset()
        return self._put(_own_rule(watcher, handling, grants))

    def remove(self, watcher: str) -> PresRules:
        """Drop the adapter's rule for `watcher` (others' rules stay)."""
        wanted = rule_id(watcher)
        return PresRules(tuple(r for r in self.rules if r.id != wanted))

    def _put(self, rule: Rule) -> PresRules:
        rules = list(self.rules)
        for i, existing in enumerate(rules):
            if existing.id == rule.id:
                rules[i] = rule
                return PresRules(tuple(rules))
        return PresRules((*rules, rule))

    # -- reading ------------------------------------------------------------

    def rule_for(self, watcher: str) -> Rule | None:
        """The adapter's rule for `watcher`, else the first rule naming it."""
        wanted = rule_id(watcher)
        for rule in self.rules:
            if rule.id == wanted:
                return rule
        for rule in self.rules:
            if watcher in rule.watchers:
                return rule
        return None

    def decisions_for(self, watcher: str) -> dict[AttributeType, bool]:
        rule = self.rule_for(watcher)
        if rule is None or rule.sub_handling is not SubHandling.ALLOW:
            return {kind: False for kind in AttributeType}
        return rule.decisions()

    def blocked(self) -> tuple[str, ...]:
        return tuple(
            w for r in self.rules if r.sub_handling is SubHandling.BLOCK for w in r.watchers
        )

    # -- XML ------------------------------------------------------------------

    def to_xml(self) -> bytes:
        root = etree.Element(f"{_CP}ruleset", nsmap=_NSMAP)
        for rule in self.rules:
            if rule.source is not None:
                root.append(etree.fromstring(rule.source))
            else:
                root.append(_rule_element(rule))
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

    @classmethod
    def parse(cls, body: bytes) -> PresRules:
        root = parse_document(body)
        if root.tag != f"{_CP}ruleset":
            raise RemoteProtocolError(f"not a common-policy ruleset (root {root.tag!r})")
        rules = []
        for el in root.iterchildren(f"{_CP}rule"):
            rule_el_id = el.get("id")
            if not rule_el_id:
                raise RemoteProtocolError("rule without an id")  # RFC 4745 §7: id is required
            rules.append(_parse_rule(el, rule_el_id))
        return cls(tuple(rules))


def _check_decisions(decisions: Mapping[AttributeType, bool]) -> None:
    for kind, granted in decisions.items():
        if not isinstance(kind, AttributeType) or not isinstance(granted, bool):
            raise ValidationError(f"bad decision {kind!r}: {granted!r}", "decisions")


#: One frozenset per distinct grant: a presentity's document holds a rule per
#: watcher, and the cached documents of many presentities hold as many rules
#: as there are subscriptions, with a handful of distinct grants among them.
_GRANTS: dict[frozenset[AttributeType], frozenset[AttributeType]] = {}


def _interned(grants: frozenset[AttributeType]) -> frozenset[AttributeType]:
    return _GRANTS.setdefault(grants, grants)


def _own_rule(watcher: str, handling: SubHandling, grants: frozenset[AttributeType]) -> Rule:
    if not isinstance(watcher, str) or not is_uri(watcher):
        raise ValidationError(f"watcher {watcher!r} is not a URI", "watcher")
    return Rule(rule_id(watcher), (watcher,), handling, _interned(grants))


def _rule_element(rule: Rule) -> etree._Element:
    el = etree.Element(f"{_CP}rule", id=rule.id)
    conditions = etree.SubElement(el, f"{_CP}conditions")
    identity = etree.SubElement(conditions, f"{_CP}identity")
    for watcher in rule.watchers:
        etree.SubElement(identity, f"{_CP}one", id=watcher)
    actions = etree.SubElement(el, f"{_CP}actions")
    if rule.sub_handling is not None:
        etree.SubElement(actions, f"{_PR}sub-handling").text = rule.sub_handling.value
    transformations = etree.SubElement(el, f"{_CP}transformations")
    if rule.sub_handling is not SubHandling.ALLOW:
        # RFC 4745 §10: with nothing granted, no transformation is needed.
        return el
    # Communication: every tuple, ours and other publishers' (a phone's tuple
    # has no class and often no contact: all-services is the only way to keep
    # it).  Otherwise our status tuple alone, by its class, so that basic
    # status is seen whatever is granted (RFC 5025 §3.2.1).
    services = etree.SubElement(transformations, f"{_PR}provide-services")
    if AttributeType.COMMUNICATION in rule.grants:
        etree.SubElement(services, f"{_PR}all-services")
    else:
        etree.SubElement(services, f"{_PR}class").text = STATUS_CLASS
    for kind, names in _BOOLEAN_TRANSFORMS.items():
        for name in names:
            flag = etree.SubElement(transformations, f"{_PR}{name}")
            flag.text = "true" if kind in rule.grants else "false"
    # RFC 5025 §3.2.10: provide-unknown-attribute names an element outside
    # the attributes the document defines: our Other extension element.
    unknown = etree.SubElement(
        transformations, f"{_PR}provide-unknown-attribute", ns=EXT_NS, name=_OTHER_ELEMENT
    )
    unknown.text = "true" if AttributeType.OTHER in rule.grants else "false"
    return el


def _is_true(el: etree._Element | None) -> bool:
    return el is not None and (el.text or "").strip().lower() in ("true", "1")


def _provides_means(child: etree._Element) -> bool:
    """Whether a provide-services child hands out Communication tuples: all-services,
    or whatever another tool listed (service-uri, -scheme, occurrence-id, a
    class) — anything but our status tuple's class."""
    if not isinstance(child.tag, str):
        return False  # a comment or processing instruction
    if child.tag == f"{_PR}class":
        return (child.text or "").strip() != STATUS_CLASS
    return True


_ONE_PATH = f"{_CP}conditions/{_CP}identity/{_CP}one"
_HANDLING_PATH = f"{_CP}actions/{_PR}sub-handling"
_TRANSFORMATIONS = f"{_CP}transformations"
_SERVICES = f"{_PR}provide-services"
_ALL_ATTRIBUTES = f"{_PR}provide-all-attributes"
_UNKNOWN_ATTRIBUTE = f"{_PR}provide-unknown-attribute"
_BOOLEAN_TAGS = {
    kind: tuple(f"{_PR}{name}" for name in names) for kind, names in _BOOLEAN_TRANSFORMS.items()
}


def _parse_rule(el: etree._Element, rule_el_id: str) -> Rule:
    # Interned: the same watcher's address (and so its rule's id) comes back in
    # the cached documents of every presentity it watches.
    watchers = tuple(
        sys.intern(str(one.get("id")))
        for one in el.iterfind(_ONE_PATH)
        if one.get("id")
    )
    handling_el = el.find(_HANDLING_PATH)
    handling: SubHandling | None = None
    if handling_el is not None:
        try:
            handling = SubHandling((handling_el.text or "").strip())
        except ValueError:
            raise RemoteProtocolError(f"unknown sub-handling {handling_el.text!r}") from None
    grants: set[AttributeType] = set()
    transformations = el.find(_TRANSFORMATIONS)
    if transformations is not None:
        # One walk over the transformations (a document holds a rule per
        # watcher, read again and again): the first of each kind counts.
        first: dict[str, etree._Element] = {}
        unknowns = []
        for child in transformations:
            tag = child.tag
            if tag == _UNKNOWN_ATTRIBUTE:
                unknowns.append(child)
            elif isinstance(tag, str) and tag not in first:
                first[tag] = child
        services = first.get(_SERVICES)
        if services is not None and any(_provides_means(child) for child in services):
            grants.add(AttributeType.COMMUNICATION)
        for kind, tags in _BOOLEAN_TAGS.items():
            # Place is granted when either of its two elements is provided.
            if any(_is_true(first.get(tag)) for tag in tags):
                grants.add(kind)
        # RFC 5025 §3.2.11: provide-all-attributes is an empty element.
        if _ALL_ATTRIBUTES in first:
            grants.update(_BOOLEAN_TRANSFORMS)
            grants.add(AttributeType.OTHER)
        for unknown in unknowns:
            if unknown.get("ns") == EXT_NS and unknown.get("name") == _OTHER_ELEMENT:
                if _is_true(unknown):
                    grants.add(AttributeType.OTHER)
    own = len(watchers) == 1 and rule_el_id == rule_id(watchers[0])
    return Rule(
        id=sys.intern(rule_el_id),
        watchers=watchers,
        sub_handling=handling,
        grants=_interned(frozenset(grants)),
        # Our own rules are re-generated; everyone else's are kept verbatim.
        source=None if own else etree.tostring(el),
    )


__all__ = ["PresRules", "Rule", "SubHandling", "rule_id"]
