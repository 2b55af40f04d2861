import pytest

from adapter.errors import FaultCode, PolicyError, RestError, ServiceError


def test_body_has_the_request_error_shape() -> None:
    error = ServiceError.invalid_input("presentity")
    assert error.status == 400
    assert error.body() == {
        "requestError": {
            "serviceException": {
                "messageId": "SVC0002",
                "text": "Invalid input value for message part %1",
                "variables": ["presentity"],
            }
        }
    }


@pytest.mark.parametrize(
    ("error", "kind", "message_id", "status", "variables"),
    [
        (
            ServiceError.service_error("SIP timeout", status=504),
            "serviceException",
            "SVC0001",
            504,
            ["SIP timeout"],
        ),
        (
            ServiceError.invalid_input_values("attributes", ["Activity", "Place"]),
            "serviceException",
            "SVC0003",
            400,
            ["attributes", "Activity, Place"],
        ),
        (
            ServiceError.no_valid_addresses("presentity"),
            "serviceException",
            "SVC0004",
            400,
            ["presentity"],
        ),
        (
            ServiceError.duplicate_correlator("c1", "reference"),
            "serviceException",
            "SVC0005",
            409,
            ["c1", "reference"],
        ),
        (
            ServiceError.not_found("correlator", "board-7"),
            "serviceException",
            "SVC0002",
            404,
            ["correlator", "board-7"],
        ),
        (
            PolicyError.policy_error("watcher not granted"),
            "policyException",
            "POL0001",
            403,
            ["watcher not granted"],
        ),
        (
            PolicyError.privacy_refused("sip:bob@example.com"),
            "policyException",
            "POL0002",
            403,
            ["sip:bob@example.com"],
        ),
        (
            PolicyError.too_many_addresses("presentity"),
            "policyException",
            "POL0003",
            403,
            ["presentity"],
        ),
        (PolicyError(FaultCode.UNLIMITED_NOTIFICATIONS), "policyException", "POL0004", 403, []),
        (PolicyError(FaultCode.TOO_MANY_NOTIFICATIONS), "policyException", "POL0005", 403, []),
        (PolicyError(FaultCode.INVALID_FREQUENCY), "policyException", "POL0009", 403, []),
    ],
)
def test_each_fault(error: RestError, kind: str, message_id: str, status: int, variables) -> None:
    body = error.body()["requestError"]
    assert list(body) == [kind]
    assert body[kind]["messageId"] == message_id == error.code.message_id
    assert body[kind]["variables"] == variables
    assert body[kind]["text"] == error.code.text
    assert error.status == status


def test_texts_have_one_placeholder_per_variable() -> None:
    assert FaultCode.INVALID_INPUT_VALUES.text.count("%") == 2
    assert FaultCode.DUPLICATE_CORRELATOR.text.count("%") == 2
    assert FaultCode.UNLIMITED_NOTIFICATIONS.text.count("%") == 0
    ids = [code.message_id for code in FaultCode]
    assert len(ids) == len(set(ids))


def test_headers_are_read_only() -> None:
    error = PolicyError.unauthenticated("presence")
    assert error.status == 401
    assert error.headers["WWW-Authenticate"].startswith("Basic ")
    with pytest.raises(TypeError):
        error.headers["X"] = "y"  # type: ignore[index]
