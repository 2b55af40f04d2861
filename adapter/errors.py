"""Errors answered to applications, in the OMA/Parlay REST ``requestError`` shape.

Every failure the REST edge reports travels as one of these exceptions; the app's
exception handler turns it into::

    {"requestError": {"serviceException": {"messageId": "SVC0002",
                                           "text": "Invalid input value for message part %1",
                                           "variables": ["presentity"]}}}

The message ids and their texts are the Parlay X common fault codes (ETSI ES 202 391-1
/ 3GPP TS 29.199-1, "Common" part): ``%1``, ``%2`` in ``text`` are filled by the
client from ``variables``, so the text itself is sent unexpanded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "FaultCode",
    "PolicyError",
    "RestError",
    "ServiceError",
]


class FaultCode(enum.Enum):
    """A Parlay X fault: its message id and its text template."""

    SERVICE_ERROR = ("SVC0001", "A service error occurred. Error code is %1")
    INVALID_INPUT = ("SVC0002", "Invalid input value for message part %1")
    INVALID_INPUT_VALUES = (
        "SVC0003",
        "Invalid input value for message part %1, valid values are %2",
    )
    NO_VALID_ADDRESSES = ("SVC0004", "No valid addresses provided in message part %1")
    DUPLICATE_CORRELATOR = (
        "SVC0005",
        "Correlator %1 specified in message part %2 is a duplicate",
    )
    POLICY_ERROR = ("POL0001", "A policy error occurred. Error code is %1")
    PRIVACY_REFUSED = (
        "POL0002",
        "Privacy verification failed for address %1, request is refused",
    )
    TOO_MANY_ADDRESSES = ("POL0003", "Too many addresses specified in message part %1")
    UNLIMITED_NOTIFICATIONS = ("POL0004", "Unlimited notification request not supported")
    TOO_MANY_NOTIFICATIONS = ("POL0005", "Too many notifications requested")
    INVALID_FREQUENCY = ("POL0009", "Invalid frequency requested")

    @property
    def message_id(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


class RestError(Exception):
    """An error answered to the application with the ``requestError`` body.

    Not raised directly: raise a ``ServiceError`` or a ``PolicyError``, from a
    constructor named after the fault, or from the ``FaultCode`` itself when the
    fault carries no variables.  Its message id and text are its code's.
    """

    #: The member of ``requestError`` the fault travels in.
    kind: ClassVar[str]
    default_status: ClassVar[int]

    def __init__(
        self,
        code: FaultCode,
        variables: Sequence[str] = (),
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.variables = tuple(variables)
        self.status = self.default_status if status is None else status
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        super().__init__(f"{code.message_id}: {code.text} {list(self.variables)}")

    def body(self) -> dict[str, Any]:
        """The JSON body answered for this error."""
        return {
            "requestError": {
                self.kind: {
                    "messageId": self.code.message_id,
                    "text": self.code.text,
                    "variables": list(self.variables),
                }
            }
        }


class ServiceError(RestError):
    """The request could not be served: bad input, unknown resource, SIP side failure."""

    kind = "serviceException"
    default_status = 400

    @classmethod
    def service_error(cls, reason: str, *, status: int = 500) -> ServiceError:
        """SVC0001; also the answer when the SIP side fails (502) or times out (504)."""
        return cls(FaultCode.SERVICE_ERROR, [reason], status=status)

    @classmethod
    def invalid_input(cls, part: str, *, status: int = 400) -> ServiceError:
        return cls(FaultCode.INVALID_INPUT, [part], status=status)

    @classmethod
    def not_found(cls, part: str, value: str) -> ServiceError:
        """404 SVC0002: ``part`` named something unknown; ``value`` (a second
        variable, after the part for %1) says what."""
        return cls(FaultCode.INVALID_INPUT, [part, value], status=404)

    @classmethod
    def invalid_input_values(cls, part: str, valid: Sequence[str]) -> ServiceError:
        return cls(FaultCode.INVALID_INPUT_VALUES, [part, ", ".join(valid)])

    @classmethod
    def no_valid_addresses(cls, part: str) -> ServiceError:
        return cls(FaultCode.NO_VALID_ADDRESSES, [part])

    @classmethod
    def duplicate_correlator(cls, correlator: str, part: str) -> ServiceError:
        """409: the request is sound but conflicts with a notification already
        started (RFC 9110 §15.5.10)."""
        return cls(FaultCode.DUPLICATE_CORRELATOR, [correlator, part], status=409)


class PolicyError(RestError):
    """The request is well formed but refused by policy: identity, privacy, limits."""

    kind = "policyException"
    default_status = 403

    @classmethod
    def policy_error(cls, reason: str, *, status: int = 403) -> PolicyError:
        return cls(FaultCode.POLICY_ERROR, [reason], status=status)

    @classmethod
    def unauthenticated(cls, realm: str) -> PolicyError:
        """401 with the Basic challenge (RFC 7617 §2) the application must answer."""
        return cls(
            FaultCode.POLICY_ERROR,
            ["authentication required"],
            status=401,
            headers={"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'},
        )

    @classmethod
    def privacy_refused(cls, address: str) -> PolicyError:
        return cls(FaultCode.PRIVACY_REFUSED, [address])

    @classmethod
    def too_many_addresses(cls, part: str) -> PolicyError:
        return cls(FaultCode.TOO_MANY_ADDRESSES, [part])
