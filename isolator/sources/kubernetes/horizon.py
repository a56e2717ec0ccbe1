"""Split horizon for a partitioned region: cloud-side Ingress routes move to a fallback Service.

A region cut off from the cloud keeps serving its local users, so nothing inside the site is
touched. Only the cloud-side Ingresses labelled for the region send their traffic elsewhere:
every backend of the Ingress (its rules and its default backend) is replaced by the region's
fallback Service. The original spec is kept in SPLIT_ANNOTATION on the Ingress, and restore
puts back exactly that spec.

Every patch is a JSON patch that also sets the resourceVersion that was read, so the API server
rejects it with 409 Conflict when the Ingress changed in between.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from isolator.clock import Clock
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import CONFLICT, NOT_FOUND, KubernetesClient
from isolator.sources.kubernetes.errors import MAX_ATTEMPTS, KubernetesError
from isolator.sources.kubernetes.events import object_reference
from isolator.sources.kubernetes.patches import Json
from isolator.sources.kubernetes.readback import name_pods
from isolator.sources.kubernetes.writes import PodWriter

logger = logging.getLogger(__name__)

# Record of a split on the Ingress: the original spec and why it was replaced.
SPLIT_ANNOTATION = "isolator.io/split-horizon"
# Fallback Service of one Ingress, "name" or "name:port" (a number or a port name), in the
# Ingress's namespace. It overrides the region's fallback from the settings.
FALLBACK_ANNOTATION = "isolator.io/fallback-service"

INGRESS_API = ("networking.k8s.io/v1", "Ingress")
SPLIT_REASON = "IsolatorSplitHorizon"
REJOIN_REASON = "IsolatorRejoin"


class InvalidFallbackError(ValueError):
    """A fallback Service reference is not "name" or "name:port"."""


@dataclass(frozen=True, slots=True)
class Fallback:
    """The Service that takes a partitioned region's cloud-side traffic."""

    service: str
    port: int | str | None  # None keeps each backend's own port

    @classmethod
    def parse(cls, text: str) -> Fallback:
        name, _, port = text.strip().partition(":")
        if not name:
            raise InvalidFallbackError(f"fallback Service {text!r} has no name")
        if not port:
            return cls(name, None)
        return cls(name, int(port) if port.isdigit() else port)

    def __str__(self) -> str:
        return self.service if self.port is None else f"{self.service}:{self.port}"

    def backend(self, current: Json | None) -> dict[str, Any]:
        """Return the backend that replaces ``current``, keeping its port when none is set."""
        if self.port is None:
            port = ((current or {}).get("service") or {}).get("port") or {"number": 80}
        elif isinstance(self.port, int):
            port = {"number": self.port}
        else:
            port = {"name": self.port}
        return {"service": {"name": self.service, "port": copy.deepcopy(port)}}


