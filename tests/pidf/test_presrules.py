"""pidf/presrules.py: RFC 4745/5025 rulesets built from decisions and read back."""

import pytest
from lxml import etree

from pidf.document import EXT_NS
from pidf.errors import RemoteProtocolError, ValidationError
from pidf.model import AttributeType
from pidf.presrules import COMMON_POLICY_NS, PRES_RULES_NS, PresRules, SubHandling, rule_id

CP = f"{{{COMMON_POLICY_NS}}}"
PR = f"{{{PRES_RULES_NS}}}"
BOB = "sip:bob@example.com"
CAROL = "sip:carol@example.com"
EVE = "sip:eve@example.com"

ALL_TRUE = {kind: True for kind in AttributeType}


def _rule(xml: bytes, watcher: str) -> etree._Element:
    root = etree.fromstring(xml)
    found = root.find(f"{CP}rule[@id='{rule_id(watcher)}']")
    assert found is not None
    return found


def test_build_from_decisions_and_block_list() -> None:
    rules = PresRules.build(
        {BOB: {AttributeType.ACTIVITY: True, AttributeType.PLACE: False}, CAROL: ALL_TRUE},
        blocked=[EVE],
    )
    xml = rules.to_xml()
    bob = _rule(xml, BOB)
    assert bob.findtext(f"{CP}actions/{PR}sub-handling") == "allow"
    assert bob.find(f"{CP}conditions/{CP}identity/{CP}one").get("id") == BOB  # type: ignore[union-attr]
    t = bob.find(f"{CP}transformations")
    assert t is not None
    assert t.findtext(f"{PR}provide-activities") == "true"
    assert t.findtext(f"{PR}provide-place-type") == "false"
    assert t.findtext(f"{PR}provide-place-is") == "false"
    # Without Communication our status tuple alone, by its class; with it,
    # every tuple (other publishers' have no class).
    assert provided_classes(bob) == ["pa-status"]
    assert t.find(f"{PR}provide-services/{PR}all-services") is None
    carol = _rule(xml, CAROL).find(f"{CP}transformations")
    assert carol is not None
    assert carol.find(f"{PR}provide-services/{PR}all-services") is not None
    assert provided_classes(_rule(xml, CAROL)) == []
    unknown = carol.find(f"{PR}provide-unknown-attribute")
    assert unknown is not None and (unknown.get("ns"), unknown.get("name"), unknown.text) == (
        EXT_NS,
        "other",
        "true",
    )
    assert _rule(xml, EVE).findtext(f"{CP}actions/{PR}sub-handling") == "block"
    assert PresRules.parse(xml) == rules


def provided_classes(rule: etree._Element) -> list[str | None]:
    return [c.text for c in rule.iterfind(f"{CP}transformations/{PR}provide-services/{PR}class")]


@pytest.mark.parametrize("kind", list(AttributeType), ids=lambda k: k.value)
def test_each_grant_reads_back(kind: AttributeType) -> None:
    rules = PresRules().allow(BOB, {k: k is kind for k in AttributeType})
    decisions = PresRules.parse(rules.to_xml()).decisions_for(BOB)
    assert decisions == {k: k is kind for k in AttributeType}


@pytest.mark.parametrize("handling", list(SubHandling), ids=lambda h: h.value)
def test_every_sub_handling(handling: SubHandling) -> None:
    rules = PresRules().allow(BOB, ALL_TRUE).set_handling(BOB, handling)
    parsed = PresRules.parse(rules.to_xml())
    rule = parsed.rule_for(BOB)
    assert rule is not None and rule.sub_handling is handling
    expected = handling is SubHandling.ALLOW
    assert all(v is expected for v in parsed.decisions_for(BOB).values())


def test_changing_one_watcher_leaves_the_others_untouched() -> None:
    base = PresRules.build({BOB: ALL_TRUE, CAROL: {AttributeType.SPHERE: True}}, blocked=[EVE])
    xml = base.to_xml()
    carol_before = etree.tostring(_rule(xml, CAROL))
    eve_before = etree.tostring(_rule(xml, EVE))
    for changed in (
        PresRules.parse(xml).allow(BOB, {AttributeType.ACTIVITY: True}),
        PresRules.parse(xml).remove(BOB),
        PresRules.parse(xml).allow("sip:dave@example.com", {}),
    ):
        out = changed.to_xml()
        assert etree.tostring(_rule(out, CAROL)) == carol_before
        assert etree.tostring(_rule(out, EVE)) == eve_before
    removed = PresRules.parse(xml).remove(BOB)
    assert removed.rule_for(BOB) is None
    assert [r.id for r in removed.rules] == [rule_id(CAROL), rule_id(EVE)]


