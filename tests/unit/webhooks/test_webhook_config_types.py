"""An endpoint's verify settings are type-checked when saved, not when the next delivery trips on them."""

from __future__ import annotations

from typing import Any

import pytest

from skald.errors import ValidationFailed
from skald.webhooks.service import parse_endpoint_config


@pytest.mark.parametrize(
    "verify",
    [
        {"style": "hmac", "secret": "s", "header": 0},
        {"style": "github", "secret": "s", "header": ["X-Sig"]},
        {"style": "github", "secret": "s", "prefix": 5},
        {"style": "github", "secret": "s", "tolerance_seconds": True},
        {"style": "github", "secret": "s", "header": ""},
    ],
)
def test_a_verify_field_of_the_wrong_type_is_refused(verify: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        parse_endpoint_config({"verify": verify})


def test_well_typed_settings_still_parse() -> None:
    config = parse_endpoint_config(
        {"verify": {"style": "hmac", "secret": "s", "header": "X-Sig", "prefix": "sha256=", "tolerance_seconds": 60}}
    )
    assert config.verify is not None and config.verify.header == "X-Sig"


@pytest.mark.parametrize("redact", [{}, "authorization", 0, [""]])
def test_redact_headers_must_be_a_list_of_names(redact: Any) -> None:
    with pytest.raises(ValidationFailed):
        parse_endpoint_config({"redact_headers": redact})


def test_an_integral_number_is_an_integer() -> None:
    # JSON Schema (and so /openapi.json) counts 60.0 as an integer; so does the server.
    config = parse_endpoint_config({"verify": {"style": "github", "secret": "s", "tolerance_seconds": 60.0}})
    assert config.verify is not None and config.verify.tolerance_seconds == 60
    assert type(config.verify.tolerance_seconds) is int
