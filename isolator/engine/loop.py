"""The control loop: gather evidence, classify, decide and act, one pass per loop interval.

Work is keyed by node: at most one action per node is in flight, and every pass re-reads the
current evidence instead of trusting what an earlier pass concluded.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from isolator.clock import Clock
from isolator.engine.alerts import AlertLedger, IncomingAlert
from isolator.engine.classify import Thresholds, classify, classify_node
from isolator.engine.decide import Decision, Kind, Memory, Policy, decide
from isolator.engine.evidence import EvidenceStore
from isolator.engine.grey import GreyScorer, apply_grey_scores
from isolator.engine.ports import ActionOutcome, AlertReader, Cluster, Prober, SiteViewReader
from isolator.learning import GreyScore
from isolator.metrics import Metrics
from isolator.model import Assessment, GlobalVerdict, NodeVerdict
from isolator.settings import Settings
from isolator.sources.errors import SourceError

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("isolator.audit")

AUDIT_RECORDS_KEPT = 1000
PROBE_CONCURRENCY = 64


@dataclass(slots=True)
class Isolation:
    """A node whose Pods the isolator has cut, with the details of that cut."""

    node: str
    region: str
    incident: str
    reason: str
    started_at: float  # wall-clock seconds, for people
    pods: tuple[str, ...] = ()
    verified: bool = False
    detail: str = ""
    dry_run: bool = False  # decided and reported, nothing written to Kubernetes


@dataclass(slots=True)
class LoopState:
    """The controller's view after the latest pass, for the read API."""

    assessment: Assessment | None = None
    holds: list[Decision] = field(default_factory=list)
    passes: int = 0
    last_pass_at: float | None = None  # monotonic