FOREIGN = f"""<?xml version="1.0" encoding="UTF-8"?>
<cr:ruleset xmlns:cr="{COMMON_POLICY_NS}" xmlns:pr="{PRES_RULES_NS}" xmlns:x="urn:example:x">
  <cr:rule id="a">
    <cr:conditions>
      <cr:identity>
        <cr:one id="sip:bob@example.com"/><cr:one id="sip:bill@example.com"/>
      </cr:identity>
      <cr:validity>
        <cr:from>2024-01-01T00:00:00Z</cr:from><cr:until>2030-01-01T00:00:00Z</cr:until>
      </cr:validity>
    </cr:conditions>
    <cr:actions><pr:sub-handling>allow</pr:sub-handling></cr:actions>
    <cr:transformations>
      <pr:provide-services><pr:service-uri-scheme>sip</pr:service-uri-scheme></pr:provide-services>
      <pr:provide-persons><pr:all-persons/></pr:provide-persons>
      <pr:provide-activities>true</pr:provide-activities>
      <pr:provide-place-is>true</pr:provide-place-is>
      <pr:provide-mood>true</pr:provide-mood>
      <x:provide-cats>true</x:provide-cats>
    </cr:transformations>
  </cr:rule>
  <cr:rule id="domain">
    <cr:conditions><cr:identity><cr:many domain="example.org"/></cr:identity></cr:conditions>
    <cr:actions><pr:sub-handling>confirm</pr:sub-handling></cr:actions>
  </cr:rule>
  <cr:rule id="everything">
    <cr:conditions><cr:identity><cr:one id="sip:boss@example.com"/></cr:identity></cr:conditions>
    <cr:actions><pr:sub-handling>allow</pr:sub-handling></cr:actions>
    <cr:transformations><pr:provide-all-attributes/><pr:provide-services><pr:all-services/></pr:provide-services></cr:transformations>
  </cr:rule>
</cr:ruleset>""".encode()


A, P, C = AttributeType.ACTIVITY, AttributeType.PLACE, AttributeType.COMMUNICATION


def granted(rules: PresRules, watcher: str = BOB) -> set[AttributeType]:
    # Through the XML, as the rules come back from the XCAP server.
    decisions = PresRules.parse(rules.to_xml()).decisions_for(watcher)
    return {kind for kind, yes in decisions.items() if yes}


def test_decisions_apply_attribute_by_attribute() -> None:
    rules = PresRules().decide(BOB, {A: True})
    rules = PresRules.parse(rules.to_xml()).decide(BOB, {P: True})
    assert granted(rules) == {A, P}  # the Activity grant stays
    rules = rules.decide(BOB, {A: False, C: True})
    assert granted(rules) == {P, C}  # false withdraws just that one
    rules = rules.decide(BOB, {P: True})
    assert granted(rules) == {P, C}  # granting again changes nothing


def test_nothing_left_granted_politely_blocks_and_a_grant_allows_again() -> None:
    rules = PresRules().decide(BOB, {A: True}).decide(BOB, {A: False})
    rule = PresRules.parse(rules.to_xml()).rule_for(BOB)
    assert rule is not None and rule.sub_handling is SubHandling.POLITE_BLOCK
    assert granted(rules) == set()
    rules = rules.decide(BOB, {P: True})
    rule = rules.rule_for(BOB)
    assert rule is not None and rule.sub_handling is SubHandling.ALLOW
    assert granted(rules) == {P}


def test_a_grant_after_a_block_starts_from_nothing() -> None:
    rules = PresRules().decide(BOB, {A: True, P: True}).set_handling(BOB, SubHandling.BLOCK)
    rules = PresRules.parse(rules.to_xml()).decide(BOB, {C: True})
    assert granted(rules) == {C}


