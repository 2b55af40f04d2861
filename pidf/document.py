"""Presence attributes ⇄ PIDF documents (RFC 3863, RFC 4479, RFC 4480, RFC 5196).

Encoding follows the table in README.md ("Presence document mapping"): person-level attributes
(Activity, Place, Privacy, Sphere, Other) become RPID elements — or our
extension elements where RPID has no token — inside one ``dm:person``; each
Communication means becomes one ``tuple`` with ``contact``/``priority`` and the
means type expressed as service capabilities. Every element carries its own
``lastChange`` (RPID ``from`` attribute, PIDF ``timestamp``) and note, so the
presence server can aggregate several publications and we can still take each
attribute from the newest one.

Decoding is lenient about content and strict about form: unknown elements and
foreign extensions are skipped, an unusable value (a bad timestamp, a contact
that is not a URI) drops only that value, but a document that is not
well-formed PIDF raises `RemoteProtocolError`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from pidf.errors import RemoteProtocolError, ValidationError
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
    format_instant,
    is_uri,
    normalise_instant,
    parse_instant,
)
from pidf.parser import parse_document

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DM_NS = "urn:ietf:params:xml:ns:pidf:data-model"
RPID_NS = "urn:ietf:params:xml:ns:pidf:rpid"
LT_NS = "urn:ietf:params:xml:ns:location-type"
CAPS_NS = "urn:ietf:params:xml:ns:pidf:caps"
#: Our extension namespace, for values the standards have no element for.
EXT_NS = "urn:presence-adapter:xml:ns:pidf-ext"

CONTENT_TYPE = "application/pidf+xml"

#: RPID class (RFC 4480 §3.2) of our status tuple, by which a presence rule
#: hands it out (RFC 5025 §3.2.1 provide-services ``<class>``) to a watcher
#: not granted Communication: the basic status every authorised watcher sees.
STATUS_CLASS = "pa-status"

_NSMAP = {None: PIDF_NS, "dm": DM_NS, "rpid": RPID_NS, "lt": LT_NS, "caps": CAPS_NS, "pa": EXT_NS}


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


# -- the mapping tables (README.md "Presence document mapping" is their prose form) -----------

# RFC 4480 §3.2 activity tokens. DoNotDisturb, ActivityOther and Available have
# none; they are handled in _activity_children().
ACTIVITY_TOKENS: dict[Activity, str] = {
    Activity.ACTIVITY_NONE: "unknown",
    Activity.BUSY: "busy",
    Activity.ON_THE_PHONE: "on-the-phone",
    Activity.STEERING: "steering",
    Activity.MEETING: "meeting",
    Activity.AWAY: "away",
    Activity.MEAL: "meal",
    Activity.PERMANENT_ABSENCE: "permanent-absence",
    Activity.HOLIDAY: "holiday",
    Activity.PERFORMANCE: "performance",
    Activity.IN_TRANSIT: "in-transit",
    Activity.TRAVEL: "travel",
    Activity.SLEEPING: "sleeping",
}

# Tokens other clients publish that have a close relative in the spec's list.
_ACTIVITY_ALIASES: dict[str, Activity] = {
    "appointment": Activity.MEETING,
    "breakfast": Activity.MEAL,
    "lunch": Activity.MEAL,
    "dinner": Activity.MEAL,
    "vacation": Activity.HOLIDAY,
    "presentation": Activity.PERFORMANCE,
}
_ACTIVITY_BY_TOKEN = {token: activity for activity, token in ACTIVITY_TOKENS.items()}

#: Text of the rpid:other activity that means DoNotDisturb (compared after
#: lower-casing and dropping spaces, hyphens and underscores).
DND_TEXT = "do-not-disturb"
_DND_FORMS = {"donotdisturb", "dnd"}

# RFC 4589 location types for rpid:place-type (RFC 4480 §3.5).
PLACE_TOKENS: dict[Place, str] = {
    Place.PLACE_NONE: "unknown",
    Place.HOME: "residence",
    Place.OFFICE: "office",
    Place.PUBLIC_TRANSPORT: "public-transport",
    Place.STREET: "street",
    Place.OUTDOORS: "outdoors",
    Place.PUBLIC_PLACE: "public",
    Place.HOTEL: "hotel",
    Place.THEATRE: "theater",
    Place.RESTAURANT: "restaurant",
    Place.SCHOOL: "school",
    Place.INDUSTRIAL: "industrial",
    Place.AIRCRAFT: "aircraft",
    Place.SHIP: "watercraft",
    Place.BUS: "bus",
    Place.STATION: "train-station",
    Place.MALL: "shopping-area",
    Place.AIRPORT: "airport",
    Place.TRAIN: "train",
}
_PLACE_BY_TOKEN = {token: place for place, token in PLACE_TOKENS.items()}
_PLACE_BY_TOKEN.update(
    {
        "bus-station": Place.STATION,
        "classroom": Place.SCHOOL,
        "home": Place.HOME,  # pre-RFC 4589 RPID drafts had rpid:home
    }
)
# RFC 4480 §3.4 place-is audio values that are Place values of the spec.
PLACE_IS_AUDIO: dict[Place, str] = {Place.QUIET: "quiet", Place.NOISY: "noisy"}

# RFC 4480 §3.6: privacy lists the media third parties are unlikely to overhear.
PRIVACY_MEDIA: dict[Privacy, frozenset[str]] = {
    Privacy.PRIVACY_PUBLIC: frozenset(),
    Privacy.PRIVACY_QUIET: frozenset({"text"}),
    Privacy.PRIVACY_PRIVATE: frozenset({"audio", "text", "video"}),
}

SPHERE_TOKENS: dict[Sphere, str] = {
    Sphere.SPHERE_NONE: "unknown",
    Sphere.SPHERE_WORK: "work",
    Sphere.SPHERE_HOME: "home",
}
#: Text content of rpid:sphere for SphereOther (RFC 4480 §3.7 allows free text).
SPHERE_OTHER_TEXT = "other"

# Means types as RFC 5196 service capabilities: (boolean caps, MIME types).
MEANS_CAPS: dict[MeansType, tuple[tuple[str, ...], tuple[str, ...]]] = {
    MeansType.PHONE: (("audio",), ()),
    MeansType.VIDEO: (("audio", "video"), ()),
    MeansType.CHAT: (("message",), ()),
    MeansType.SMS: (("message",), ("application/vnd.3gpp.sms",)),
    MeansType.MMS: (("message",), ("application/vnd.wap.mms-message",)),
    MeansType.EMAIL: ((), ("message/rfc822",)),
    MeansType.WEB: ((), ("text/html",)),
    MeansType.MEANS_OTHER: ((), ()),
}
_MEANS_BY_MIME = {mime: means for means, (_caps, mimes) in MEANS_CAPS.items() for mime in mimes}
# Without service capabilities (e.g. what PJSIP publishes), guess from the scheme.
_MEANS_BY_SCHEME: dict[str, MeansType] = {
    "sip": MeansType.PHONE,
    "sips": MeansType.PHONE,
    "tel": MeansType.PHONE,
    "im": MeansType.CHAT,
    "xmpp": MeansType.CHAT,
    "sms": MeansType.SMS,
    "mms": MeansType.MMS,
    "mailto": MeansType.EMAIL,
    "http": MeansType.WEB,
    "https": MeansType.WEB,
}
#: The tuple id of the body Kamailio's presence_xml sends for a presentity with
#: no publication when ``force_dummy_presence`` is on (PRESENCE_EMPTY_BODY in
#: its notify_body.c; tests/data/pidf/kamailio-dummy.xml).
KAMAILIO_DUMMY_TUPLE = "615293b33c62dec073e05d9421e9f48b"
#: Priority given to a foreign tuple whose contact has none.
DEFAULT_PRIORITY = 1.0


@dataclass(frozen=True)
class Presence:
    """A decoded presence document."""

    entity: str | None
    attributes: tuple[PresenceAttribute, ...]
    #: Some tuple has basic status "open" (RFC 3863 §4.1.4).
    open: bool

    def get(self, kind: AttributeType) -> PresenceAttribute | None:
        for attribute in self.attributes:
            if attribute.type is kind:
                return attribute
        return None


# -- encode ------------------------------------------------------------------


def validate_publication(attributes: Iterable[PresenceAttribute]) -> tuple[PresenceAttribute, ...]:
    """Check that a set of attributes can be one publication.

    At most one attribute of each type, except Other, of which there may be one
    per name: two values for the same thing in one document would leave the
    watcher to guess.
    """
    out = tuple(attributes)
    seen: set[object] = set()
    for i, attribute in enumerate(out):
        if not isinstance(attribute, PresenceAttribute):
            raise ValidationError(f"{attribute!r} is not a presence attribute", f"presence[{i}]")
        key: object = attribute.type
        if isinstance(attribute.value, Other):
            key = (AttributeType.OTHER, attribute.value.name)
        if key in seen:
            what = attribute.type.value
            if isinstance(attribute.value, Other):
                what += f" named {attribute.value.name!r}"
            raise ValidationError(f"more than one {what} attribute", f"presence[{i}]")
        seen.add(key)
    return out


def encode(
    attributes: Iterable[PresenceAttribute],
    *,
    entity: str,
    now: datetime,
    tag: str | None = None,
) -> bytes:
    """Build the PIDF body of a PUBLISH.

    `now` becomes the lastChange of attributes that have none. `tag` makes the
    tuple and person ids of this publication; it defaults to a digest of the
    content. Ids must differ between publications of one presentity because
    Kamailio's aggregation drops a whole document whose first tuple id is
    already present.

    The document is the serialisation of the lxml tree :func:`_document`
    builds; a publication of a shape already seen (the same attribute values
    and enumerations, notes present or not, the same means) is made from a
    cached template of that serialisation, the same bytes at a fraction of
    the cost (:class:`_Template`).
    """
    if not isinstance(entity, str) or not is_uri(entity):
        raise ValidationError(f"entity {entity!r} is not a URI", "presentity")
    now = normalise_instant(now)
    items = tuple(
        a if a.last_change is not None else PresenceAttribute(a.value, now, a.note)
        for a in validate_publication(attributes)
    )
    shape = tuple(_shape(a) for a in items)
    template = _TEMPLATES.get(shape)
    if template is None:
        template = _Template(items)
        if len(_TEMPLATES) < _MAX_TEMPLATES:
            _TEMPLATES[shape] = template
    strings = _Strings(items, entity)
    values = template.strings(strings)
    if tag is None:
        tag = template.digest(values)
    prefix = "pa" + "".join(c for c in tag if c.isalnum() or c in "-_.")
    body = template.fill(values, prefix)
    if body is None:  # a string XML cannot carry: lxml says so, as it always did
        strings.prefix = prefix
        body = _serialise(_document(items, strings))
    return body


# -- the variable strings of a document, and templates ------------------------------

#: Where a document's variable string comes from: (item index, or -1 for the
#: document itself; what; which means of a Communication).
_Slot = tuple[int, str, int]

#: Templates by publication shape (:func:`_shape`); bounded, as shapes come
#: from requests.
_TEMPLATES: dict[tuple[object, ...], _Template] = {}
_MAX_TEMPLATES = 4096


def _shape(attribute: PresenceAttribute) -> object:
    """What decides the elements of an attribute's part of the document."""
    value = attribute.value
    noted = attribute.note is not None
    if isinstance(value, Communication):
        return (Communication, tuple(means.type for means in value.means), noted)
    if isinstance(value, Other):
        return (Other, noted)
    # The enumeration's class too: the members are str enums, equal to their text.
    return (type(value), value, noted)


