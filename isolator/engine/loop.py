"""The control loop: gather evidence, classify, decide and act, one pass per loop interval.

Work is keyed by target (a node, a Pod or a region): at most one action per target is in
flight, and every pass re-reads the current evidence instead of trusting what an earlier pass
concluded. Cuts that reading back did not confirm are attempted again a bounded number of times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from isolator.clock import Clock
from isolator.engine.alerts import AlertLedger, IncomingAlert
from isolator.engine.capacity import MIN_READY_CHECK, UNKNOWN_CHECK, CensusCache, ServiceCapacity
from isolator.engine.classify import Thresholds, classify, classify_node
from isolator.engine.decide import (
    Decision,
    Kind,
    Memory,
    Policy,
    cut_scope,
    decide,
    decide_splits,
    widens,
)
from isolator.engine.drift import RECHECK_KEY, UNKNOWN_WRITER, CutRecheck
from isolator.engine.evidence import EvidenceStore
from isolator.engine.grey import GreyScorer, apply_grey_scores
from isolator.engine.hysteresis import RegionHysteresis
from isolator.engine.ports import (
    AlertReader,
    Cluster,
    CutScope,
    Prober,
    RecordedIsolation,
    SiteViewReader,
    TargetKind,
)
from isolator.learning import GreyScore
from isolator.metrics import Metrics
from isolator.model import Assessment, GlobalVerdict, NodeAssessment, NodeVerdict
from isolator.settings import Settings
from isolator.sources.errors import SourceError

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("isolator.audit")

AUDIT_RECORDS_KEPT = 1000
# Nodes that just became healthy get one Pod list each up to this many, one list of all Pods
# beyond it.
SERVE_NODE_BY_NODE_MAX = 8
PROBE_CONCURRENCY = 64
# Who the audit names for the control loop's own actions, TTL expiries included.
CONTROLLER = "isolator"
# In-flight key of the read of the Services' ready endpoints; no node name contains a colon.
CENSUS_KEY = "census:"

T = TypeVar("T")


@dataclass(slots=True)
class Isolation:
    """A node, Pod or region that the isolator has cut, with the details of that cut."""

    node: str  # the node of a node or Pod isolation; "" for a region
    region: str
    incident: str
    reason: str
    started_at: float  # wall-clock seconds, for people
    pods: tuple[str, ...] = ()  # Pods cut, or for a region the Ingresses moved
    verified: bool = False
    detail: str = ""
    dry_run: bool = False  # decided and reported, nothing written to Kubernetes
    kind: TargetKind = TargetKind.NODE
    target: str = ""  # "namespace/name" of a Pod or the region; "" for a node
    scope: str = CutScope.NODE.value  # a CutScope value for nodes; "split" for regions
    who: str | None = None  # the person behind a manual isolation; None when automatic
    expires_at: float | None = None  # wall-clock end of a manual isolation
    attempts: int = 0  # cuts tried so far
    retry_at: float = 0.0  # monotonic time before which no further attempt starts
    drifts: int = 0  # times a re-verification found the cut undone
    degraded: bool = False  # undone after verification with the retry budget spent

    @property
    def name(self) -> str:
        """Return the node, the Pod's "namespace/name" or the region."""
        return self.target or self.node

    @property
    def key(self) -> str:
        """Return the key under which at most one action on this target is in flight."""
        return target_key(self.kind, self.name)


def target_key(kind: TargetKind, name: str) -> str:
    """Return the in-flight key of a target: a node's own name, or "kind:name"."""
    return name if kind is TargetKind.NODE else f"{kind}:{name}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one cut or restore of any target changed, and whether reading back confirmed it."""

    verified: bool
    detail: str
    objects: tuple[str, ...]  # Pods, or for a region the Ingresses