def test_deciding_about_one_watcher_leaves_the_others_alone() -> None:
    rules = PresRules().decide(BOB, {A: True}).decide(CAROL, {P: True})
    rules = PresRules.parse(rules.to_xml()).decide(CAROL, {P: False, C: True})
    assert granted(rules, BOB) == {A}
    assert granted(rules, CAROL) == {C}


def test_decisions_start_from_a_foreign_rule_naming_the_watcher() -> None:
    rules = PresRules.parse(FOREIGN).decide(BOB, {AttributeType.SPHERE: True})
    assert granted(rules) == {C, A, P, AttributeType.SPHERE}
    with pytest.raises(ValidationError):
        PresRules().decide(BOB, {A: "yes"})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        PresRules().decide("not a uri", {A: True})


@pytest.mark.parametrize(
    ("services", "communication"),
    [
        ("<pr:all-services/>", True),
        ("", False),  # as this adapter wrote rules before the status tuple's class
        ("<pr:class>pa-status</pr:class>", False),
        ("<pr:class>pa-status</pr:class><pr:class>work</pr:class>", True),
        ("<pr:class>mobile</pr:class>", True),
        ("<pr:occurrence-id>t1</pr:occurrence-id>", True),
        ("<!-- nothing --><pr:class> pa-status </pr:class>", False),
    ],
)
def test_communication_is_granted_by_any_service_but_the_status_tuples(
    services: str, communication: bool
) -> None:
    body = f"""<cr:ruleset xmlns:cr="{COMMON_POLICY_NS}" xmlns:pr="{PRES_RULES_NS}">
      <cr:rule id="r"><cr:conditions><cr:identity><cr:one id="{BOB}"/></cr:identity></cr:conditions>
      <cr:actions><pr:sub-handling>allow</pr:sub-handling></cr:actions>
      <cr:transformations><pr:provide-services>{services}</pr:provide-services></cr:transformations>
      </cr:rule></cr:ruleset>""".encode()
    decisions = PresRules.parse(body).decisions_for(BOB)
    assert decisions[C] is communication


def test_rulesets_written_by_others_are_read_and_kept() -> None:
    rules = PresRules.parse(FOREIGN)
    bob = rules.decisions_for(BOB)
    assert {k for k, v in bob.items() if v} == {
        AttributeType.COMMUNICATION,
        AttributeType.ACTIVITY,
        AttributeType.PLACE,
    }
    domain = rules.rules[1]
    assert domain.watchers == () and domain.sub_handling is SubHandling.CONFIRM
    # provide-all-attributes is an empty element meaning "everything".
    boss = rules.decisions_for("sip:boss@example.com")
    assert all(boss.values())
    # Adding our own rule keeps every foreign rule as it was written.
    out = rules.allow(CAROL, {AttributeType.SPHERE: True}).to_xml()
    root = etree.fromstring(out)
    original = etree.fromstring(FOREIGN)
    for rid in ("a", "domain", "everything"):
        assert _canonical(root, rid) == _canonical(original, rid)


def _canonical(root: etree._Element, rid: str) -> bytes:
    el = root.find(f"{CP}rule[@id='{rid}']")
    assert el is not None
    return etree.tostring(el, method="c14n", with_tail=False)


@pytest.mark.parametrize(
    "body",
    [
        b"<cr:ruleset xmlns:cr='urn:ietf:params:xml:ns:common-policy'><cr:rule/></cr:ruleset>",
        b"<ruleset/>",
        f"<cr:ruleset xmlns:cr='{COMMON_POLICY_NS}' xmlns:pr='{PRES_RULES_NS}'>"
        "<cr:rule id='r'><cr:actions><pr:sub-handling>maybe</pr:sub-handling></cr:actions>"
        "</cr:rule></cr:ruleset>".encode(),
    ],
)
def test_malformed_rulesets_raise(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        PresRules.parse(body)


def test_watcher_must_be_a_uri() -> None:
    with pytest.raises(ValidationError):
        PresRules().allow("bob", {})


def test_rule_ids_are_stable_and_distinct() -> None:
    assert rule_id(BOB) == rule_id(BOB) != rule_id(CAROL)
    assert rule_id(BOB)[0].isalpha()