class _Strings:
    """A publication's variable strings, asked for by slot."""

    def __init__(self, items: tuple[PresenceAttribute, ...], entity: str) -> None:
        self.items = items
        self.entity = entity
        self.prefix = ""
        self._times: dict[int, str] = {}

    def __call__(self, item: int, what: str, means: int = 0, attribute: bool = False) -> str:
        if item < 0:
            return self.entity if what == "entity" else self.prefix
        a = self.items[item]
        if what == "time":
            # Asked for twice for an Activity (its "from" and its tuple's timestamp).
            text = self._times.get(item)
            if text is None:
                assert a.last_change is not None
                text = self._times[item] = format_instant(a.last_change)
            return text
        if what == "note":
            assert a.note is not None
            return a.note
        value = a.value
        if isinstance(value, Communication):
            if what == "contact":
                return value.means[means].contact
            return _format_priority(value.means[means].priority)
        assert isinstance(value, Other)
        return value.name if what == "name" else value.value


#: Stands for slot n while a template is made: private-use characters, which
#: lxml writes as they are and no fixed part of a document contains.
_MARK = re.compile("\ue000([0-9]+)\ue001".encode())
_PREFIX: _Slot = (-1, "prefix", 0)


class _Template:
    """The serialised document of one publication shape, cut at its variable strings.

    Made once per shape by building the document with a mark in place of
    every variable string; filled by escaping each string as libxml2 does
    in text or in an attribute value (XML 1.0 §2.4, §3.3.3: ``&`` and ``<``
    always, ``>`` as libxml2 does; in attributes also the quote and the
    white space that normalisation would turn into spaces).
    """

    def __init__(self, items: tuple[PresenceAttribute, ...]) -> None:
        slots: list[tuple[_Slot, bool]] = []

        def mark(item: int, what: str, means: int = 0, attribute: bool = False) -> str:
            slots.append(((item, what, means), attribute))
            return f"\ue000{len(slots) - 1}\ue001"

        pieces = _MARK.split(_serialise(_document(items, mark)))
        self.fixed: tuple[bytes, ...] = tuple(pieces[0::2])
        order = [int(n) for n in pieces[1::2]]
        self.slots: tuple[_Slot, ...] = tuple(slots[n][0] for n in order)
        self.escapes = tuple(
            _ATTRIBUTE_ESCAPES if slots[n][1] else _TEXT_ESCAPES for n in order
        )
        # The fixed parts name every element and token: the digest of a
        # publication is this one's, continued with its strings.
        self._digest = hashlib.sha256(b"\0".join(self.fixed))

    def strings(self, source: _Strings) -> list[str]:
        """The strings of a publication, slot by slot (the ids' prefix left empty)."""
        return [source(*slot) for slot in self.slots]

    def digest(self, values: list[str]) -> str:
        """The default tag: a digest of the shape and the strings (but the ids)."""
        digest = self._digest.copy()
        digest.update("\0".join(values).encode())
        return digest.hexdigest()[:12]

    def fill(self, values: list[str], prefix: str) -> bytes | None:
        """The document; None if a string is not XML text."""
        out = [self.fixed[0]]
        for slot, text, escapes, fixed in zip(
            self.slots, values, self.escapes, self.fixed[1:], strict=True
        ):
            if slot == _PREFIX:
                text = prefix
            elif _NOT_XML_CHAR.search(text):
                return None
            out.append(_escape(text, escapes))
            out.append(fixed)
        return b"".join(out)


