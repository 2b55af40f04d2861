"""The presence data as JSON: typeAndValue, lastChange and note, declared once.

The JSON shape of a presence attribute — the spec's ``{"typeAndValue": …,
"lastChange": …, "note": …}`` — lives here, at the adapter's edge: pidf/ is
about XML and passes frozen values around.  The structs below are the one
declaration of it.  Decoding validates with them (msgspec, in C), the OpenAPI
components are generated from them (adapter.models.schema_components), and
encoding writes them: the REST answers, the Bayeux notifications and the
store's records.

Each variant of typeAndValue is tagged by ``unionElement`` and carries one
member named after it in lower case; the members of the other variants are
declared as ``null``-only, so that a second value is refused by the decoder
and named in the error, while the ``null`` that serialisers write for every
field is accepted.

What the structs cannot say is checked when the JSON becomes the values of
pidf.model, with the error naming the same part: ``lastChange`` as ISO 8601
(the lenient reading of :func:`pidf.model.parse_instant`), a priority's three
decimals (a PIDF qvalue).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from pidf import (
    VALUE_TYPES,
    AttributeType,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    PresenceAttribute,
    ValidationError,
    Value,
    format_instant,
    parse_instant,
)

__all__ = [
    "URI_PATTERN",
    "XML_TEXT",
    "Instant",
    "PresenceItem",
    "Uri",
    "XmlText",
    "attribute_from_item",
    "attribute_to_json",
    "attributes_from_items",
    "attributes_from_json",
    "attributes_to_json",
    "item_of",
    "matching",
    "part_of",
    "schema_pattern",
]


def _char_class(chars: str) -> str:
    """``chars`` as the inside of a regular expression class, in ranges."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in runs
    )


# What Python's \s and str.strip() take for white space (str.isspace), spelled out:
# ECMA-262's \s differs (it lacks U+001C–U+001F and U+0085, and has U+FEFF), and the
# schema must say what the code does.
SPACE = "[" + _char_class("".join(c for c in map(chr, range(0x10000)) if c.isspace())) + "]"
# pidf.model.is_uri (RFC 3986 §3.1: scheme ":" and a non-empty rest) but for lone
# surrogates, which JSON decoders refuse anyway.
URI_PATTERN = (
    "^[A-Za-z][A-Za-z0-9+.\\-]*:[^" + SPACE[1:-1] + '<>"\\u0000-\\u001f\\u007f\\ufffe\\uffff]+$'
)
# pidf.model: XML 1.0 §2.2 Char, what a PIDF note or value can carry.
XML_TEXT = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\ufffe\\uffff]*$"


def matching(pattern: str, **keywords: Any) -> Meta:
    """A string constraint: ``pattern`` as the schema says it (ECMA-262), checked by
    the decoder with Python's re.  Python's "$" also matches before a final
    newline, so the decoder's copy ends with "\\Z" instead (and
    :func:`schema_pattern` turns it back)."""
    return Meta(pattern=pattern.removesuffix("$") + "\\Z", **keywords)


def schema_pattern(pattern: str) -> str:
    """The pattern of :func:`matching` as a schema says it."""
    return pattern.removesuffix("\\Z") + "$" if pattern.endswith("\\Z") else pattern


Uri = Annotated[str, matching(URI_PATTERN, description="An absolute URI.")]
XmlText = Annotated[str, matching(XML_TEXT)]
Instant = Annotated[
    str, Meta(extra_json_schema={"format": "date-time"},
              description="ISO 8601 extended; no offset means UTC.")
]


def comma_list_pattern(values: Iterable[str], *, empty_items: bool) -> str:
    """A string of ``values`` separated by commas, with white space around each
    (:func:`comma_list` drops empty items when ``empty_items``)."""
    one = "(" + "|".join(values) + ")" + ("?" if empty_items else "")
    item = f"{SPACE}*{one}{SPACE}*"
    return f"^{item}(,{item})*$" if empty_items else f"^({item}(,{item})*)?$"


def comma_list(text: str) -> list[str]:
    """``"Activity, Place"`` → ``["Activity", "Place"]``; empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


# -- the structs -------------------------------------------------------------------


class Means(Struct, kw_only=True):
    contact: Uri
    # PIDF carries it as a qvalue (RFC 3261 §25.1: "0" [ "." 0*3DIGIT ] / "1" [ "."
    # 0*3("0") ]), so at most three decimals; the spec's sample quotes it ("Float").
    priority: (
        Annotated[float, Meta(ge=0.0, le=1.0, extra_json_schema={"multipleOf": 0.001})]
        | Annotated[str, matching(r"^(0(\.[0-9]{0,3})?|1(\.0{0,3})?)$")]
    )
    type: MeansType


class CommunicationJson(Struct, kw_only=True):
    means: Annotated[list[Means], Meta(min_length=1)]


class OtherJson(Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1), matching(XML_TEXT)]
    value: XmlText


class TypeAndValue(Struct, tag_field="unionElement", omit_defaults=True, kw_only=True):
    """One presence value: ``unionElement`` names the member that carries it."""


#: The JSON types of the values that are not one of pidf.model's enums.
_STRUCTS: dict[AttributeType, Any] = {
    AttributeType.COMMUNICATION: CommunicationJson,
    AttributeType.OTHER: OtherJson,
}
#: The member carrying each union element (its name in lower case), and its JSON type.
MEMBERS: dict[AttributeType, tuple[str, Any]] = {
    kind: (kind.value.lower(), _STRUCTS.get(kind, VALUE_TYPES[kind])) for kind in AttributeType
}


def _variant(kind: AttributeType) -> type[TypeAndValue]:
    member, json_type = MEMBERS[kind]
    others = [(m, None, None) for m, _ in MEMBERS.values() if m != member]
    return msgspec.defstruct(  # type: ignore[return-value]
        f"{kind.value}Value",
        [(member, json_type), *others],
        bases=(TypeAndValue,),
        tag=kind.value,
        module=__name__,
    )


VARIANTS: dict[AttributeType, type[TypeAndValue]] = {kind: _variant(kind) for kind in MEMBERS}
AnyTypeAndValue = (
    VARIANTS[AttributeType.ACTIVITY]
    | VARIANTS[AttributeType.PLACE]
    | VARIANTS[AttributeType.PRIVACY]
    | VARIANTS[AttributeType.SPHERE]
    | VARIANTS[AttributeType.COMMUNICATION]
    | VARIANTS[AttributeType.OTHER]
)


class PresenceItem(Struct, omit_defaults=True, kw_only=True):
    """One element of the spec's presence arrays (its PresenceAttribute)."""

    lastChange: Instant | None = None
    typeAndValue: AnyTypeAndValue  # type: ignore[valid-type]
    note: Annotated[str, matching(XML_TEXT, description="An explanatory note.")] | None = None


