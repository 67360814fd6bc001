"""MQTT refusals as skald errors, and the MQTT 5 reason code each one is answered with."""

from __future__ import annotations

from skald.errors import (
    DocumentNotFound,
    InvalidDocumentId,
    PayloadTooLarge,
    ScopeDenied,
    ServiceUnavailable,
    SkaldError,
    TokenInvalid,
    Unauthenticated,
    ValidationFailed,
)
from skald.mqtt.codec import Reason
from skald.pubsub.topics import InvalidTopic


class TopicNeedsDocument(InvalidTopic):
    code = "mqtt_topic_needs_document"
    title = "An MQTT topic's first level names the document"


class WildcardDocument(InvalidTopic):
    code = "mqtt_wildcard_document"
    title = "An MQTT topic filter's first level (the document) cannot be a wildcard"


class SharedSubscriptionsUnsupported(ValidationFailed):
    code = "mqtt_shared_subscriptions_unsupported"
    title = "Shared subscriptions ($share/...) are not supported"


class PayloadFormatInvalid(ValidationFailed):
    code = "mqtt_payload_format_invalid"
    title = "The payload format indicator says UTF-8 but the payload is not"


def publish_reason(exc: SkaldError) -> Reason:
    """The MQTT 5 PUBACK reason code for a refused publish."""
    if isinstance(exc, (ScopeDenied, Unauthenticated)):
        return Reason.NOT_AUTHORIZED
    if isinstance(exc, PayloadFormatInvalid):
        return Reason.PAYLOAD_FORMAT_INVALID
    if isinstance(exc, (InvalidTopic, InvalidDocumentId, DocumentNotFound)):
        return Reason.TOPIC_NAME_INVALID
    if isinstance(exc, (PayloadTooLarge, ServiceUnavailable)):
        return Reason.QUOTA_EXCEEDED
    return Reason.IMPLEMENTATION_SPECIFIC_ERROR


def subscribe_reason(exc: SkaldError) -> Reason:
    """The MQTT 5 SUBACK reason code for a refused topic filter (3.1.1 answers 0x80 for all)."""
    if isinstance(exc, (ScopeDenied, Unauthenticated)):
        return Reason.NOT_AUTHORIZED
    if isinstance(exc, SharedSubscriptionsUnsupported):
        return Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
    if isinstance(exc, (InvalidTopic, InvalidDocumentId)):
        return Reason.TOPIC_FILTER_INVALID
    return Reason.IMPLEMENTATION_SPECIFIC_ERROR  # e.g. no such document


def connect_reason(exc: SkaldError) -> Reason:
    """The CONNACK reason for a refused CONNECT."""
    if isinstance(exc, TokenInvalid):
        return Reason.BAD_USER_NAME_OR_PASSWORD
    if isinstance(exc, Unauthenticated):
        return Reason.BAD_USER_NAME_OR_PASSWORD
    if isinstance(exc, ScopeDenied):
        return Reason.NOT_AUTHORIZED
    if isinstance(exc, (InvalidTopic, InvalidDocumentId, DocumentNotFound)):
        return Reason.TOPIC_NAME_INVALID
    if isinstance(exc, ServiceUnavailable):
        return Reason.SERVER_UNAVAILABLE
    return Reason.UNSPECIFIED_ERROR