# XML 1.0 §2.2 Char (as pidf.model checks notes and values).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}
_ATTRIBUTE_ESCAPES = {
    **_TEXT_ESCAPES, '"': "&quot;", "\n": "&#10;", "\t": "&#9;",
}
_NEEDS_ESCAPE = re.compile('[&<>"\r\n\t]')


def _escape(text: str, escapes: dict[str, str]) -> bytes:
    if _NEEDS_ESCAPE.search(text):
        text = "".join(escapes.get(c, c) for c in text)
    return text.encode()


def _serialise(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# -- the document ---------------------------------------------------------------------

#: Gives the variable string of a slot: (item, what, means, attribute?) -> text.
_StringSource = Callable[..., str]


def _document(items: tuple[PresenceAttribute, ...], text: _StringSource) -> etree._Element:
    prefix = text(-1, "prefix", attribute=True)
    root = etree.Element(_q(PIDF_NS, "presence"), nsmap=_NSMAP)  # type: ignore[arg-type]
    root.set("entity", text(-1, "entity", attribute=True))
    person_children: list[etree._Element] = []
    means_tuples: list[etree._Element] = []
    activity: int | None = None
    for n, attribute in enumerate(items):
        value = attribute.value
        if isinstance(value, Communication):
            for i, means in enumerate(value.means):
                means_tuples.append(_means_tuple(f"{prefix}-m{i}", means, attribute, n, i, text))
        else:
            person_children.append(_person_element(attribute, n, text))
            if isinstance(value, Activity):
                activity = n
    if items:
        # Ordinary clients take availability from the first tuple's basic
        # status (RFC 3863 §4.1.4): the status tuple comes first, with the
        # class every allow rule provides.  It carries no note: a tuple is
        # handed out whole, and the Activity note (in rpid:activities, where
        # clients read it) must reach only those granted Activity.
        basic = "open"
        if activity is not None and items[activity].value is Activity.PERMANENT_ABSENCE:
            basic = "closed"
        status = etree.SubElement(root, _q(PIDF_NS, "tuple"), id=f"{prefix}-s")
        _basic(status, basic)
        etree.SubElement(status, _q(RPID_NS, "class")).text = STATUS_CLASS
    # Kamailio's provide-services walk stops at the first sibling that is not
    # a tuple: every tuple before the person.
    root.extend(means_tuples)
    if person_children:
        person = etree.SubElement(root, _q(DM_NS, "person"), id=f"{prefix}-p")
        person.extend(person_children)
    return root


def _basic(tuple_el: etree._Element, value: str) -> None:
    status = etree.SubElement(tuple_el, _q(PIDF_NS, "status"))
    etree.SubElement(status, _q(PIDF_NS, "basic")).text = value


def _format_priority(priority: float) -> str:
    # RFC 3863 §4.1.5: qvalue, at most three decimals (checked by the model).
    return f"{priority:.3f}".rstrip("0").rstrip(".")


def _means_tuple(
    tuple_id: str,
    means: CommunicationMeans,
    attribute: PresenceAttribute,
    n: int,
    i: int,
    text: _StringSource,
) -> etree._Element:
    el = etree.Element(_q(PIDF_NS, "tuple"), id=tuple_id)
    _basic(el, "open")
    # RFC 3863 §4.1: extension elements (servcaps) sit between status and contact.
    caps = etree.SubElement(el, _q(CAPS_NS, "servcaps"))
    booleans, mimes = MEANS_CAPS[means.type]
    # RFC 5196 §5 lists the servcaps children in alphabetical order.
    for name in sorted([*booleans, *(("type",) if mimes else ())]):
        if name == "type":
            type_el = etree.SubElement(caps, _q(CAPS_NS, "type"))
            supported = etree.SubElement(type_el, _q(CAPS_NS, "supported"))
            for mime in mimes:
                etree.SubElement(supported, _q(CAPS_NS, "type")).text = mime
        else:
            etree.SubElement(caps, _q(CAPS_NS, name)).text = "true"
    contact = etree.SubElement(el, _q(PIDF_NS, "contact"))
    contact.set("priority", text(n, "priority", i, attribute=True))
    contact.text = text(n, "contact", i)
    if attribute.note is not None:
        etree.SubElement(el, _q(PIDF_NS, "note")).text = text(n, "note")
    etree.SubElement(el, _q(PIDF_NS, "timestamp")).text = text(n, "time")
    return el


def _person_element(attribute: PresenceAttribute, n: int, text: _StringSource) -> etree._Element:
    value = attribute.value
    note_ns = RPID_NS
    if isinstance(value, Activity):
        el = etree.Element(_q(RPID_NS, "activities"))
    elif isinstance(value, Place):
        el = etree.Element(_q(RPID_NS, "place-is" if value in PLACE_IS_AUDIO else "place-type"))
    elif isinstance(value, Privacy):
        el = etree.Element(_q(RPID_NS, "privacy"))
    elif isinstance(value, Sphere):
        el = etree.Element(_q(RPID_NS, "sphere"))
    else:
        assert isinstance(value, Other)
        el = etree.Element(_q(EXT_NS, "other"))
        note_ns = EXT_NS
    # RFC 4480 §2: "from" is the time the value became valid.
    el.set("from", text(n, "time", attribute=True))
    if attribute.note is not None:
        # RFC 4480 schema: notes come first inside every RPID element.
        etree.SubElement(el, _q(note_ns, "note")).text = text(n, "note")
    if isinstance(value, Activity):
        _activity_children(el, value)
    elif isinstance(value, Place):
        if value in PLACE_IS_AUDIO:
            audio = etree.SubElement(el, _q(RPID_NS, "audio"))
            etree.SubElement(audio, _q(RPID_NS, PLACE_IS_AUDIO[value]))
        elif value is Place.PLACE_OTHER:
            etree.SubElement(el, _q(RPID_NS, "other"))
        else:
            etree.SubElement(el, _q(LT_NS, PLACE_TOKENS[value]))
    elif isinstance(value, Privacy):
        if value is Privacy.PRIVACY_NONE:
            etree.SubElement(el, _q(RPID_NS, "unknown"))
        elif value is Privacy.PRIVACY_OTHER:
            etree.SubElement(el, _q(EXT_NS, "privacy-other"))
        else:
            for medium in sorted(PRIVACY_MEDIA[value]):
                etree.SubElement(el, _q(RPID_NS, medium))
    elif isinstance(value, Sphere):
        if value is Sphere.SPHERE_OTHER:
            # Text content after a note would be mixed content; sphere is
            # declared mixed in RFC 4480, and the note (if any) precedes it.
            if len(el):
                el[-1].tail = SPHERE_OTHER_TEXT
            else:
                el.text = SPHERE_OTHER_TEXT
        else:
            etree.SubElement(el, _q(RPID_NS, SPHERE_TOKENS[value]))
    else:
        assert isinstance(value, Other)
        etree.SubElement(el, _q(EXT_NS, "name")).text = text(n, "name")
        etree.SubElement(el, _q(EXT_NS, "value")).text = text(n, "value")
    return el


def _activity_children(el: etree._Element, value: Activity) -> None:
    if value is Activity.AVAILABLE:
        # RPID has no "available": ordinary clients read availability from the
        # basic status. Our element keeps the attribute (and its lastChange
        # and note) inside rpid:activities, where provide-activities governs it.
        etree.SubElement(el, _q(EXT_NS, "available"))
    elif value is Activity.DO_NOT_DISTURB:
        # busy first so that clients that stop at the first token show "busy".
        etree.SubElement(el, _q(RPID_NS, "busy"))
        etree.SubElement(el, _q(RPID_NS, "other")).text = DND_TEXT
    elif value is Activity.ACTIVITY_OTHER:
        etree.SubElement(el, _q(RPID_NS, "other"))
    else:
        etree.SubElement(el, _q(RPID_NS, ACTIVITY_TOKENS[value]))


# -- decode ------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    attribute: PresenceAttribute
    order: int

    def key(self) -> tuple[datetime, int]:
        # Newest wins; without a timestamp a value ranks below every dated
        # one; on a tie the first in document order wins.
        ts = self.attribute.last_change or datetime.min.replace(tzinfo=UTC)
        return (ts, -self.order)


def _newest(candidates: list[_Candidate]) -> PresenceAttribute | None:
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0].attribute
    return max(candidates, key=_Candidate.key).attribute