class Controller:
    """Runs the inventory, probe and decision loops and owns the isolations."""

    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        site_reader: SiteViewReader,
        prober: Prober,
        metrics: Metrics,
        clock: Clock,
        alert_reader: AlertReader | None = None,
        grey_scorer: GreyScorer | None = None,
    ) -> None:
        self.settings = settings
        self.store = EvidenceStore()
        self.alerts = AlertLedger(self.store)
        self._alert_reader = alert_reader
        self._reread: asyncio.Task[None] | None = None
        self._grey_scorer = grey_scorer
        self.grey_scores: dict[str, GreyScore] = {}
        self.state = LoopState()
        self.isolations: dict[str, Isolation] = {}
        self.audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_RECORDS_KEPT)
        self._cluster = cluster
        self._site_reader = site_reader
        self._prober = prober
        self._metrics = metrics
        self._clock = clock
        self._memory = Memory.empty(started_at=clock.monotonic())
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._site_view_error: str | None = None
        self._published: dict[str, str] = {}  # node -> region with per-node metric series
        self._limits = Thresholds(
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            site_max_age_s=settings.site_max_age_s,
            fail_safe_region_fraction=settings.fail_safe_region_fraction,
            component_failure_count=settings.component_failure_count,
        )
        self._policy = Policy(
            correlation_window_s=settings.correlation_window_s,
            restore_hold_s=settings.restore_hold_s,
            region_max_cut_fraction=settings.region_max_cut_fraction,
            region_min_cut_nodes=settings.region_min_cut_nodes,
            startup_grace_s=settings.startup_grace_s,
            cuts_per_minute=settings.cuts_per_minute,
            region_cooldown_s=settings.region_cooldown_s,
        )

    async def run(self) -> None:
        """Run until cancelled; errors in one pass are logged and the loop goes on."""
        await self._recover_isolations()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._every(self.settings.inventory_refresh_s, self.refresh))
                group.create_task(self._every(self.settings.heartbeat_interval_s, self.probe))
                group.create_task(self._every(self.settings.loop_interval_s, self.tick))
                if self._grey_scorer is not None:
                    interval = self.settings.grey_score_interval_s
                    group.create_task(self._every(interval, self.score_grey))
        finally:
            for task in self._in_flight.values():
                task.cancel()
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _every(self, period_s: float, step: Any) -> None:
        while True:
            started = self._clock.monotonic()
            try:
                await step()
            except SourceError as err:
                logger.warning("pass failed", extra={"step": step.__name__, "error": str(err)})
                self._metrics.loop_errors.inc()
            except Exception:
                logger.exception("pass raised", extra={"step": step.__name__})
                self._metrics.loop_errors.inc()
            await self._clock.sleep(period_s - (self._clock.monotonic() - started))

    async def _recover_isolations(self) -> None:
        """Rebuild the isolations from the cut records that Kubernetes holds.

        Nothing is decided before this succeeds: acting without knowing what is already cut
        could cut a region twice over its budget or miss a restore.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                cut = await self._cluster.cut_nodes()
                break
            except SourceError as err:
                logger.warning(
                    "could not read existing cuts, will retry",
                    extra={"attempt": attempt, "error": str(err)},
                )
                await self._clock.sleep(self.settings.inventory_refresh_s)
        for node, pods in cut.items():
            self.isolations[node] = Isolation(
                node=node,
                region="",
                incident="recovered",
                reason="cut found in Kubernetes at start-up",
                started_at=self._clock.wall(),
                pods=tuple(pods),
                verified=True,
            )
            logger.info("isolation recovered", extra={"node": node, "pods": len(pods)})

    async def refresh(self) -> None:
        """List the edge nodes and set the serving gate on Pods of healthy nodes."""
        nodes = await self._cluster.list_edge_nodes()
        self.store.sync_inventory(nodes)
        for node in nodes:
            isolation = self.isolations.get(node.name)
            if isolation is not None and not isolation.region:
                isolation.region = node.region
        for name in self._healthy_uncut():
            await self._cluster.ensure_serving(name)

    def _healthy_uncut(self) -> list[str]:
        assessment = self.state.assessment
        if assessment is None:
            return []
        return [
            name
            for name, node in assessment.nodes.items()
            if node.verdict is NodeVerdict.HEALTHY
            and name not in self.isolations
            and name not in self._in_flight
        ]

    async def score_grey(self) -> None:
        """Score every node for grey failure; the next passes use the scores."""
        if self._grey_scorer is not None:
            self.grey_scores = await self._grey_scorer.score(self.store.nodes)

    async def probe(self) -> None:
        """Probe every agent once, with bounded concurrency."""
        limit = asyncio.Semaphore(PROBE_CONCURRENCY)

        async def one(node: str, url: str) -> None:
            async with limit:
                started = self._clock.monotonic()
                ok = await self._prober.probe(node, url)
                rtt = self._clock.monotonic() - started
            self.store.record_probe(node, ok, self._clock.monotonic(), rtt_s=rtt)
            self._metrics.probes.labels("ok" if ok else "error").inc()

        await asyncio.gather(*(one(n, u) for n, u in list(self.store.agent_urls.items())))

    async def tick(self) -> None:
        """Run one pass: read the site view, classify, decide and start the actions."""
        started = self._clock.monotonic()
        try:
            view = await self._site_reader.read_site_view()
            self._metrics.prometheus_queries.labels("ok").inc()
            if self._site_view_error is not None:
                logger.info("site view available again")
                self._site_view_error = None
        except SourceError as err:
            self._metrics.prometheus_queries.labels("error").inc()
            # Logged when the failure starts or changes, not on every pass.
            if str(err) != self._site_view_error:
                logger.warning("site view unavailable", extra={"error": str(err)})
                self._site_view_error = str(err)
            view = None
        self.store.apply_site_view(view)

        now = self._clock.monotonic()
        assessment = classify(self.store.nodes, self.store.regions, now, self._limits)
        if self.grey_scores:
            threshold = self.settings.grey_suspect_threshold
            assessment = apply_grey_scores(assessment, self.grey_scores, threshold)
        newly_healthy = self._newly_healthy(assessment)
        self._memory.update(assessment, now)
        isolated = {name: iso.region for name, iso in self.isolations.items()}
        decisions = decide(assessment, isolated, self._memory, now, self._policy)

        self.state.assessment = assessment
        self.state.holds = [d for d in decisions if d.kind is Kind.HOLD]
        self.state.passes += 1
        self.state.last_pass_at = now
        self._publish(assessment)
        for decision in decisions:
            self._start(decision)
        for name in newly_healthy:
            if name not in self.isolations and name not in self._in_flight:
                self._in_flight[name] = asyncio.create_task(self._ensure_serving(name))
        self._metrics.loop_seconds.observe(self._clock.monotonic() - started)

    def _newly_healthy(self, assessment: Assessment) -> list[str]:
        previous = self.state.assessment
        return [
            name
            for name, node in assessment.nodes.items()
            if node.verdict is NodeVerdict.HEALTHY
            and (
                previous is None
                or name not in previous.nodes
                or previous.nodes[name].verdict is not NodeVerdict.HEALTHY
            )
        ]

    def _publish(self, assessment: Assessment) -> None:
        self._metrics.fail_safe.set(int(assessment.verdict is GlobalVerdict.FAIL_SAFE))
        self._metrics.isolated_nodes.set(len(self.isolations))
        for region, verdict in assessment.regions.items():
            counts = Counter(n.verdict for n in assessment.nodes.values() if n.region == region)
            self._metrics.set_region(region, verdict.verdict, dict(counts))
        now = self._clock.monotonic()
        for name, node in assessment.nodes.items():
            self._metrics.set_node(node, self.store.nodes[name], now)
        for name, region in self._published.items() - {
            (n.node, n.region) for n in assessment.nodes.values()
        }:
            self._metrics.forget_node(region, name)
        self._published = {n.node: n.region for n in assessment.nodes.values()}

    def _start(self, decision: Decision) -> None:
        if decision.kind is Kind.HOLD:
            self._metrics.cuts_held.labels(decision.reason.split(":")[0]).inc()
            return
        if decision.node in self._in_flight:
            return
        action = self._cut if decision.kind is Kind.CUT else self._restore
        task = asyncio.create_task(action(decision))
        self._in_flight[decision.node] = task
        task.add_done_callback(lambda _: self._in_flight.pop(decision.node, None))

    async def _ensure_serving(self, node: str) -> None:
        try:
            await self._cluster.ensure_serving(node)
        except SourceError as err:
            logger.warning("could not set the serving gate", extra={"node": node, "error": err})
        finally:
            self._in_flight.pop(node, None)

    async def _cut(self, decision: Decision) -> None:
        if not self._still_failed(decision.node):
            logger.info("cut dropped: evidence changed", extra={"node": decision.node})
            return
        incident = uuid.uuid4().hex[:12]
        isolation = Isolation(
            node=decision.node,
            region=decision.region,
            incident=incident,
            reason=decision.reason,
            started_at=self._clock.wall(),
            dry_run=self.settings.dry_run,
        )
        self.isolations[decision.node] = isolation
        outcome = await self._act("cut", decision, incident)
        if outcome is None:
            self.isolations.pop(decision.node, None)
            return
        isolation.pods, isolation.verified, isolation.detail = (
            outcome.pods,
            outcome.verified,
            outcome.detail,
        )

    def request_alert_reread(self) -> bool:
        """Start reading the full alert set unless a read is running; False without a reader."""
        if self._alert_reader is None:
            return False
        if self._reread is None or self._reread.done():
            self._reread = asyncio.create_task(self._reread_alerts(self._alert_reader))
        return True

    async def wait_for_alert_reread(self) -> None:
        """Wait until the running alert re-read, if any, has finished."""
        if self._reread is not None:
            await self._reread

    async def _reread_alerts(self, reader: AlertReader) -> None:
        try:
            active = await reader.active_alerts()
        except SourceError as err:
            logger.warning("alert re-read failed", extra={"error": str(err)})
            return
        alerts = [
            IncomingAlert(
                fingerprint, starts_at, firing, labels.get("alertname", ""), labels.get("node")
            )
            for fingerprint, starts_at, firing, labels in active
        ]
        counts = self.alerts.replace_active(alerts)
        logger.info("alerts re-read", extra=counts)

    def _still_failed(self, node: str) -> bool:
        """Classify the node again on the evidence as it is now, right before cutting it."""
        evidence = self.store.nodes.get(node)
        if evidence is None:
            return False
        fresh = classify_node(evidence, self._clock.monotonic(), self._limits)
        return fresh.verdict is NodeVerdict.FAILED

    async def _restore(self, decision: Decision) -> None:
        isolation = self.isolations.get(decision.node)
        incident = isolation.incident if isolation else uuid.uuid4().hex[:12]
        outcome = await self._act("restore", decision, incident)
        if outcome is not None and (outcome.verified or self.settings.dry_run):
            self.isolations.pop(decision.node, None)
            self._memory.healthy_since.pop(decision.node, None)

    async def _act(self, kind: str, decision: Decision, incident: str) -> ActionOutcome | None:
        """Run one cut or restore and write its audit record; None when it raised."""
        context = {"node": decision.node, "region": decision.region, "incident": incident}
        logger.info("action started", extra={**context, "action": kind, "reason": decision.reason})
        try:
            if kind == "cut":
                outcome = await self._cluster.cut_node(decision.node, decision.reason, incident)
            else:
                outcome = await self._cluster.restore_node(decision.node, incident)
        except SourceError as err:
            logger.error("action failed", extra={**context, "action": kind, "error": str(err)})
            self._metrics.actions.labels(kind, "error").inc()
            self._record_audit(kind, decision, incident, "error", str(err), ())
            return None
        result = (
            "dry_run"
            if self.settings.dry_run
            else ("verified" if outcome.verified else "unverified")
        )
        self._metrics.actions.labels(kind, result).inc()
        self._record_audit(kind, decision, incident, result, outcome.detail, outcome.pods)
        log = logger.info if outcome.verified or self.settings.dry_run else logger.warning
        log(
            "action finished",
            extra={**context, "action": kind, "result": result, "pods": len(outcome.pods)},
        )
        return outcome

    def _record_audit(
        self,
        kind: str,
        decision: Decision,
        incident: str,
        result: str,
        detail: str,
        pods: tuple[str, ...],
    ) -> None:
        record = {
            "at": self._clock.wall(),
            "action": kind,
            "node": decision.node,
            "region": decision.region,
            "incident": incident,
            "reason": decision.reason,
            "result": result,
            "detail": detail,
            "pods": list(pods),
            "dry_run": self.settings.dry_run,
        }
        self.audit.append(record)
        audit_logger.info("action recorded", extra=record)
