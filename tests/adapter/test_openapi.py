"""adapter/openapi.py: the OpenAPI document and the service page agree with the code."""

import base64
import contextlib
import copy
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route
from starlette.testclient import TestClient

from adapter import rest
from adapter.app import create_app, make_app
from adapter.auth import Accounts
from adapter.config import Config, load_config
from adapter.notification import Criterion, withdrawal
from adapter.openapi import (
    NOTIFICATIONS,
    OPERATIONS,
    openapi_document,
    service_description_html,
)
from adapter.presence_json import URI_PATTERN
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
    is_uri,
)

REPO = Path(__file__).resolve().parents[2]
DOC_URI = "urn:presence-adapter:openapi"
NOT_REST = ("/cometd", "/health", "/openapi.json", "/console", "/livez", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema`, whose #/components references point into `document`."""
    registry: Registry = Registry().with_resource(
        DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    absolute = json.loads(json.dumps(schema).replace('"#/components/', f'"{DOC_URI}#/components/'))
    return Draft202012Validator(absolute, registry=registry)


def component(document: dict[str, Any], name: str) -> Draft202012Validator:
    return schema_validator(document, {"$ref": f"#/components/schemas/{name}"})


def documented_operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method.upper()): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


# -- the document -------------------------------------------------------------------


def test_document_is_a_valid_openapi_3_1_document(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(copy.deepcopy(document))


def test_security_is_http_basic_with_the_identity_header(document: dict[str, Any]) -> None:
    components = document["components"]
    assert components["securitySchemes"]["basic"] == {
        "type": "http",
        "scheme": "basic",
        "description": "The application instance account.",
    }
    assert components["parameters"]["Identity"]["name"] == "X-Presence-Identity"
    assert components["parameters"]["Identity"]["in"] == "header"
    for (path, method), operation in documented_operations(document).items():
        identity = {"$ref": "#/components/parameters/Identity"} in operation.get("parameters", [])
        public = operation.get("security") == []
        assert identity != public, (method, path)
        assert public == (operation["x-role"] == "description"), (method, path)


@pytest.mark.parametrize("enum", [AttributeType, Activity, Place, Privacy, Sphere, MeansType])
def test_enumerations_are_the_pidf_enums(document: dict[str, Any], enum: Any) -> None:
    schema = document["components"]["schemas"][enum.__name__]
    assert sorted(schema["enum"]) == sorted(member.value for member in enum)


def test_every_union_element_has_its_own_typeandvalue_variant(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    union = schemas["PresenceItem"]["properties"]["typeAndValue"]
    variants = [schemas[v["$ref"].rpartition("/")[2]] for v in union["anyOf"]]
    assert [v["properties"]["unionElement"]["enum"] for v in variants] == [
        [kind.value] for kind in AttributeType
    ]
    assert list(union["discriminator"]["mapping"]) == [kind.value for kind in AttributeType]
    for variant, kind in zip(variants, AttributeType, strict=True):
        # The member named after the element carries it; the others may only be null.
        member = kind.value.lower()
        assert variant["required"] == ["unionElement", member]
        others = {name: s for name, s in variant["properties"].items()
                  if name not in ("unionElement", member)}
        assert len(others) == 5 and all(s["type"] == "null" for s in others.values())


def test_notifications_are_components(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("statusChanged", "statusEnd", "notifySubscription", "subscriptionEnded"):
        model, _, _ = NOTIFICATIONS[name]
        assert schemas[model.__name__]["required"] == [name]


@pytest.mark.parametrize(
    "text",
    ["sip:alice@example.com", "tel:+15551234567", "mailto:a@b", "http://h/p?q=1", "sip:",
     "alice@example.com", "1sip:x", "sip:a b", 'sip:a"b', "sip:<a>", "",
     # white space as Python sees it, which ECMA-262's \s does not all take
     "sip:a\x1cb", "sip:a\x85b", "sip:a\u3000b", "sip:a\ufeffb",
     # control characters, and what XML cannot carry
     "sip:a\x01b", "sip:a\x7fb", "sip:a\uffffb", "sip:\u00e9t\u00e9"],
)
def test_uri_pattern_agrees_with_the_code(text: str) -> None:
    assert bool(re.search(URI_PATTERN, text)) == is_uri(text)


def test_uri_pattern_agrees_with_the_code_on_every_character() -> None:
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or code == 0x0A:  # lone surrogates; "$" before "\n"
            continue
        text = f"sip:a{chr(code)}b"
        assert bool(re.search(URI_PATTERN, text)) == is_uri(text), hex(code)


def test_examples_validate_against_their_own_schemas(document: dict[str, Any]) -> None:
    checked = 0
    for (path, method), operation in documented_operations(document).items():
        media = operation.get("requestBody", {}).get("content", {}).get("application/json")
        bodies = [(media["schema"], media["example"])] if media else []
        for response in operation["responses"].values():
            for content in response.get("content", {}).values():
                examples = content.get("examples", {}).values()
                bodies += [(content["schema"], example["value"]) for example in examples]
        for schema, example in bodies:
            errors = list(schema_validator(document, schema).iter_errors(example))
            assert not errors, (method, path, [e.message for e in errors])
            checked += 1
    for name, notification in document["x-bayeux-notifications"].items():
        validator = schema_validator(document, notification["schema"])
        assert not list(validator.iter_errors(notification["example"])), name
        checked += 1
    assert checked > 30


def test_schemas_reject_what_they_should(document: dict[str, Any]) -> None:
    """The examples are not valid by accident: each schema refuses a mutation of them."""
    publish = component(document, "PublishRequest")
    body = copy.deepcopy(OPERATIONS[0].body_example)
    assert publish.is_valid(body)
    body["presence"][0]["typeAndValue"]["place"] = "Home"  # a second member
    assert not publish.is_valid(body)
    assert not component(document, "StatusEnd").is_valid({"statusEnd": {}})
    assert not component(document, "RequestError").is_valid(
        {"requestError": {"serviceException": {"messageId": "SVC9", "text": "", "variables": []}}}
    )


def test_every_withdrawal_form_is_a_valid_status_changed(document: dict[str, Any]) -> None:
    """What statusChanged says of an attribute that went away is in the documented schema,
    and only Publish refuses the Communication form."""
    means = CommunicationMeans("tel:+15550100", 0.5, MeansType.PHONE)
    gone = [
        PresenceAttribute(value)
        for value in (Activity.BUSY, Place.HOME, Privacy.PRIVACY_PUBLIC, Sphere.SPHERE_WORK,
                      Communication((means,)), Other("mood", "happy"))
    ]
    entries = [withdrawal(attribute, 1_700_000_000.0) for attribute in gone]
    message = {"statusChanged": {"correlator": "c", "presentity": "sip:a@example.com",
                                 "changedAttributes": entries}}
    validator = component(document, "StatusChanged")
    assert not [e.message for e in validator.iter_errors(message)]
    publish = component(document, "PublishRequest")
    assert [publish.is_valid({"presence": [entry]}) for entry in entries] == [
        True, True, True, True, False, True
    ]


# -- the served routes and the document ---------------------------------------------


def served_rest_routes(app: Any) -> dict[str, set[str]]:
    served: dict[str, set[str]] = {}
    for route in app.routes:
        if not isinstance(route, Route) or route.path.startswith(NOT_REST):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {watcher:path} → {watcher}
        served.setdefault(path, set()).update(route.methods or set())
    for methods in served.values():
        methods.discard("HEAD")  # added by Starlette to every GET
    return served


def test_every_served_route_is_documented_with_its_methods(
    config: Config, document: dict[str, Any]
) -> None:
    served = served_rest_routes(make_app(config))
    assert "/rest/presence" in served and "/rest/presence/subscription" in served
    documented = documented_operations(document)
    for path, methods in served.items():
        assert path.startswith("/rest/presence"), path
        for method in methods:
            assert (path, method) in documented, f"{method} {path} is served, not documented"


def test_every_documented_operation_is_served(config: Config, document: dict[str, Any]) -> None:
    """Presentity operations must be served; a watcher operation may be documented first."""
    served = served_rest_routes(make_app(config))
    for (path, method), operation in documented_operations(document).items():
        if path == "/openapi.json":
            continue
        if method not in served.get(path, set()):
            assert operation["x-role"] == "watcher", f"{method} {path} documented, not served"


def test_the_served_document_is_the_generated_one(config: Config) -> None:
    client = TestClient(make_app(config))
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()


# -- what the REST code accepts, the schema accepts --------------------------------


class FakePresentityService:
    async def publish(self, address: str, attributes: Any) -> None:
        assert attributes

    async def authorize(self, presentity: str, watcher: str, decisions: Any) -> None:
        assert decisions


class FakeWatcherService:
    async def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def start_notification(self, *args: Any, **kwargs: Any) -> bool:
        return True

    async def user_presence(self, watcher: str, presentity: str, attributes: Any) -> None:
        return None


@pytest.fixture(scope="module")
def rest_client(config: Config) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {
            "accounts": Accounts(config.accounts),
            "presentity": FakePresentityService(),
            "watcher": FakeWatcherService(),
            "notification_policy": config.notifications,
        }

    class Probe:
        async def ping(self) -> float:
            return 0.001

    app = create_app(
        config,
        sip_probe=Probe(),
        routes=rest.routes(),
        lifespan=lifespan,
        exception_handlers=rest.EXCEPTION_HANDLERS,
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# Presentity operations act as alice, watcher operations as bob (whose channels the
# examples' reference.endpoint names).
AS_ROLE = {
    "presentity": basic("alice-app", "alice-secret"),
    "watcher": basic("bob-app", "bob-secret"),
}
BY_ID = {op.id: op for op in OPERATIONS}


def call(client: TestClient, operation_id: str, body: Any) -> Any:
    op = BY_ID[operation_id]
    return client.request(op.method, op.paths[0], json=body, headers=AS_ROLE[op.role])


def request_schema(document: dict[str, Any], operation_id: str) -> Draft202012Validator:
    op = BY_ID[operation_id]
    operation = documented_operations(document)[op.paths[0], op.method]
    media = operation["requestBody"]["content"]["application/json"]
    return schema_validator(document, media["schema"])


def means(priority: Any = 0.5, type_: str = "Phone", contact: str = "tel:+1") -> dict[str, Any]:
    tav = {"unionElement": "Communication",
           "communication": {"means": [{"contact": contact, "priority": priority, "type": type_}]}}
    return {"presence": [{"typeAndValue": tav}]}


def one(tav: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"presence": [{"typeAndValue": tav, **more}]}


ALICE = "sip:alice@example.com"
REFERENCE = {"correlator": "c1", "endpoint": "/bayeux/bob-app"}
START = {"presentity": ALICE, "reference": REFERENCE}

PAIRS = [
    ("publish", one({"unionElement": "Activity", "activity": "Busy"}), True),
    ("publish", one({"unionElement": "Activity", "activity": "Dancing"}), False),
    ("publish", one({"unionElement": "Mood", "mood": "happy"}), False),
    ("publish", one({"unionElement": "Activity", "activity": "Busy", "place": "Home"}), False),
    ("publish", one({"unionElement": "Place"}), False),
    ("publish", one({"unionElement": "Other", "other": {"name": "k", "value": "v"}}), True),
    ("publish", one({"unionElement": "Other", "other": {"name": "k"}}), False),
    ("publish", one({"unionElement": "Sphere", "sphere": "SphereWork"}, note="n"), True),
    ("publish", {"presence": [{"note": "no typeAndValue"}]}, False),
    ("publish", {"presence": []}, False),
    ("publish", {}, False),
    ("publish", means(), True),
    ("publish", means(priority="0.25"), True),
    ("publish", means(priority=1.5), False),
    ("publish", means(priority="1.5"), False),
    ("publish", means(type_="Pigeon"), False),
    ("publish", means(contact="not a uri"), False),
    ("updateSubscriptionAuthorization",
     {"watcher": "sip:bob@example.com", "decisions": [{"presenceAttribute": "Place",
                                                       "decision": "TRUE"}]}, True),
    ("updateSubscriptionAuthorization",
     {"watcher": "sip:bob@example.com", "decisions": [{"presenceAttribute": "Place",
                                                       "decision": "yes"}]}, False),
    ("updateSubscriptionAuthorization",
     {"watcher": "sip:bob@example.com", "decisions": [{"presenceAttribute": "Mood",
                                                       "decision": True}]}, False),
    ("updateSubscriptionAuthorization",
     {"decisions": [{"presenceAttribute": "Place", "decision": True}]}, False),
    ("updateSubscriptionAuthorization", {"watcher": "sip:bob@example.com", "decisions": []},
     False),
    ("subscribePresence", {"presentity": ALICE, "reference": REFERENCE}, True),
    ("subscribePresence", {"presentity": "alice", "reference": REFERENCE}, False),
    ("subscribePresence", {"presentity": ALICE, "reference": {"endpoint": "/bayeux/bob-app"}},
     False),
    ("subscribePresence", {**START, "attributes": ["Mood"]}, False),
    ("subscribePresence", {"presentity": ALICE}, False),
    ("startPresenceNotification", {**START, "count": "5", "checkImmediate": "false"}, True),
    ("startPresenceNotification", {**START, "count": -1}, False),
    ("startPresenceNotification", {**START, "checkImmediate": "maybe"}, False),
    ("startPresenceNotification", {**START, "criteria": "Busy, Reachable"}, True),
    ("startPresenceNotification", {**START, "criteria": ["UnReachable"]}, True),
    ("startPresenceNotification", {**START, "criteria": "Sleepy"}, False),
    ("startPresenceNotification", {**START, "frequency": {"metric": "Fortnight", "units": 1}},
     False),
    ("startPresenceNotification", {**START, "duration": {"metric": "Minute", "units": 1.5}},
     False),
    ("startPresenceNotification", {**START, "duration": {"metric": "Minute", "units": "10"}},
     True),
]


@pytest.mark.parametrize(("operation_id", "body", "valid"), PAIRS)
def test_schema_and_rest_code_agree(
    rest_client: TestClient, document: dict[str, Any], operation_id: str, body: Any, valid: bool
) -> None:
    response = call(rest_client, operation_id, body)
    if valid:
        assert response.status_code in (201, 204), response.text
    else:
        assert response.status_code == 400, response.text
        fault = response.json()["requestError"]["serviceException"]
        assert fault["messageId"] in ("SVC0002", "SVC0003")
    errors = [e.message for e in request_schema(document, operation_id).iter_errors(body)]
    assert (not errors) == valid, errors


def test_every_enum_value_the_code_takes_the_schema_takes(
    rest_client: TestClient, document: dict[str, Any]
) -> None:
    validator = request_schema(document, "publish")
    for enum in (Activity, Place, Privacy, Sphere):
        member = enum.__name__.lower()
        for value in enum:
            body = one({"unionElement": enum.__name__, member: value.value})
            assert call(rest_client, "publish", body).status_code == 204
            assert validator.is_valid(body), body
    for criterion in Criterion:
        body = {**START, "criteria": criterion.value}
        assert call(rest_client, "startPresenceNotification", body).status_code == 201
        assert request_schema(document, "startPresenceNotification").is_valid(body)


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op.body], ids=lambda op: op.id)
def test_request_examples_are_accepted_by_the_rest_code(rest_client: TestClient, op: Any) -> None:
    response = call(rest_client, op.id, op.body_example)
    assert response.status_code == op.replies[0].status, response.text


def test_user_presence_query_agrees(rest_client: TestClient, document: dict[str, Any]) -> None:
    operation = documented_operations(document)["/rest/presence", "GET"]
    query = next(p for p in operation["parameters"] if p.get("name") == "query")
    validator = schema_validator(document, query["content"]["application/json"]["schema"])
    for value, valid in [({"presentity": ALICE, "attributes": ["Activity"]}, True),
                         ({"presentity": ALICE, "attributes": ["Mood"]}, False),
                         ({"attributes": []}, False)]:
        response = rest_client.get(
            "/rest/presence", params={"query": json.dumps(value)}, headers=AS_ROLE["watcher"]
        )
        assert (response.status_code == 200) == valid == validator.is_valid(value), value


# -- the page -----------------------------------------------------------------------


def test_the_page_is_served_as_html_and_generated_from_the_same_source(
    config: Config, document: dict[str, Any]
) -> None:
    client = TestClient(make_app(config))
    response = client.get("/rest/presence/index.html")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page == service_description_html()
    for path, item in document["paths"].items():
        assert f"<code>{path}</code>" in page, path
        for operation in item.values():
            assert f"<code>{operation['operationId']}</code>" in page
    for op in OPERATIONS:
        assert f'id="{op.id}"' in page
        for status in {f.error.status for f in op.all_faults()}:
            assert f"<td>{status}</td>" in page
    for name in NOTIFICATIONS:
        assert f'id="{name}"' in page


def test_the_page_is_self_contained() -> None:
    page = service_description_html()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|<img|src=|@import|url\(", page)
    assert not re.search(r'href="(?!#|/openapi\.json")', page)


def test_an_empty_result_is_a_valid_answer_everywhere(document: dict[str, Any]) -> None:
    for (path, method), operation in documented_operations(document).items():
        media = operation["responses"].get("200", {}).get("content", {}).get("application/json")
        if media and "schema" in media:
            empty = {"result": []}
            assert schema_validator(document, media["schema"]).is_valid(empty), (method, path)