def _recovered(record: RecordedIsolation, wall_s: float) -> Isolation:
    kind = TargetKind(record.kind)
    return Isolation(
        node=record.node,
        region=record.target if kind is TargetKind.REGION else "",
        incident=record.incident,
        reason=record.reason,
        started_at=record.started_at if record.started_at is not None else wall_s,
        pods=record.objects,
        verified=record.complete,
        detail="recovered from the records in Kubernetes at start-up",
        kind=kind,
        target="" if kind is TargetKind.NODE else record.target,
        scope=record.scope,
        who=record.who,
        expires_at=record.expires_at,
        attempts=1,
    )


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
        leading: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        # Whether this replica holds the leader Lease; None acts without leader election.
        self._leading = leading
        self._acting = leading is None  # with election: leads and has recovered the records
        metrics.leader.set(int(self._acting))
        self.store = EvidenceStore(outage_gap_s=settings.heartbeat_timeout_s)
        self.alerts = AlertLedger(self.store)
        self._alert_reader = alert_reader
        self._reread: asyncio.Task[None] | None = None
        self._grey_scorer = grey_scorer
        self.grey_scores: dict[str, GreyScore] = {}
        self._grey_scored_at = 0.0  # monotonic time the latest scoring started
        self.state = LoopState()
        self.isolations: dict[str, Isolation] = {}  # node -> its cut
        self.pod_isolations: dict[str, Isolation] = {}  # "namespace/name" -> its isolation
        self.splits: dict[str, Isolation] = {}  # region -> its split horizon
        self.audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_RECORDS_KEPT)
        self._cluster = cluster
        self._site_reader = site_reader
        self._prober = prober
        self._metrics = metrics
        self._clock = clock
        self._memory = Memory.empty(started_at=clock.monotonic())
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self._recheck = CutRecheck(
            cluster,
            metrics,
            clock,
            interval_s=settings.cut_recheck_interval_s,
            retry_limit=settings.action_retry_limit,
        )
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
            ingress_components=tuple(settings.ingress_components),
        )
        self._hysteresis = RegionHysteresis(settings.region_verdict_hold_s)
        self._census = CensusCache(max_age_s=settings.inventory_refresh_s)
        self._capacity = ServiceCapacity(None, settings.min_ready_endpoints)
        self._capacity_holds: dict[str, str] = {}  # node -> its audited capacity hold
        self._widen_holds: dict[str, str] = {}  # node -> why its cut was not widened

    async def run(self) -> None:
        """Run until cancelled; errors in one pass are logged and the loop goes on.

        With leader election the isolations are recovered when this replica becomes the
        leader, not here, since the leader may cut and restore until then.
        """
        if self._leading is None:
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
        """Rebuild the isolations from the records that Kubernetes holds.

        Nothing is decided before this succeeds: acting without knowing what is already cut
        could cut a region twice over its budget or miss a restore. An isolation whose records
        show a cut or restore that stopped halfway comes back unverified, and the first pass
        completes its cut.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                recorded = await self._cluster.recorded_isolations()
                break
            except SourceError as err:
                logger.warning(
                    "could not read existing cuts, will retry",
                    extra={"attempt": attempt, "error": str(err)},
                )
                await self._clock.sleep(self.settings.inventory_refresh_s)
        self._load_recorded(recorded)

    def _load_recorded(self, recorded: Sequence[RecordedIsolation]) -> None:
        for record in recorded:
            isolation = _recovered(record, self._clock.wall())
            self._table(isolation.kind)[isolation.name] = isolation
            logger.info(
                "isolation recovered",
                extra={
                    "kind": isolation.kind.value,
                    "target": isolation.name,
                    "objects": len(isolation.pods),
                    "complete": isolation.verified,
                },
            )

    @property
    def acting(self) -> bool:
        """Whether this replica cuts and restores: always without leader election, else while
        it leads and once it has recovered the recorded isolations."""
        return self._acting and (self._leading is None or self._leading())

    async def _may_act(self) -> bool:
        """Take over as leader or stand down, as the Lease requires; True when this pass may act."""
        if self._leading is None:
            return True
        if not self._leading():
            self.stand_down()
            return False
        if not self._acting:
            # This pass decided on the tables from before the take-over, so it acts on nothing.
            await self._take_over()
            return False
        return True

    async def _take_over(self) -> None:
        """Recover the isolations that the cluster records before acting as the new leader.

        The previous leader may have cut or restored anything since this replica last led,
        so its own tables are replaced. Acting starts only once the records are read.
        """
        try:
            recorded = await self._cluster.recorded_isolations()
        except SourceError as err:
            logger.warning(
                "could not read existing cuts before acting as leader, will retry",
                extra={"error": str(err)},
            )
            return
        for table in (self.isolations, self.pod_isolations, self.splits):
            table.clear()
        self._load_recorded(recorded)
        # The previous leader received the heartbeats until now, so this replica's history is
        # as thin as after a restart: the start-up grace applies again.
        self._memory = Memory.empty(started_at=self._clock.monotonic())
        self._acting = True
        self._metrics.leader.set(1)
        logger.info("acting as leader", extra={"isolations": len(recorded)})

    def stand_down(self) -> None:
        """Stop acting at once: cancel every action in flight and forget the isolations.

        A Pod cut writes its record before it changes any condition, so the next leader
        recovers a cancelled cut from that record and completes it.
        """
        if not self._acting or self._leading is None:
            return
        self._acting = False
        self._metrics.leader.set(0)
        cancelled = len(self._in_flight)
        for task in self._in_flight.values():
            task.cancel()
        for table in (self.isolations, self.pod_isolations, self.splits):
            table.clear()
        logger.warning("stopped acting: leadership lost", extra={"cancelled": cancelled})

    def _table(self, kind: TargetKind) -> dict[str, Isolation]:
        if kind is TargetKind.NODE:
            return self.isolations
        return self.pod_isolations if kind is TargetKind.POD else self.splits

    def all_isolations(self) -> list[Isolation]:
        """Return every current isolation: nodes, then Pods, then regions."""
        return [*self.isolations.values(), *self.pod_isolations.values(), *self.splits.values()]

    async def refresh(self) -> None:
        """List the edge nodes and set the serving gate on Pods of healthy nodes."""
        nodes = await self._cluster.list_edge_nodes()
        self.store.sync_inventory(nodes)
        if not self.acting:
            return
        regions = {node.name: node.region for node in nodes}
        for isolation in [*self.isolations.values(), *self.pod_isolations.values()]:
            if not isolation.region:
                isolation.region = regions.get(isolation.node, "")
        await self._cluster.ensure_serving_nodes(self._healthy_uncut())

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
            scored_at = self._clock.monotonic()
            self.grey_scores = await self._grey_scorer.score(self.store.nodes)
            self._grey_scored_at = scored_at

    def _current_grey_scores(self) -> dict[str, GreyScore]:
        """Return the scores taken after each node's latest outage; older ones describe a
        node that has since been down and back."""
        current = {}
        for name, score in self.grey_scores.items():
            evidence = self.store.nodes.get(name)
            reset_at = evidence.history_reset_at if evidence else None
            if reset_at is None or reset_at < self._grey_scored_at:
                current[name] = score
        return current

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
            assessment = apply_grey_scores(assessment, self._current_grey_scores(), threshold)
        assessment = self._hysteresis.apply(assessment, now)
        self._refresh_census(assessment, now)
        self._capacity = self.service_capacity()
        newly_healthy = self._newly_healthy(assessment)
        self._memory.update(assessment, now)
        isolated = {name: iso.region for name, iso in self.isolations.items()}
        manual = {name for name, iso in self.isolations.items() if iso.who is not None}
        decisions = decide(
            assessment, isolated, self._memory, now, self._policy, manual, self._capacity
        )
        self._audit_capacity_holds(decisions)
        split = {region: iso.who is not None for region, iso in self.splits.items()}
        region_decisions = decide_splits(assessment, split, self._memory, now, self._policy)

        self.state.assessment = assessment
        self.state.holds = [d for d in decisions if d.kind is Kind.HOLD]
        self.state.passes += 1
        self.state.last_pass_at = now
        self._publish(assessment)
        # A follower gathers evidence and classifies like the leader, but writes nothing.
        if await self._may_act():
            for decision in decisions:
                self._start(decision)
            for split_decision in region_decisions:
                self._start_split(split_decision.kind, split_decision.region, split_decision.reason)
            self._start_repairs(assessment, now)
            self._start_expiries(now)
            if self._recheck.due(now):
                self._launch(RECHECK_KEY, self._recheck_cuts)
            busy = self.isolations.keys() | self._in_flight.keys()
            serve = [name for name in newly_healthy if name not in busy]
            if serve:
                task = asyncio.create_task(self._ensure_serving(serve))
                self._in_flight.update(dict.fromkeys(serve, task))
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

    def _refresh_census(self, assessment: Assessment, now: float) -> None:
        """Start reading the Services' ready endpoints when a cut may follow and the latest
        census is too old for it."""
        candidates = frozenset(
            name
            for name, node in assessment.nodes.items()
            if node.verdict is NodeVerdict.FAILED and name not in self.isolations
        )
        if CENSUS_KEY not in self._in_flight and self._census.due(candidates, now):
            self._census.started(candidates, now)
            self._launch(CENSUS_KEY, self._read_census)

    async def _read_census(self) -> None:
        try:
            selector = self.settings.ingress_controller_selector
            self._census.store(await self._cluster.endpoint_census(selector))
        except SourceError as err:
            if str(err) != self._census.error:
                logger.warning("ready endpoints unavailable", extra={"error": str(err)})
            self._census.fail(str(err))

    async def read_service_capacity(self) -> ServiceCapacity:
        """Read the Services' ready endpoints now and return them less every cut."""
        self._census.started(self._census.read_for, self._clock.monotonic())
        await self._read_census()
        return self.service_capacity()

    def service_capacity(self) -> ServiceCapacity:
        """Return the Services' ready endpoints less every cut in force or in flight."""
        capacity = self._census.capacity(self.settings.min_ready_endpoints)
        for isolation in self.isolations.values():
            capacity.remove(capacity.removed_by(isolation.node, CutScope(isolation.scope)))
            capacity.remove(isolation.pods)
        capacity.remove(self.pod_isolations)
        return capacity

    def _audit_capacity_holds(self, decisions: list[Decision]) -> None:
        """Audit each cut held for a Service's ready endpoints when the hold starts or its
        reason changes. A hold repeats every pass, so only changes are recorded."""
        held = {
            d.node: d
            for d in decisions
            if d.kind is Kind.HOLD and d.reason.startswith((MIN_READY_CHECK, UNKNOWN_CHECK))
        }
        for name, decision in held.items():
            if self._capacity_holds.get(name) != decision.reason:
                isolation = Isolation(
                    node=name,
                    region=decision.region,
                    incident="",
                    reason=decision.reason,
                    started_at=self._clock.wall(),
                    dry_run=self.settings.dry_run,
                )
                self.record("hold", isolation, decision.reason, CONTROLLER, "held")
        self._capacity_holds = {name: d.reason for name, d in held.items()}

    def _publish(self, assessment: Assessment) -> None:
        self._metrics.fail_safe.set(int(assessment.verdict is GlobalVerdict.FAIL_SAFE))
        self._metrics.isolated_nodes.set(len(self.isolations))
        counts: dict[str, Counter[NodeVerdict]] = {
            region: Counter() for region in assessment.regions
        }
        for node in assessment.nodes.values():
            counts.setdefault(node.region, Counter())[node.verdict] += 1
        for region, verdict in assessment.regions.items():
            self._metrics.set_region(region, verdict.verdict, dict(counts[region]))
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
        action = self._cut if decision.kind is Kind.CUT else self._restore
        self._launch(decision.node, lambda: action(decision))

    def _launch(self, key: str, action: Callable[[], Awaitable[Any]]) -> None:
        """Start an action on ``key`` unless one is in flight there."""
        if key in self._in_flight:
            return

        async def run() -> None:
            await action()

        task = asyncio.create_task(run())
        self._in_flight[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]

    async def run_keyed(self, key: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run an action on ``key`` once the action in flight there, if any, has finished.

        The control loop starts nothing on ``key`` meanwhile. The action runs to its end even
        when the caller is cancelled, since a cut must not stop halfway.
        """
        while (running := self._in_flight.get(key)) is not None:
            await asyncio.wait({running})
        task = asyncio.ensure_future(action())
        self._in_flight[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait until no action is in flight."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight.values()))

    def _start_split(self, kind: Kind, region: str, reason: str) -> None:
        if kind is Kind.HOLD:
            self._metrics.cuts_held.labels(reason.split(":")[0]).inc()
            return
        if kind is Kind.RESTORE:
            isolation = self.splits[region]
            self._launch(isolation.key, lambda: self.release(isolation, reason, CONTROLLER))
            return
        split = Isolation(
            node="",
            region=region,
            incident=uuid.uuid4().hex[:12],
            reason=reason,
            started_at=self._clock.wall(),
            dry_run=self.settings.dry_run,
            kind=TargetKind.REGION,
            target=region,
            scope="split",
        )
        self._launch(split.key, lambda: self.apply(split, new=True))

    def _start_repairs(self, assessment: Assessment, now: float) -> None:
        """Cut again every isolation that reading back did not confirm, within the retry
        budget, and widen a node's cut when its failure grew (a failed ingress path first, then
        the whole node)."""
        for isolation in self.all_isolations():
            if isolation.dry_run or isolation.key in self._in_flight:
                continue
            node = assessment.nodes.get(isolation.node)
            if (
                isolation.kind is TargetKind.NODE
                and node is not None
                and self._widen(isolation, node)
            ):
                self._launch(isolation.key, partial(self.apply, isolation))
                continue
            if isolation.verified or now < isolation.retry_at:
                continue
            if isolation.attempts > self.settings.action_retry_limit:
                continue
            self._launch(isolation.key, partial(self.apply, isolation))

    async def _recheck_cuts(self) -> None:
        """Read the held cuts back; an undone one is audited with the writer that undid it."""
        for undone in await self._recheck.check(self.all_isolations(), self._in_flight):
            self._record_audit(
                "undone",
                undone.isolation,
                "cut undone after it was verified",
                undone.drift.writer or UNKNOWN_WRITER,
                undone.outcome,
                undone.detail,
                undone.drift.objects,
            )

    def _widen(self, isolation: Isolation, node: NodeAssessment) -> bool:
        """Widen the isolation's scope when the node's failure now asks for more; True if so."""
        if node.verdict is not NodeVerdict.FAILED:
            return False
        wanted = cut_scope(node.component, self.settings.ingress_components)
        if not widens(isolation.scope, wanted):
            return False
        pods = self._capacity.removed_by(isolation.node, wanted)
        held = None if isolation.who is not None else self._capacity.hold_reason(pods)
        if held is not None:
            if self._widen_holds.get(isolation.node) != held:
                logger.info("cut not widened", extra={"node": isolation.node, "reason": held})
            self._widen_holds[isolation.node] = held
            return False
        self._widen_holds.pop(isolation.node, None)
        self._capacity.remove(pods)
        logger.info(
            "cut widened",
            extra={"node": isolation.node, "from": isolation.scope, "to": wanted.value},
        )
        isolation.scope = wanted.value
        isolation.attempts = 0
        return True

    def _start_expiries(self, now: float) -> None:
        """Restore every manual isolation whose TTL has passed, until a restore is verified."""
        wall = self._clock.wall()
        for isolation in self.all_isolations():
            if isolation.expires_at is None or wall < isolation.expires_at:
                continue
            if isolation.key in self._in_flight or now < isolation.retry_at:
                continue
            reason = f"TTL of the isolation by {isolation.who} expired"
            self._launch(isolation.key, partial(self.release, isolation, reason, CONTROLLER))

    async def _ensure_serving(self, nodes: list[str]) -> None:
        """Set the serving gate on the Pods of nodes that just became healthy.

        A few nodes get one Pod list each. Many at once (after start-up, or when an estate's
        evidence recovers together) share one list of all Pods instead.
        """
        task = asyncio.current_task()
        try:
            if len(nodes) > SERVE_NODE_BY_NODE_MAX:
                await self._cluster.ensure_serving_nodes(nodes)
            else:
                for node in nodes:
                    await self._cluster.ensure_serving(node)
        except SourceError as err:
            logger.warning(
                "could not set the serving gate",
                extra={"nodes": len(nodes), "first_node": nodes[0], "error": err},
            )
        finally:
            for node in nodes:
                if self._in_flight.get(node) is task:
                    del self._in_flight[node]

    async def _cut(self, decision: Decision) -> None:
        fresh = self._still_failed(decision.node)
        if fresh is None:
            logger.info("cut dropped: evidence changed", extra={"node": decision.node})
            return
        isolation = Isolation(
            node=decision.node,
            region=decision.region,
            incident=uuid.uuid4().hex[:12],
            reason=decision.reason,
            started_at=self._clock.wall(),
            dry_run=self.settings.dry_run,
            scope=cut_scope(fresh.component, self.settings.ingress_components).value,
        )
        await self.apply(isolation, new=True)

    async def apply(self, isolation: Isolation, *, new: bool = False) -> Outcome | None:
        """Cut what the isolation describes, record the outcome on it and in the audit.

        The isolation is listed while the cut runs. A ``new`` isolation whose cut raised is
        dropped again, since nothing may have been written. An unconfirmed cut is attempted
        again after the retry interval.
        """
        table = self._table(isolation.kind)
        table[isolation.name] = isolation
        isolation.attempts += 1
        outcome = await self._act("cut", isolation, isolation.reason, isolation.who or CONTROLLER)
        if outcome is None:
            if new and table.get(isolation.name) is isolation:
                del table[isolation.name]
            isolation.retry_at = self._clock.monotonic() + self.settings.action_retry_interval_s
            return None
        # A repeated cut reports only what it changed; the isolation covers everything cut.
        isolation.pods = tuple(sorted({*isolation.pods, *outcome.objects}))
        isolation.verified, isolation.detail = outcome.verified, outcome.detail
        isolation.degraded = isolation.degraded and not outcome.verified
        if not outcome.verified:
            isolation.retry_at = self._clock.monotonic() + self.settings.action_retry_interval_s
            if isolation.attempts > self.settings.action_retry_limit and not isolation.dry_run:
                logger.warning(
                    "cut still unverified, giving up",
                    extra={"target": isolation.name, "attempts": isolation.attempts},
                )
        return outcome

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

    def _still_failed(self, node: str) -> NodeAssessment | None:
        """Classify the node again on the evidence as it is now, right before cutting it;
        return the fresh verdict while the node is failed, else None."""
        evidence = self.store.nodes.get(node)
        if evidence is None:
            return None
        fresh = classify_node(evidence, self._clock.monotonic(), self._limits)
        return fresh if fresh.verdict is NodeVerdict.FAILED else None

    async def _restore(self, decision: Decision) -> None:
        isolation = self.isolations.get(decision.node)
        if isolation is not None:
            await self.release(isolation, decision.reason, CONTROLLER)

    async def release(self, isolation: Isolation, reason: str, who: str) -> Outcome | None:
        """Restore what the isolation cut; it ends once reading back confirms the restore.

        An unconfirmed restore leaves the isolation listed, and a TTL expiry tries again after
        the retry interval.
        """
        outcome = await self._act("restore", isolation, reason, who)
        if outcome is not None and (outcome.verified or isolation.dry_run):
            table = self._table(isolation.kind)
            if table.get(isolation.name) is isolation:
                del table[isolation.name]
            if isolation.kind is TargetKind.NODE:
                self._memory.healthy_since.pop(isolation.node, None)
        else:
            isolation.retry_at = self._clock.monotonic() + self.settings.action_retry_interval_s
        return outcome

    def hold_cuts(self, node: str) -> None:
        """Hold automatic cuts of a node that a person restored, for the manual restore hold."""
        until = self._clock.monotonic() + self.settings.manual_restore_hold_s
        self._memory.cut_held_until[node] = until

    async def preview(
        self, action: str, isolation: Isolation, reason: str, who: str
    ) -> Outcome | None:
        """Plan a cut or restore of the isolation's target without writing, and audit the plan.

        The isolation itself is left as it is and nothing is listed.
        """
        return await self._act(action, dataclasses.replace(isolation, dry_run=True), reason, who)

    async def _call(self, action: str, isolation: Isolation) -> Outcome:
        """Send one cut or restore of the isolation's target to Kubernetes.

        Options at their defaults are left out, so the adapter's defaults apply.
        """
        options: dict[str, Any] = {"dry_run": True} if isolation.dry_run else {}
        restoring = action != "cut"
        if not restoring and isolation.who is not None:
            options.update(who=isolation.who, expires_at=isolation.expires_at)
        if isolation.kind is TargetKind.REGION:
            if restoring:
                split = await self._cluster.restore_region(
                    isolation.region, isolation.incident, **options
                )
            else:
                split = await self._cluster.split_region(
                    isolation.region,
                    isolation.reason,
                    isolation.incident,
                    region_label=self.settings.ingress_region_label,
                    fallbacks=self.settings.region_fallback_services,
                    **options,
                )
            return Outcome(split.verified, split.detail, split.ingresses)
        if isolation.kind is TargetKind.POD:
            if restoring:
                result = await self._cluster.restore_pod(
                    isolation.target, isolation.incident, **options
                )
            else:
                result = await self._cluster.cut_pod(
                    isolation.target, isolation.reason, isolation.incident, **options
                )
            isolation.node = result.node or isolation.node
            return Outcome(result.verified, result.detail, result.pods)
        if restoring:
            result = await self._cluster.restore_node(isolation.node, isolation.incident, **options)
            return Outcome(result.verified, result.detail, result.pods)
        scope = CutScope(isolation.scope)
        if scope is not CutScope.NODE:
            options["scope"] = scope.value
        if scope is CutScope.INGRESS:
            options["pod_selector"] = self.settings.ingress_controller_selector
        result = await self._cluster.cut_node(
            isolation.node, isolation.reason, isolation.incident, **options
        )
        return Outcome(result.verified, result.detail, result.pods)

    async def _act(
        self, action: str, isolation: Isolation, reason: str, who: str
    ) -> Outcome | None:
        """Run one cut or restore and write its audit record; None when it raised."""
        context = {
            "kind": isolation.kind.value,
            "target": isolation.name,
            "region": isolation.region,
            "incident": isolation.incident,
            "who": who,
        }
        logger.info("action started", extra={**context, "action": action, "reason": reason})
        try:
            outcome = await self._call(action, isolation)
        except SourceError as err:
            logger.error("action failed", extra={**context, "action": action, "error": str(err)})
            self._metrics.actions.labels(action, "error").inc()
            self._record_audit(action, isolation, reason, who, "error", str(err), ())
            return None
        if isolation.dry_run:
            result = "dry_run"
        else:
            result = "verified" if outcome.verified else "unverified"
        self._metrics.actions.labels(action, result).inc()
        self._record_audit(action, isolation, reason, who, result, outcome.detail, outcome.objects)
        log = logger.info if outcome.verified or isolation.dry_run else logger.warning
        log(
            "action finished",
            extra={**context, "action": action, "result": result, "objects": len(outcome.objects)},
        )
        return outcome

    def record(
        self,
        action: str,
        isolation: Isolation,
        reason: str,
        who: str,
        result: str,
        detail: str = "",
    ) -> None:
        """Write an audit record about the isolation that no cut or restore wrote."""
        self._record_audit(action, isolation, reason, who, result, detail, ())

    def _record_audit(
        self,
        action: str,
        isolation: Isolation,
        reason: str,
        who: str,
        result: str,
        detail: str,
        objects: tuple[str, ...],
    ) -> None:
        record = {
            "at": self._clock.wall(),
            "action": action,
            "kind": isolation.kind.value,
            "target": isolation.name,
            "node": isolation.node,
            "region": isolation.region,
            "incident": isolation.incident,
            "scope": isolation.scope,
            "reason": reason,
            "who": who,
            "result": result,
            "detail": detail,
            "pods": list(objects),
            "dry_run": isolation.dry_run,
        }
        self.audit.append(record)
        audit_logger.info("action recorded", extra=record)