def decode(body: bytes) -> Presence:
    """Decode any PIDF document into presence attributes.

    Several persons and tuples (an aggregate of several publishers) are merged:
    for each attribute the newest value wins; Communication is the union of
    the open tuples that have a contact, one means per contact and type.
    """
    root = parse_document(body)
    if _local(root) != "presence" or _ns(root) not in (PIDF_NS, None):
        raise RemoteProtocolError(f"not a PIDF document (root element {root.tag!r})")
    pidf_ns = _ns(root)
    entity = root.get("entity")

    found: dict[AttributeType, list[_Candidate]] = {kind: [] for kind in _KINDS}
    others: dict[str, list[_Candidate]] = {}
    # lxml picks out the elements that carry attributes (in C, in document
    # order) instead of every element being looked at here: most of a
    # document is tuples, statuses, notes and timestamps.  ``order`` only
    # ranks candidates among themselves (first in document order wins a tie).
    for order, el in enumerate(root.iter(*_PERSON_VALUE_TAGS)):
        decoded: PresenceAttribute | None
        if el.tag == _EXT_OTHER:
            other = _decode_other(el)
            if other is not None:
                decoded = _decode_person_value(el, other, note_ns=EXT_NS)
                if decoded is not None:
                    others.setdefault(other.name, []).append(_Candidate(decoded, order))
            continue
        decoded = _decode_person_value(el, _PERSON_VALUE_DECODERS[el.tag](el))
        if decoded is not None:
            found[decoded.type].append(_Candidate(decoded, order))

    tuples = [t for t in root if _ns(t) == pidf_ns and _local(t) == "tuple"]
    if [t.get("id") for t in tuples] == [KAMAILIO_DUMMY_TUPLE]:
        # The placeholder Kamailio sends (force_dummy_presence) while nobody
        # publishes: its "open" and "Available" stand for no information.
        return Presence(entity=entity, attributes=(), open=False)
    statuses = [_basic_status(t, pidf_ns) for t in tuples]
    is_open = any(s == "open" for s in statuses)

    attributes: list[PresenceAttribute] = []
    for kind in _PERSON_KINDS:
        chosen = _newest(found[kind])
        if chosen is None and kind is AttributeType.ACTIVITY:
            chosen = _infer_available(tuples, statuses, pidf_ns)
        if chosen is not None:
            attributes.append(chosen)
    communication = _decode_communication(tuples, statuses, pidf_ns)
    if communication is not None:
        attributes.append(communication)
    for candidates in others.values():
        chosen = _newest(candidates)
        assert chosen is not None
        attributes.append(chosen)
    return Presence(entity=entity, attributes=tuple(attributes), open=is_open)


