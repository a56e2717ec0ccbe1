"""Request bodies the API accepts, validated field by field.

A body that fails validation is answered with 422 and a list naming each field and its problem.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A Kubernetes object name (RFC 1123 subdomain), as Node names must be.
NODE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"

NodeName = Annotated[str, Field(min_length=1, max_length=253, pattern=NODE_NAME_PATTERN)]
RegionName = Annotated[str, Field(min_length=1, max_length=63)]
ComponentName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][-a-z0-9]*$")]


class Heartbeat(BaseModel):
    """One heartbeat from a node agent."""

    model_config = ConfigDict(extra="forbid")

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


class Alert(BaseModel):
    """One alert inside an Alertmanager webhook notification."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    fingerprint: str = Field(min_length=1, max_length=64)


class AlertmanagerWebhook(BaseModel):
    """An Alertmanager webhook notification, payload version 4."""

    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str
    groupKey: str
    truncatedAlerts: int = Field(0, ge=0)
    alerts: list[Alert] = Field(max_length=10_000)
