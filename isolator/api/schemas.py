"""Request bodies the API accepts, validated field by field.

A body that fails validation is answered with 422 and a list naming each field and its problem.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

# A Kubernetes object name (RFC 1123 subdomain), as Node names must be.
NODE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"

NodeName = Annotated[str, Field(min_length=1, max_length=253, pattern=NODE_NAME_PATTERN)]
RegionName = Annotated[str, Field(min_length=1, max_length=63)]
ComponentName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][-a-z0-9]*$")]


class Heartbeat(BaseModel):
    """One heartbeat from a node agent."""

    # Strict, so that a string or a number is not read as a component's health.
    model_config = ConfigDict(extra="forbid", strict=True)

    node: NodeName
    region: RegionName
    seq: int = Field(ge=0, le=2**63 - 1, description="Sequence number, from 0 at agent start.")
    sent_at: float = Field(description="The agent's wall-clock time, in Unix seconds.")
    components: dict[ComponentName, bool] = Field(
        default_factory=dict,
        max_length=32,
        description="Health of each checked component on the node: true while it responds.",
    )
    ingress_ok: bool | None = Field(
        None, description="Result of the latest request through the node's ingress."
    )

    @field_validator("sent_at")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of Unix seconds")
        return value


def _timestamp_text(value: object) -> object:
    # Pydantic reads a number as Unix seconds; Alertmanager sends RFC 3339 text, so a number
    # is a malformed payload, not a time.
    if isinstance(value, int | float):
        raise ValueError("must be an RFC 3339 timestamp string")
    return value


# Not strict, because strict validation takes only datetime objects and the JSON has text.
Timestamp = Annotated[datetime, BeforeValidator(_timestamp_text), Field(strict=False)]


class Alert(BaseModel):
    """One alert inside an Alertmanager webhook notification."""

    # Strict, so that a boolean or a number is not read as a count or a label.
    model_config = ConfigDict(extra="allow", strict=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: Timestamp
    endsAt: Timestamp | None = None
    fingerprint: str = Field(min_length=1, max_length=64)


class AlertmanagerWebhook(BaseModel):
    """An Alertmanager webhook notification, payload version 4."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str
    groupKey: str
    truncatedAlerts: int = Field(0, ge=0)
    alerts: list[Alert] = Field(max_length=10_000)


class FieldProblem(BaseModel):
    """One invalid field of a rejected request."""

    field: str = Field(description="Dotted path of the field, or body for the whole body.")
    problem: str


class ErrorBody(BaseModel):
    """Body of every error response: the message, and the fields at fault when known."""

    model_config = ConfigDict(extra="allow")

    error: str
    field: str | None = Field(None, description="The one field at fault.")
    fields: list[FieldProblem] | None = Field(None, description="Every invalid field (422).")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Describe the error responses of ``statuses`` for the OpenAPI document."""
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


ERRORS = {
    400: "The body is not valid JSON.",
    401: "Missing or invalid bearer token.",
    403: "The token's role may not call this endpoint.",
    404: "Unknown node, region or Pod, or nothing to restore.",
    409: "The cut would leave a Service under its minimum of ready endpoints; force overrides.",
    413: "Request body larger than 1 MiB, or an invalid Content-Length.",
    422: "Invalid request; fields names each invalid field and its problem.",
    502: "Kubernetes failed the request.",
    503: "This replica does not hold the Lease; the body's leader field names the one that does.",
}