@dataclass(frozen=True, slots=True)
class SplitRecord:
    """What a split replaced on one Ingress, kept in SPLIT_ANNOTATION."""

    region: str
    incident: str
    reason: str
    at: str  # RFC 3339
    fallback: str
    spec: dict[str, Any]  # the Ingress spec before the split
    who: str | None = None  # the person behind a manual split; None when automatic
    expires_at: str | None = None  # RFC 3339 end of a manual split

    def to_annotation(self) -> str:
        data = {
            "region": self.region,
            "incident": self.incident,
            "reason": self.reason,
            "at": self.at,
            "fallback": self.fallback,
            "spec": self.spec,
            "who": self.who,
            "expiresAt": self.expires_at,
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def of(cls, ingress: Json) -> SplitRecord | None:
        """Return the Ingress's record, or None when it has none or it is unreadable."""
        text = _annotations(ingress).get(SPLIT_ANNOTATION)
        if text is None:
            return None
        try:
            data = json.loads(text)
            Fallback.parse(str(data["fallback"]))
            return cls(
                region=str(data["region"]),
                incident=str(data["incident"]),
                reason=str(data["reason"]),
                at=str(data["at"]),
                fallback=str(data["fallback"]),
                spec=dict(data["spec"]),
                who=data.get("who"),
                expires_at=data.get("expiresAt"),
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("Split record is unreadable", extra={"ingress": ingress_key(ingress)})
            return None


@dataclass(frozen=True)
class SplitResult:
    """Outcome of a split or rejoin of one region's cloud-side Ingresses."""

    region: str
    ingresses: tuple[str, ...]  # "namespace/name" of every Ingress changed
    verified: bool  # reading the Ingresses back shows the intended routes
    detail: str


@dataclass(frozen=True, slots=True)
class SplitRequest:
    """What one split asks for."""

    region: str
    reason: str
    incident: str
    who: str | None = None
    expires_at: str | None = None


def _annotations(obj: Json) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def ingress_key(ingress: Json) -> str:
    return patches.pod_key(ingress)  # "namespace/name", the same for any namespaced object


def split_spec(spec: Json, fallback: Fallback) -> dict[str, Any]:
    """Return ``spec`` with every backend, default and per path, replaced by the fallback."""
    result = copy.deepcopy(dict(spec))
    if "defaultBackend" in result:
        result["defaultBackend"] = fallback.backend(result["defaultBackend"])
    for rule in result.get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            path["backend"] = fallback.backend(path.get("backend"))
    return result


def _escape(key: str) -> str:
    """Escape a key for a JSON pointer (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def split_patch(ingress: Json, record: SplitRecord, spec: Json) -> list[dict[str, Any]]:
    """Build the JSON patch that stores the record and replaces the spec."""
    metadata = ingress.get("metadata") or {}
    operations: list[dict[str, Any]] = [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": metadata["resourceVersion"]}
    ]
    if metadata.get("annotations"):
        path = f"/metadata/annotations/{_escape(SPLIT_ANNOTATION)}"
        operations.append({"op": "add", "path": path, "value": record.to_annotation()})
    else:
        value = {SPLIT_ANNOTATION: record.to_annotation()}
        operations.append({"op": "add", "path": "/metadata/annotations", "value": value})
    operations.append({"op": "replace", "path": "/spec", "value": dict(spec)})
    return operations


def rejoin_patch(ingress: Json, record: SplitRecord) -> list[dict[str, Any]]:
    """Build the JSON patch that puts back the recorded spec and removes the record."""
    version = (ingress.get("metadata") or {})["resourceVersion"]
    return [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": version},
        {"op": "replace", "path": "/spec", "value": record.spec},
        {"op": "remove", "path": f"/metadata/annotations/{_escape(SPLIT_ANNOTATION)}"},
    ]


class IngressHorizon:
    """Moves a region's cloud-side Ingress routes to its fallback and back, and reads them back."""

    def __init__(self, kube: KubernetesClient, writer: PodWriter, *, clock: Clock) -> None:
        self._kube = kube
        self._writer = writer
        self._clock = clock

    async def split(
        self,
        request: SplitRequest,
        *,
        region_label: str,
        fallbacks: Mapping[str, str],
        dry_run: bool,
    ) -> SplitResult:
        """Move every Ingress labelled ``region_label=<region>`` to its fallback Service.

        The fallback comes from the Ingress's FALLBACK_ANNOTATION, else from ``fallbacks``
        (region -> "name" or "name:port"). An Ingress without a fallback, or whose fallback
        Service does not exist in its namespace, keeps its routes and makes the result
        unverified.
        """
        region = request.region
        ingresses = await self._kube.list_ingresses(f"{region_label}={region}")
        planned: list[tuple[Json, Fallback]] = []
        problems: list[str] = []
        for ingress in ingresses:
            fallback, problem = await self._fallback(ingress, fallbacks.get(region))
            if fallback is None:
                problems.append(f"{ingress_key(ingress)}: {problem}")
            elif self._wanted(ingress, fallback, request, wall_s=0.0) is not None:
                planned.append((ingress, fallback))
        keys = tuple(sorted(ingress_key(ingress) for ingress, _ in planned))
        if dry_run:
            detail = f"dry run: would move {len(keys)} Ingresses of region {region} to fallback"
            return SplitResult(region, keys, False, _with_problems(detail, problems))

        changed = []
        for target, fallback in planned:
            if await self._split_one(target, fallback, request):
                changed.append(ingress_key(target))
        pending = await self._pending_split(region_label, region)
        verified = not pending and not problems
        detail = (
            f"moved {len(changed)} of {len(ingresses)} Ingresses of region {region} to their "
            f"fallback for incident {request.incident}; "
            + (
                f"{len(pending)} not on their fallback: {name_pods(pending)}"
                if pending
                else "read back"
            )
        )
        logger.info("Region split", extra={"region": region, "ingresses": len(changed)})
        return SplitResult(
            region, tuple(sorted(changed)), verified, _with_problems(detail, problems)
        )

    async def rejoin(self, region: str, incident: str, *, dry_run: bool) -> SplitResult:
        """Put back the recorded spec of every Ingress that a split of ``region`` moved."""
        recorded = [
            (ingress, record)
            for ingress in await self._kube.list_ingresses()
            if (record := SplitRecord.of(ingress)) is not None and record.region == region
        ]
        keys = tuple(sorted(ingress_key(ingress) for ingress, _ in recorded))
        if dry_run:
            detail = f"dry run: would put back {len(keys)} Ingresses of region {region}"
            return SplitResult(region, keys, False, detail)
        changed = []
        for ingress, _ in recorded:
            if await self._rejoin_one(ingress, incident):
                changed.append(ingress_key(ingress))
        left = [
            ingress_key(ingress)
            for ingress in await self._kube.list_ingresses()
            if (record := SplitRecord.of(ingress)) is not None and record.region == region
        ]
        detail = (
            f"put back {len(changed)} Ingresses of region {region} after incident {incident}; "
            + (f"{len(left)} still split: {name_pods(left)}" if left else "read back")
        )
        logger.info("Region rejoined", extra={"region": region, "ingresses": len(changed)})
        return SplitResult(region, tuple(sorted(changed)), not left, detail)

    async def recorded(self) -> list[tuple[str, SplitRecord, bool]]:
        """Return ("namespace/name", record, whether its routes go to the fallback) of every
        Ingress that carries a split record."""
        return [
            (
                ingress_key(ingress),
                record,
                self._is_split_to(ingress, Fallback.parse(record.fallback)),
            )
            for ingress in await self._kube.list_ingresses()
            if (record := SplitRecord.of(ingress)) is not None
        ]

    async def _fallback(self, ingress: Json, configured: str | None) -> tuple[Fallback | None, str]:
        text = _annotations(ingress).get(FALLBACK_ANNOTATION) or configured
        if not text:
            return None, f"no fallback Service (set the {FALLBACK_ANNOTATION} annotation)"
        try:
            fallback = Fallback.parse(text)
        except InvalidFallbackError as err:
            return None, str(err)
        namespace = (ingress.get("metadata") or {}).get("namespace", "")
        services = await self._kube.list_services(namespace)
        names = {(s.get("metadata") or {}).get("name") for s in services}
        if fallback.service not in names:
            return None, f"fallback Service {fallback.service} not found in namespace {namespace}"
        return fallback, ""

    @staticmethod
    def _is_split_to(ingress: Json, fallback: Fallback) -> bool:
        """Tell whether the Ingress is split and its routes go to ``fallback``."""
        record = SplitRecord.of(ingress)
        return record is not None and ingress.get("spec") == split_spec(record.spec, fallback)

    @staticmethod
    def _wanted(
        current: Json, fallback: Fallback, request: SplitRequest, *, wall_s: float
    ) -> tuple[SplitRecord, dict[str, Any]] | None:
        """Return the record and spec that a split must write, or None when both are there.

        An existing record keeps the original spec while the routes are the original or an
        earlier split: a person taking over updates who and the expiry, a changed fallback
        the routes. Routes that another writer changed to something else are what this split
        replaces, so the record then holds them.
        """
        spec = dict(current.get("spec") or {})
        previous = SplitRecord.of(current)
        if previous is not None and spec in (
            previous.spec,
            split_spec(previous.spec, Fallback.parse(previous.fallback)),
        ):
            manual = request.who is not None
            record = dataclasses.replace(
                previous,
                fallback=str(fallback),
                who=request.who if manual else previous.who,
                reason=request.reason if manual else previous.reason,
                expires_at=request.expires_at if manual else previous.expires_at,
            )
        else:
            record = SplitRecord(
                region=request.region,
                incident=request.incident,
                reason=request.reason,
                at=patches.rfc3339(wall_s),
                fallback=str(fallback),
                spec=copy.deepcopy(spec),
                who=request.who,
                expires_at=request.expires_at,
            )
        wanted = split_spec(record.spec, fallback)
        if record == previous and spec == wanted:
            return None
        return record, wanted

    async def _split_one(self, ingress: Json, fallback: Fallback, request: SplitRequest) -> bool:
        def build(current: Json) -> list[dict[str, Any]] | None:
            wanted = self._wanted(current, fallback, request, wall_s=self._clock.wall())
            return None if wanted is None else split_patch(current, *wanted)

        note = (
            f"Cloud-side routes of region {request.region} moved to {fallback} by the isolator "
            f"for incident {request.incident}: {request.reason}"
        )
        return await self._patch(ingress, build, SPLIT_REASON, "SplitHorizon", note, warning=True)

    async def _rejoin_one(self, ingress: Json, incident: str) -> bool:
        def build(current: Json) -> list[dict[str, Any]] | None:
            record = SplitRecord.of(current)
            return None if record is None else rejoin_patch(current, record)

        note = f"Cloud-side routes put back by the isolator after incident {incident}"
        return await self._patch(ingress, build, REJOIN_REASON, "Rejoin", note, warning=False)

    async def _pending_split(self, region_label: str, region: str) -> list[str]:
        pending = []
        for ingress in await self._kube.list_ingresses(f"{region_label}={region}"):
            record = SplitRecord.of(ingress)
            if record is None or not self._is_split_to(ingress, Fallback.parse(record.fallback)):
                pending.append(ingress_key(ingress))
        return sorted(pending)

    async def _patch(
        self,
        ingress: Json,
        build: Any,
        reason: str,
        action: str,
        note: str,
        *,
        warning: bool,
    ) -> bool:
        """Apply ``build(ingress)``; on 409 Conflict read the Ingress again and rebuild,
        MAX_ATTEMPTS times in all. Returns whether anything was written."""
        namespace, name = patches.split_pod_key(ingress_key(ingress))
        current: Json | None = ingress
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if current is None:
                return False
            body = build(current)
            if body is None:
                return False
            try:
                written = await self._kube.patch_ingress(namespace, name, body)
            except KubernetesError as err:
                if err.status == NOT_FOUND:
                    return False
                if err.status != CONFLICT or attempt == MAX_ATTEMPTS:
                    raise
                logger.info(
                    "Ingress changed since it was read, reading it again",
                    extra={"ingress": f"{namespace}/{name}", "attempt": attempt},
                )
                current = await self._reread(namespace, name)
                continue
            reference = object_reference(written, *INGRESS_API)
            await self._writer.emit_object_event(reference, reason, action, note, warning=warning)
            return True
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _reread(self, namespace: str, name: str) -> Json | None:
        for ingress in await self._kube.list_ingresses():
            if ingress_key(ingress) == f"{namespace}/{name}":
                return ingress
        return None


def _with_problems(detail: str, problems: Sequence[str]) -> str:
    if not problems:
        return detail
    return f"{detail}; {len(problems)} Ingresses left as they are: {name_pods(problems)}"