_KINDS = tuple(AttributeType)
_PERSON_KINDS = (
    AttributeType.ACTIVITY,
    AttributeType.PLACE,
    AttributeType.PRIVACY,
    AttributeType.SPHERE,
)


def _ns(el: etree._Element) -> str | None:
    tag = el.tag
    if isinstance(tag, str) and tag.startswith("{"):
        return tag[1:].split("}", 1)[0]
    return None


def _local(el: etree._Element) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _child(el: etree._Element, ns: str | None, name: str) -> etree._Element | None:
    # One comparison with the Clark name, not a split of every child's tag.
    wanted = name if ns is None else f"{{{ns}}}{name}"
    for child in el:
        if child.tag == wanted:
            return child
    return None


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return el.text or ""


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValidationError:
        # One publisher's bad clock must not hide everybody's presence.
        return None


def _enclosing_timestamp(el: etree._Element) -> datetime | None:
    """The timestamp of the person/tuple/device holding `el` (RFC 4479 §4)."""
    parent = el.getparent()
    while parent is not None:
        for child in parent:
            if _local(child) == "timestamp" and _ns(child) in (DM_NS, PIDF_NS, None):
                return _instant(_text(child))
        parent = parent.getparent()
    return None


def _decode_person_value(
    el: etree._Element,
    value: Activity | Place | Privacy | Sphere | Other | None,
    note_ns: str = RPID_NS,
) -> PresenceAttribute | None:
    if value is None:
        return None
    since = el.get("from")
    last_change = _instant(since) if since is not None else _enclosing_timestamp(el)
    note = _text(_child(el, note_ns, "note"))
    if note is None and isinstance(value, Activity):
        # Many clients put the activity's text in the person's dm:note.
        parent = el.getparent()
        if parent is not None and _local(parent) == "person":
            note = _text(_child(parent, DM_NS, "note"))
    try:
        return PresenceAttribute(value=value, last_change=last_change, note=note)
    except ValidationError:
        return None


