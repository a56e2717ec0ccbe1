"""Leader election on a ``coordination.k8s.io/v1`` Lease: only the leader acts.

Every replica runs the elector. The holder renews the Lease every retry period; another replica
takes it over only after ``lease_duration_s`` without a renewal. Updates carry the Lease's
resourceVersion, so two replicas racing for an expired Lease cannot both win.

A leader that cannot renew before ``renew_deadline_s`` steps down on its own, before any other
replica may take over (renew deadline < lease duration), so two leaders never act at once as
long as the replicas' clocks run at the same rate.

With a Pod name, the elector also labels Pods with ``isolator.io/leader``: "true" on its own
Pod while it leads, "false" otherwise, and a new leader sets "false" on every other Pod that
is still labelled "true". A Service that selects the label routes its traffic to the leader alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from isolator.clock import Clock
from isolator.sources.errors import SourceError
from isolator.sources.kubernetes.source import _load_api_client

logger = logging.getLogger(__name__)

LEADER_LABEL = "isolator.io/leader"


def _micro_time(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


class LeaderElector:
    """Holds or waits for one Lease; the control loop reads ``is_leader`` before acting."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        pod_name: str | None = None,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError(
                "leader election needs retry_period_s < renew_deadline_s < lease_duration_s"
            )
        self._client = api
        self._api = client.CoordinationV1Api(api)
        self._core = client.CoreV1Api(api)
        self._pod_name = pod_name  # this replica's Pod in ``namespace``; None labels nothing
        self._labeled: bool | None = None  # the leader label last written on that Pod
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._clock = clock
        self._lease_duration_s = lease_duration_s
        self._renew_deadline_s = renew_deadline_s
        self._retry_period_s = retry_period_s
        self.on_change = on_change  # called with the new state on every change
        self._leader = False
        self._last_renewed = 0.0  # monotonic time of the last successful acquire or renew
        # The holder and renew time of the Lease as last read, and when it was read, so that
        # expiry is judged on this replica's monotonic clock, never on another's wall clock.
        self._observed: tuple[str | None, Any] = (None, None)
        self._observed_at = 0.0

    @classmethod
    async def create(
        cls,
        kubeconfig: str | None,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        **options: Any,
    ) -> LeaderElector:
        """Build an elector on a Kubernetes client of its own, which ``close`` closes.

        A client of its own keeps Lease renewals from waiting behind the requests of a large
        cut. Raises KubernetesError when the credentials cannot be loaded.
        """
        api = await _load_api_client(kubeconfig)
        return cls(api, namespace, name, identity, clock, **options)

    async def close(self) -> None:
        """Close the Kubernetes client."""
        await self._client.close()

    @property
    def is_leader(self) -> bool:
        self._check_deadline()
        return self._leader

    @property
    def leader_identity(self) -> str | None:
        """The holder of the Lease as this replica last read it; None when unknown or free."""
        if self.is_leader:
            return self.identity
        return self._observed[0] or None

    def _check_deadline(self) -> None:
        """Step down when the Lease was not renewed within the renew deadline."""
        if self._leader and self._clock.monotonic() - self._last_renewed > self._renew_deadline_s:
            self._set_leader(False, "renew deadline passed")

    async def run(self) -> None:
        """Try to acquire or renew every retry period until cancelled; release on the way out."""
        try:
            while True:
                try:
                    # A request that hangs must not keep a leader from noticing its deadline.
                    async with asyncio.timeout(self._renew_deadline_s):
                        await self.try_acquire_or_renew()
                except (SourceError, ApiException, aiohttp.ClientError, TimeoutError) as err:
                    # Unreachable API: keep trying; the renew deadline makes a leader step down.
                    logger.warning("leader election failed", extra={"error": repr(err)})
                self._check_deadline()
                await self._label_pods()
                await self._clock.sleep(self._retry_period_s)
        finally:
            await self._release()
            await self._label_pods()

    async def try_acquire_or_renew(self) -> bool:
        """Take or renew the Lease once; returns whether this replica leads afterwards."""
        now = self._clock.monotonic()
        try:
            lease = await self._api.read_namespaced_lease(self._name, self._namespace)
        except ApiException as err:
            if err.status != 404:
                raise SourceError(f"reading Lease {self._name} failed: {err.reason}") from err
            return await self._create()
        spec = lease.spec
        holder = spec.holder_identity
        if (holder, spec.renew_time) != self._observed:
            self._observed = (holder, spec.renew_time)
            self._observed_at = now
        expired = now - self._observed_at > self._lease_duration_s
        if holder not in (None, "", self.identity) and not expired:
            self._set_leader(False, f"held by {holder}")
            return False
        return await self._update(lease, taking_over=holder != self.identity)

    async def _create(self) -> bool:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._namespace),
            spec=self._spec(transitions=0, acquired=True),
        )
        try:
            await self._api.create_namespaced_lease(self._namespace, body)
        except ApiException as err:
            if err.status == 409:
                return False  # another replica created it first; read it next period
            raise SourceError(f"creating Lease {self._name} failed: {err.reason}") from err
        return self._won()

    async def _update(self, lease: client.V1Lease, taking_over: bool) -> bool:
        transitions = (lease.spec.lease_transitions or 0) + int(taking_over)
        spec = self._spec(transitions, acquired=taking_over)
        if not taking_over:
            spec.acquire_time = lease.spec.acquire_time
        lease.spec = spec
        try:
            await self._api.replace_namespaced_lease(self._name, self._namespace, lease)
        except ApiException as err:
            if err.status == 409:
                self._set_leader(False, "lost a race for the Lease")
                return False
            raise SourceError(f"updating Lease {self._name} failed: {err.reason}") from err
        return self._won()

    def _spec(self, transitions: int, acquired: bool) -> client.V1LeaseSpec:
        wall = _micro_time(self._clock.wall())
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=round(self._lease_duration_s),
            renew_time=wall,
            acquire_time=wall if acquired else None,
            lease_transitions=transitions,
        )

    def _won(self) -> bool:
        self._last_renewed = self._clock.monotonic()
        self._set_leader(True, "acquired or renewed")
        return True

    def _set_leader(self, leader: bool, reason: str) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        logger.info(
            "leadership changed",
            extra={"leader": leader, "identity": self.identity, "reason": reason},
        )
        if self.on_change is not None:
            self.on_change(leader)

    async def _release(self) -> None:
        """Give the Lease up on shutdown so that another replica takes over at once."""
        if not self._leader:
            return
        self._set_leader(False, "shutting down")
        try:
            lease = await self._api.read_namespaced_lease(self._name, self._namespace)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                await self._api.replace_namespaced_lease(self._name, self._namespace, lease)
        except (ApiException, aiohttp.ClientError, OSError) as err:
            logger.warning("could not release the Lease", extra={"error": repr(err)})

    async def _label_pods(self) -> None:
        """Write this replica's leadership into its Pod's label, once per change.

        A new leader also sets "false" on every other Pod labelled "true", such as the Pod of a
        leader that crashed or lost its connection to the API server before it could do so.
        """
        leader = self._leader
        if self._pod_name is None or leader == self._labeled:
            return
        try:
            await self._set_label(self._pod_name, leader)
            if leader:
                pods = await self._core.list_namespaced_pod(
                    self._namespace, label_selector=f"{LEADER_LABEL}=true"
                )
                for pod in pods.items:
                    if pod.metadata.name != self._pod_name:
                        await self._set_label(pod.metadata.name, False)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as err:
            logger.warning(
                "could not label the Pods with the leader, will retry",
                extra={"pod": self._pod_name, "leader": leader, "error": repr(err)},
            )
            return
        self._labeled = leader

    async def _set_label(self, pod: str, leader: bool) -> None:
        body = {"metadata": {"labels": {LEADER_LABEL: "true" if leader else "false"}}}
        async with asyncio.timeout(self._renew_deadline_s):
            await self._core.patch_namespaced_pod(pod, self._namespace, body)
