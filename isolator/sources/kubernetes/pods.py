"""The cut and restore of one Pod: the record first, then the status, then an Event.

Nothing here deletes or evicts a Pod. A cut first writes a record of what it replaces into an
annotation, then sets Pod conditions False through the status subresource, so the EndpointSlice
controller marks the Pod's endpoints not ready. A restore puts back what the record contains
and then removes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from isolator.clock import Clock
from isolator.model import CUT_ANNOTATION
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.patches import CutRecord, CutScope, Json, Owner
from isolator.sources.kubernetes.writes import PendingEvents, PodWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CutRequest:
    """The parameters of one cut: reason, incident, scope, owner and the manual isolation."""

    reason: str
    incident: str
    scope: CutScope = CutScope.NODE
    owner: Owner = Owner.NODE
    who: str | None = None  # the person behind a manual isolation; None when automatic
    expires_at: str | None = None  # RFC 3339 end of a manual isolation

    def describe(self) -> str:
        """Return the note of the Events about this cut."""
        by = f" (manual, by {self.who})" if self.who else ""
        return f"Traffic cut by the isolator for incident {self.incident}{by}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Restored:
    """One restored Pod: its key, its latest state, and whether Ready was True before the cut."""

    key: str
    pod: Json
    was_ready: bool


class PodCuts:
    """The per-Pod write sequences of a cut and a restore."""

    def __init__(self, writer: PodWriter, *, clock: Clock) -> None:
        self._writer = writer
        self._clock = clock

    async def cut(
        self, pod: Json, request: CutRequest, *, node: str, events: PendingEvents
    ) -> str | None:
        """Cut one Pod; return its key when anything was written, None when nothing was.

        The Pod's Event goes to ``events``, for the caller to create after every write.

        A Pod already cut keeps the record of what the first cut replaced. The record only
        widens: a wider scope, a person taking over an automatic cut, or an isolation of the
        Pod alone taking over its node's cut.
        """
        key = patches.pod_key(pod)
        extra = {"node": node, "pod": key, "incident": request.incident}
        wall_s = self._clock.wall()

        def record(current: Json) -> dict[str, Any] | None:
            wanted = self._record_to_write(current, request, wall_s)
            if wanted is None:
                return None
            return patches.cut_annotation_patch(wanted, current["metadata"]["resourceVersion"])

        # The record goes first: if the status patch then fails, the next cut finds the
        # record and cuts the status again, and restore can still read what to put back.
        outcome = await self._writer.patch_metadata(pod, record)
        if outcome is None:
            logger.info("Pod disappeared before it was cut", extra=extra)
            return None
        pod, wrote_record = outcome
        scope = self._applied_scope(pod, request.scope)
        if not wrote_record:
            if patches.is_cut_applied(pod, scope):
                return None
            logger.warning(
                "Pod is recorded as cut but its status is not, cutting again", extra=extra
            )

        body = patches.cut_status_patch(
            pod, incident=request.incident, wall_s=self._clock.wall(), scope=scope
        )
        patched = await self._writer.patch_status(pod, body)
        if patched is None:
            logger.info("Pod disappeared before it was cut", extra=extra)
            return None
        if not patches.is_cut_applied(patched, scope):
            # A mutating admission webhook changed the write; the read-back reports it.
            logger.warning("Pod status came back without the cut", extra=extra)
        events.add(pod, patches.CUT_REASON, "Cut", request.describe(), warning=True)
        logger.info("Pod cut", extra={**extra, "scope": scope.value})
        return key

    @staticmethod
    def _record_to_write(current: Json, request: CutRequest, wall_s: float) -> CutRecord | None:
        """Return the record to write on the Pod, or None when the present one already fits."""
        if not patches.is_cut(current):
            return patches.cut_record(
                current,
                reason=request.reason,
                incident=request.incident,
                wall_s=wall_s,
                scope=request.scope,
                owner=request.owner,
                who=request.who,
                expires_at=request.expires_at,
            )
        existing = patches.read_record(current)
        if existing is None:
            return None  # An unreadable record is left as it is; restore handles it.
        merged = existing.merged(
            request.scope, request.who, request.expires_at, request.owner, request.reason
        )
        return None if merged == existing else merged

    @staticmethod
    def _applied_scope(pod: Json, requested: CutScope) -> CutScope:
        """Return the scope the Pod's status must show: its record's, which may be wider."""
        record = patches.read_record(pod)
        return requested if record is None else patches.wider_scope(record.scope, requested)

    async def restore(
        self, pod: Json, *, node: str, incident: str, events: PendingEvents
    ) -> Restored | None:
        """Restore one Pod, or return None when the Pod disappeared; its Event goes to
        ``events``."""
        key = patches.pod_key(pod)
        extra = {"node": node, "pod": key, "incident": incident}
        text = patches.pod_annotations(pod)[CUT_ANNOTATION]
        wall_s = self._clock.wall()
        was_ready = False
        body: dict[str, Any] | None
        try:
            record = patches.CutRecord.from_annotation(text)
        except patches.InvalidCutRecordError as err:
            logger.warning(
                "Cut record is unreadable, restoring the serving condition only",
                extra={**extra, "error": str(err)},
            )
            body = patches.gate_only_restore_patch(pod, incident=incident, wall_s=wall_s)
        else:
            was_ready = record.previous_ready == "True"
            body = patches.restore_status_patch(pod, record, incident=incident, wall_s=wall_s)
        if patches.is_terminal(pod):
            body = None  # A finished Pod serves nothing, so only its record is removed.

        if body is not None:
            patched = await self._writer.patch_status(pod, body)
            if patched is None:
                return None
            pod = patched

        def remove(current: Json) -> dict[str, Any] | None:
            # A different record means the Pod was cut again meanwhile: that one stays.
            if patches.pod_annotations(current).get(CUT_ANNOTATION) != text:
                return None
            return patches.remove_annotation_patch(current["metadata"]["resourceVersion"])

        outcome = await self._writer.patch_metadata(pod, remove)
        if outcome is None:
            return None
        pod = outcome[0]
        note = f"Traffic restored by the isolator after incident {incident}"
        events.add(pod, patches.RESTORE_REASON, "Restore", note, warning=False)
        logger.info("Pod restored", extra=extra)
        return Restored(key, pod, was_ready)