_KIND_OF = {variant: kind for kind, variant in VARIANTS.items()}


# -- JSON ⇄ pidf.model ---------------------------------------------------------------


def attribute_from_item(item: PresenceItem) -> PresenceAttribute:
    """The value of a decoded item; ValidationError names the part within it."""
    tav = item.typeAndValue
    kind = _KIND_OF[type(tav)]
    member = MEMBERS[kind][0]
    raw = getattr(tav, member)
    value: Value
    if isinstance(raw, Enum):
        value = raw  # type: ignore[assignment]
    elif isinstance(raw, OtherJson):
        try:
            value = Other(raw.name, raw.value)
        except ValidationError as exc:
            raise ValidationError(str(exc), f"typeAndValue.{exc.field}") from None
    else:
        means = []
        for i, m in enumerate(raw.means):
            try:
                means.append(CommunicationMeans(m.contact, float(m.priority), m.type))
            except ValidationError as exc:
                where = f"typeAndValue.communication.means[{i}].{exc.field}"
                raise ValidationError(str(exc), where) from None
        value = Communication(tuple(means))
    when = None if item.lastChange is None else parse_instant(item.lastChange, "lastChange")
    return PresenceAttribute(value, when, item.note)


def attributes_from_items(
    items: Iterable[PresenceItem], part: str = "presence"
) -> tuple[PresenceAttribute, ...]:
    """The values of decoded items; ValidationError names ``part[i].…``."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(attribute_from_item(item))
        except ValidationError as exc:
            raise ValidationError(str(exc), f"{part}[{i}].{exc.field}") from None
    return tuple(out)


def attributes_from_json(items: object) -> tuple[PresenceAttribute, ...]:
    """A presence array already parsed from JSON (the store's records)."""
    try:
        decoded = msgspec.convert(items, list[PresenceItem])
    except msgspec.ValidationError as exc:
        raise ValidationError(str(exc), part_of(exc, "presence")) from None
    return attributes_from_items(decoded)


def item_of(attribute: PresenceAttribute) -> PresenceItem:
    value = attribute.value
    raw: Any
    if isinstance(value, Communication):
        raw = CommunicationJson(
            means=[Means(contact=m.contact, priority=m.priority, type=m.type) for m in value.means]
        )
    elif isinstance(value, Other):
        raw = OtherJson(name=value.name, value=value.value)
    else:
        raw = value
    when = attribute.last_change
    return PresenceItem(
        lastChange=None if when is None else format_instant(when),
        # The member is each variant's first field.
        typeAndValue=VARIANTS[attribute.type](raw),
        note=attribute.note,
    )


def attribute_to_json(attribute: PresenceAttribute) -> dict[str, Any]:
    """One attribute as the JSON object the spec shows (a dict, for json or msgspec)."""
    return msgspec.to_builtins(item_of(attribute))  # type: ignore[no-any-return]


class JsonForms:
    """Each attribute's JSON object, made once while it is in use.

    A presentity's document is decoded once and its attributes shared by all
    its watchers (adapter.watch), and a schedule's saved progress carries the
    attributes it delivered last: the same value turned into the same dict
    over and over.  Equal attributes have equal JSON, so the form is kept by
    the attribute; the dicts handed out are shared, and no caller changes
    them.  Bounded: emptied when full (the next uses make it again).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._forms: dict[PresenceAttribute, dict[str, Any]] = {}

    def __call__(self, attributes: Iterable[PresenceAttribute]) -> list[dict[str, Any]]:
        forms = self._forms
        out = []
        for attribute in attributes:
            form = forms.get(attribute)
            if form is None:
                if len(forms) >= self.size:
                    forms.clear()
                form = forms[attribute] = attribute_to_json(attribute)
            out.append(form)
        return out


#: The attributes as the spec's presence array (shared dicts: read, never change).
attributes_to_json = JsonForms()


# -- errors ----------------------------------------------------------------------------


def part_of(exc: msgspec.ValidationError, root: str = "") -> str:
    """The message part a decoding error names, in the spec's notation, below ``root``.

    msgspec says ``Expected `str`, got `int` - at `$.decisions[0].decision```, or
    for a missing member ``Object missing required field `watcher` - at `$.x```
    (no path at the top): the part is the path, with the missing member appended.
    """
    text = str(exc)
    message, _, at = text.rpartition(" - at `$")
    if not message:
        message, at = text, ""
    path = at.rstrip("`")
    if message.startswith("Object missing required field `"):
        path += "." + message.split("`")[1]
    path = path.lstrip(".")
    if not root or not path:
        return path or root
    return root + path if path.startswith("[") else f"{root}.{path}"