def _value_children(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str) and _local(c) != "note"]


def _decode_activity(el: etree._Element) -> Activity | None:
    children = _value_children(el)
    if not children:
        # An empty <rpid:activities/> says nothing.
        return None
    for child in children:
        if _ns(child) == RPID_NS and _local(child) == "other":
            squeezed = "".join(ch for ch in (child.text or "").lower() if ch not in " -_")
            if squeezed in _DND_FORMS:
                return Activity.DO_NOT_DISTURB
    for child in children:
        ns, name = _ns(child), _local(child)
        if ns == EXT_NS and name == "available":
            return Activity.AVAILABLE
        if ns == RPID_NS:
            if name in _ACTIVITY_BY_TOKEN:
                return _ACTIVITY_BY_TOKEN[name]
            if name in _ACTIVITY_ALIASES:
                return _ACTIVITY_ALIASES[name]
    # Only tokens the spec has no value for (RFC 4480's "shopping", a foreign
    # extension, rpid:other with free text): some activity not listed.
    return Activity.ACTIVITY_OTHER


def _decode_place_type(el: etree._Element) -> Place | None:
    children = _value_children(el)
    for child in children:
        ns, name = _ns(child), _local(child)
        if ns in (LT_NS, RPID_NS) and name in _PLACE_BY_TOKEN:
            return _PLACE_BY_TOKEN[name]
    return Place.PLACE_OTHER if children else None


def _decode_place_is(el: etree._Element) -> Place | None:
    audio = _child(el, RPID_NS, "audio")
    if audio is None:
        return None
    for child in audio:
        if _ns(child) == RPID_NS and _local(child) == "quiet":
            return Place.QUIET
        if _ns(child) == RPID_NS and _local(child) == "noisy":
            return Place.NOISY
    return None  # "ok" / "unknown" say nothing the spec can express


def _decode_privacy(el: etree._Element) -> Privacy:
    children = _value_children(el)
    names = {_local(c) for c in children if _ns(c) == RPID_NS}
    if "unknown" in names:
        return Privacy.PRIVACY_NONE
    if any(_ns(c) != RPID_NS for c in children) or names - {"audio", "text", "video"}:
        return Privacy.PRIVACY_OTHER
    for privacy, media in PRIVACY_MEDIA.items():
        if names == media:
            return privacy
    return Privacy.PRIVACY_OTHER


def _decode_sphere(el: etree._Element) -> Sphere | None:
    for child in _value_children(el):
        if _ns(child) == RPID_NS:
            for sphere, token in SPHERE_TOKENS.items():
                if _local(child) == token:
                    return sphere
        return Sphere.SPHERE_OTHER
    # The sphere's own text nodes only: a note child is not part of it.
    own = (el.text or "") + "".join(c.tail or "" for c in el)
    text = own.strip().lower()
    if not text:
        return None
    for sphere, token in SPHERE_TOKENS.items():
        if text == token:
            return sphere
    return Sphere.SPHERE_OTHER


def _decode_other(el: etree._Element) -> Other | None:
    name = _text(_child(el, EXT_NS, "name"))
    value = _text(_child(el, EXT_NS, "value"))
    if name is None or value is None:
        return None
    try:
        return Other(name=name, value=value)
    except ValidationError:
        return None


def _basic_status(tuple_el: etree._Element, pidf_ns: str | None) -> str | None:
    status = _child(tuple_el, pidf_ns, "status")
    basic = _child(status, pidf_ns, "basic") if status is not None else None
    return (basic.text or "").strip() if basic is not None else None


def _tuple_stamp(tuple_el: etree._Element, pidf_ns: str | None) -> datetime | None:
    return _instant(_text(_child(tuple_el, pidf_ns, "timestamp")))


def _infer_available(
    tuples: list[etree._Element], statuses: list[str | None], pidf_ns: str | None
) -> PresenceAttribute | None:
    # DESIGN's rule for other clients: no activity + basic open = Available.
    # Our own tuples never count — means carry caps:servcaps, the status
    # tuple our class: a document holding only Communication or Place must
    # not grow an Activity.
    candidates = []
    for order, (tuple_el, status) in enumerate(zip(tuples, statuses, strict=True)):
        if status != "open" or _child(tuple_el, CAPS_NS, "servcaps") is not None:
            continue
        if (_text(_child(tuple_el, RPID_NS, "class")) or "").strip() == STATUS_CLASS:
            continue
        attribute = PresenceAttribute(
            value=Activity.AVAILABLE,
            last_change=_tuple_stamp(tuple_el, pidf_ns),
            note=_text(_child(tuple_el, pidf_ns, "note")),
        )
        candidates.append(_Candidate(attribute, order))
    return _newest(candidates)


def _decode_means(tuple_el: etree._Element, pidf_ns: str | None) -> CommunicationMeans | None:
    contact_el = _child(tuple_el, pidf_ns, "contact")
    contact = (_text(contact_el) or "").strip()
    if contact_el is None or not is_uri(contact):
        return None
    priority = DEFAULT_PRIORITY
    raw = contact_el.get("priority")
    if raw is not None:
        try:
            priority = min(max(round(float(raw), 3), 0.0), 1.0)
        except ValueError:
            pass
    return CommunicationMeans(
        contact=contact, priority=priority, type=_means_type(tuple_el, contact)
    )


def _means_type(tuple_el: etree._Element, contact: str) -> MeansType:
    caps = _child(tuple_el, CAPS_NS, "servcaps")
    if caps is None:
        return _MEANS_BY_SCHEME.get(contact.split(":", 1)[0].lower(), MeansType.MEANS_OTHER)
    type_el = _child(caps, CAPS_NS, "type")
    supported = _child(type_el, CAPS_NS, "supported") if type_el is not None else None
    if supported is not None:
        for mime_el in supported:
            mime = (mime_el.text or "").strip().lower()
            if mime in _MEANS_BY_MIME:
                return _MEANS_BY_MIME[mime]
    flags = {_local(c) for c in caps if _ns(c) == CAPS_NS and (c.text or "").strip() == "true"}
    for name, means in (
        ("video", MeansType.VIDEO),
        ("audio", MeansType.PHONE),
        ("message", MeansType.CHAT),
    ):
        if name in flags:
            return means
    return MeansType.MEANS_OTHER


def _decode_communication(
    tuples: list[etree._Element], statuses: list[str | None], pidf_ns: str | None
) -> PresenceAttribute | None:
    # A closed tuple is a means that cannot be used now (RFC 3863 §4.1.4), so
    # only open ones are offered; one entry per contact and type, the newest.
    entries: dict[tuple[str, MeansType], tuple[tuple[datetime, int], CommunicationMeans]] = {}
    newest: tuple[tuple[datetime, int], etree._Element] | None = None
    floor = datetime.min.replace(tzinfo=UTC)
    for order, (tuple_el, status) in enumerate(zip(tuples, statuses, strict=True)):
        if status != "open":
            continue
        means = _decode_means(tuple_el, pidf_ns)
        if means is None:
            continue
        key = (_tuple_stamp(tuple_el, pidf_ns) or floor, -order)
        slot = (means.contact, means.type)
        if slot not in entries or key > entries[slot][0]:
            entries[slot] = (key, means)
        if newest is None or key > newest[0]:
            newest = (key, tuple_el)
    if newest is None:
        return None
    ordered = sorted(entries.values(), key=lambda e: -e[0][1])  # document order
    return PresenceAttribute(
        value=Communication(means=tuple(m for _k, m in ordered)),
        last_change=_tuple_stamp(newest[1], pidf_ns),
        note=_text(_child(newest[1], pidf_ns, "note")),
    )


#: RPID elements that each carry one attribute, by Clark name, and their decoders.
_PERSON_VALUE_DECODERS: dict[
    str, Callable[[etree._Element], Activity | Place | Privacy | Sphere | None]
] = {
    f"{{{RPID_NS}}}activities": _decode_activity,
    f"{{{RPID_NS}}}place-type": _decode_place_type,
    f"{{{RPID_NS}}}place-is": _decode_place_is,
    f"{{{RPID_NS}}}privacy": _decode_privacy,
    f"{{{RPID_NS}}}sphere": _decode_sphere,
}
_EXT_OTHER = f"{{{EXT_NS}}}other"
_PERSON_VALUE_TAGS = (*_PERSON_VALUE_DECODERS, _EXT_OTHER)
