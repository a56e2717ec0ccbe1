"""Regions of the lab: one network namespace per region, joined to the root by a veth pair.

Addressing is fixed because the rest of the lab relies on it. Lab instance ``lab`` (0..31) gives
region ``i`` (0..7) the subnet 198.18.(lab*8+i).0/24 from the RFC 2544 benchmark range. The root
side of the veth pair has .1, and the namespace side has the edge Prometheus (.2) and every
node (.10 + j). Node addresses live inside the namespace, so agents and the edge Prometheus keep
reaching each other while the link is down.

Namespace and interface names come from the lab and region indexes, never from the region name,
which may be any string (non-ASCII too) while interface names are limited to 15 bytes.

Faults finer than a whole partition (packet loss, one node cut off, probes dropped) are
nftables rules in one table inside the region's namespace, on the namespace end of the veth
pair. Traffic between addresses inside the namespace goes over its loopback and never meets
them. Nothing here adds rules or qdiscs outside the lab's namespaces and veth pairs.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

logger = logging.getLogger(__name__)

MAX_LABS = 32
MAX_REGIONS = 8
FIRST_NODE_HOST = 10
MAX_NODES = 254 - FIRST_NODE_HOST + 1

# While the root-side link is down, the kernel drops the connected route of the region's subnet
# and the root namespace would send that traffic out through its default route. A lower-priority
# unreachable route for the subnet keeps it local: connects fail at once with "No route to host".
GUARD_ROUTE_METRIC = 32000

LOCK_DIR = Path("/run/isolator-lab")
_COMMAND_TIMEOUT_S = 10.0

# The nftables table of the lab's rules inside each region namespace.
NFT_TABLE = "isolator_lab"
# Loss is drawn with `numgen random mod LOSS_MODULUS`, so its resolution is 0.01 %.
LOSS_MODULUS = 10_000
WEAK_LINK_FILTER = "weak-link"


class NetnsCommandError(RuntimeError):
    """An ``ip`` or ``tc`` command failed; the message contains the command and its stderr."""


class WeakLinkUnsupportedError(NetnsCommandError):
    """The kernel has no netem queueing discipline (CONFIG_NET_SCH_NETEM is off)."""


Chain = Literal["input", "output"]


@dataclass(frozen=True)
class FilterRule:
    """One nftables rule on the namespace end of the veth pair.

    ``input`` rules see packets that arrive from the root side, ``output`` rules packets that
    processes in the namespace send to it. ``match`` is an nftables match expression, such as
    ``ip daddr 198.18.0.10 tcp dport 9910``; the rule drops what it matches.
    """

    chain: Chain
    match: str


def _run(
    argv: Sequence[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
        check=False,
    )
    if check and result.returncode != 0:
        raise NetnsCommandError(
            f"command failed with code {result.returncode}: {' '.join(argv)}: "
            f"{result.stderr.strip()}"
        )
    return result


def _link_exists(name: str, namespace: str | None = None) -> bool:
    prefix = ["ip", "-n", namespace] if namespace else ["ip"]
    return _run([*prefix, "link", "show", "dev", name], check=False).returncode == 0


def list_namespaces() -> list[str]:
    """Return the names of the named network namespaces (those under /run/netns)."""
    output = _run(["ip", "netns", "list"]).stdout
    # Each line is "name" or "name (id: N)".
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def _kill_namespace_processes(namespace: str) -> None:
    """Send SIGKILL to every process left in a lab namespace, so the namespace can go away."""
    output = _run(["ip", "netns", "pids", namespace], check=False).stdout
    for field in output.split():
        pid = int(field)
        logger.warning(
            "killing a process left in a lab namespace",
            extra={"namespace": namespace, "pid": pid},
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def lab_subnet(lab: int) -> ipaddress.IPv4Network:
    """Return the /21 that contains the eight region subnets of lab instance ``lab``."""
    if not 0 <= lab < MAX_LABS:
        raise ValueError(f"lab index {lab} is out of range: use 0..{MAX_LABS - 1}")
    return ipaddress.IPv4Network(f"198.18.{lab * MAX_REGIONS}.0/21")


class RegionNetwork:
    """The network of one region: a namespace, a veth pair to the root, and fixed addresses."""

    def __init__(self, lab: int, index: int, region: str) -> None:
        if not 0 <= index < MAX_REGIONS:
            raise ValueError(f"region index {index} is out of range: use 0..{MAX_REGIONS - 1}")
        self.lab = lab
        self.index = index
        self.region = region
        self.subnet = list(lab_subnet(lab).subnets(new_prefix=24))[index]
        self.namespace = f"iso{lab}-{index}"
        self.host_veth = f"iso{lab}r{index}h"
        self.ns_veth = f"iso{lab}r{index}n"
        self.host_ip = self._host(1)
        self.prometheus_ip = self._host(2)
        self._filters: dict[str, list[FilterRule]] = {}

    def __repr__(self) -> str:
        return f"RegionNetwork(lab={self.lab}, index={self.index}, region={self.region!r})"

    def _host(self, number: int) -> str:
        return str(self.subnet.network_address + number)

    def node_ip(self, j: int) -> str:
        """Return the address of node ``j`` (0-based), held inside the namespace."""
        if not 0 <= j < MAX_NODES:
            raise ValueError(f"node index {j} is out of range: use 0..{MAX_NODES - 1}")
        return self._host(FIRST_NODE_HOST + j)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Return ``argv`` prefixed so that it runs inside the region's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def create(self, node_count: int = MAX_NODES) -> None:
        """Create the namespace, the veth pair and the addresses of ``node_count`` nodes.

        A namespace or link of the same name left by an earlier run is removed first.
        """
        if not 0 <= node_count <= MAX_NODES:
            raise ValueError(f"node_count {node_count} is out of range: use 0..{MAX_NODES}")
        self.delete()
        try:
            self._build(node_count)
        except BaseException:
            self.delete()
            raise
        logger.info(
            "region network created",
            extra={"region": self.region, "namespace": self.namespace, "subnet": str(self.subnet)},
        )

    def _build(self, node_count: int) -> None:
        prefix = self.subnet.prefixlen
        ns = ["ip", "-n", self.namespace]
        _run(["ip", "netns", "add", self.namespace])
        _run(["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.ns_veth])
        _run(["ip", "link", "set", self.ns_veth, "netns", self.namespace])
        # One `ip -batch` run adds every node address, instead of one process per address.
        batch = ["link set lo up"]
        for address in [self.prometheus_ip, *map(self.node_ip, range(node_count))]:
            batch.append(f"addr add {address}/{prefix} dev {self.ns_veth}")
        batch.append(f"link set {self.ns_veth} up")
        _run([*ns, "-batch", "-"], stdin="\n".join(batch) + "\n")
        _run(["ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_veth])
        _run(["ip", "route", "replace", *self._guard_route()])
        _run(["ip", "link", "set", self.host_veth, "up"])

    def _guard_route(self) -> list[str]:
        return ["unreachable", str(self.subnet), "metric", str(GUARD_ROUTE_METRIC)]

    def delete(self) -> None:
        """Remove the veth pair, the guard route and the namespace; does nothing if absent."""
        # Deleting a namespace frees its links asynchronously, so the root-side link is deleted
        # first: that removes both ends at once and frees the names for an immediate create().
        # The namespace takes the nftables table with it.
        self._filters.clear()
        if _link_exists(self.host_veth):
            _run(["ip", "link", "del", self.host_veth])
        _run(["ip", "route", "del", *self._guard_route()], check=False)
        if self.namespace in list_namespaces():
            _kill_namespace_processes(self.namespace)
            _run(["ip", "netns", "del", self.namespace])
            logger.info(
                "region network deleted",
                extra={"region": self.region, "namespace": self.namespace},
            )

    def partition(self) -> None:
        """Cut the region off: take the root-side link down.

        The root side gets "No route to host" at once (see GUARD_ROUTE_METRIC). Packets from
        inside the namespace to the root side are dropped: connects from there hang until ARP
        resolution of the root side fails (about 3 s), then get "No route to host". Traffic
        between addresses inside the namespace keeps working.
        """
        _run(["ip", "link", "set", self.host_veth, "down"])
        logger.info("region partitioned", extra={"region": self.region})

    def heal(self) -> None:
        """Bring the root-side link back up; the kernel restores the subnet route."""
        _run(["ip", "link", "set", self.host_veth, "up"])
        logger.info("region healed", extra={"region": self.region})

    def set_weak_link(self, delay_ms: int, jitter_ms: int, loss_pct: float) -> None:
        """Make the link weak: drop ``loss_pct`` percent of the packets in each direction, and
        delay each direction by ``delay_ms`` plus or minus ``jitter_ms``.

        The values apply per direction, so a round trip loses about twice as much and takes
        about ``2 * delay_ms`` longer. Loss is drawn independently for every packet by an
        nftables rule (``numgen random``) in the namespace, on the kernel's own netfilter path.
        Delay and jitter need the netem qdisc and raise WeakLinkUnsupportedError, before
        anything changes, on a kernel without it.

        NOTE: on kernels without netem (CONFIG_NET_SCH_NETEM unset) the lab's weak link is loss
        only. It emulates a lossy WAN: lost SYNs and segments, TCP retransmission after the
        200 ms minimum RTO, and requests that miss their timeouts. It does not emulate latency,
        jitter, reordering, bursty (Gilbert-Elliott) loss or a bandwidth limit. The kernels
        checked so far have no nft ``queue`` statement either (CONFIG_NFT_QUEUE unset), so a
        userspace delayer would need the iptables NFQUEUE target and a netlink client of its
        own; tbf and htb only cap the rate, which delays bursts but not a lone heartbeat.
        """
        if delay_ms < 0 or jitter_ms < 0 or not 0.0 <= loss_pct <= 100.0:
            raise ValueError(
                f"invalid weak link: delay_ms={delay_ms}, jitter_ms={jitter_ms}, "
                f"loss_pct={loss_pct}: delays must be >= 0 and loss within 0..100"
            )
        if delay_ms or jitter_ms:
            self._set_netem_delay(delay_ms, jitter_ms)
        threshold = round(loss_pct / 100 * LOSS_MODULUS)
        if threshold:
            draw = f"numgen random mod {LOSS_MODULUS} < {threshold}"
            self.set_filter(
                WEAK_LINK_FILTER, [FilterRule("input", draw), FilterRule("output", draw)]
            )
        else:
            self.clear_filter(WEAK_LINK_FILTER)
        logger.info(
            "weak link set",
            extra={
                "region": self.region,
                "delay_ms": delay_ms,
                "jitter_ms": jitter_ms,
                "loss_pct": loss_pct,
            },
        )

    def _set_netem_delay(self, delay_ms: int, jitter_ms: int) -> None:
        netem = ["netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms"]
        for prefix, device in self._link_ends():
            result = _run([*prefix, "qdisc", "replace", "dev", device, "root", *netem], check=False)
            if result.returncode != 0 and "qdisc kind is unknown" in result.stderr:
                raise WeakLinkUnsupportedError(
                    "this kernel has no netem queueing discipline (CONFIG_NET_SCH_NETEM), so "
                    "delay and jitter cannot be emulated: set delay_ms and jitter_ms to 0 for a "
                    "lossy link, or run the lab on a kernel with sch_netem"
                )
            if result.returncode != 0:
                raise NetnsCommandError(
                    f"tc failed to set netem on {device}: {result.stderr.strip()}"
                )

    def clear_weak_link(self) -> None:
        """Remove the loss rules and netem from both ends of the link; does nothing if unset."""
        self.clear_filter(WEAK_LINK_FILTER)
        for prefix, device in self._link_ends():
            qdiscs = _run([*prefix, "qdisc", "show", "dev", device]).stdout
            if "netem" in qdiscs:
                _run([*prefix, "qdisc", "del", "dev", device, "root"])
        logger.info("weak link cleared", extra={"region": self.region})

    def set_filter(self, name: str, rules: Sequence[FilterRule]) -> None:
        """Install (or replace) a named group of drop rules on the namespace end of the link.

        Every group lives in one nftables table that is rewritten in a single transaction, so
        a change never leaves the link half filtered.
        """
        self._filters[name] = list(rules)
        self._apply_filters()

    def clear_filter(self, name: str) -> None:
        """Remove a named group of rules; does nothing if it is not set."""
        if self._filters.pop(name, None) is not None:
            self._apply_filters()

    def filters(self) -> list[str]:
        """Return the names of the rule groups in force."""
        return sorted(self._filters)

    def _apply_filters(self) -> None:
        if shutil.which("nft") is None:
            raise NetnsCommandError(
                "nft not found: install the Debian package nftables for the lab's packet filters"
            )
        chains: dict[Chain, list[str]] = {"input": [], "output": []}
        for name, rules in sorted(self._filters.items()):
            for rule in rules:
                side = "iifname" if rule.chain == "input" else "oifname"
                chains[rule.chain].append(
                    f'{side} "{self.ns_veth}" {rule.match} counter drop comment "{name}"'
                )
        # Declaring the table first makes the delete valid when it does not exist yet.
        script = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
        if self._filters:
            script.append(f"table inet {NFT_TABLE} {{")
            for chain, lines in chains.items():
                script.append(f"  chain {chain} {{")
                script.append(f"    type filter hook {chain} priority filter; policy accept;")
                script.extend(f"    {line}" for line in lines)
                script.append("  }")
            script.append("}")
        _run(
            ["ip", "netns", "exec", self.namespace, "nft", "-f", "-"],
            stdin="\n".join(script) + "\n",
        )

    def dropped_packets(self) -> dict[str, int]:
        """Return how many packets each rule group has dropped, summed over its rules."""
        if not self._filters:
            return {}
        output = _run(
            ["ip", "netns", "exec", self.namespace, "nft", "-j", "list", "table", "inet", NFT_TABLE]
        ).stdout
        counts: dict[str, int] = dict.fromkeys(self._filters, 0)
        for item in json.loads(output).get("nftables", []):
            rule = item.get("rule")
            if not rule or rule.get("comment") not in counts:
                continue
            for expression in rule.get("expr", []):
                if "counter" in expression:
                    counts[rule["comment"]] += int(expression["counter"]["packets"])
        return counts

    def _link_ends(self) -> list[tuple[list[str], str]]:
        return [
            (["tc"], self.host_veth),
            (["tc", "-n", self.namespace], self.ns_veth),
        ]


def remove_stale_namespaces(lab: int) -> None:
    """Delete the namespaces, links and guard routes that a crashed run of ``lab`` left behind."""
    for index in range(MAX_REGIONS):
        region = RegionNetwork(lab, index, region=f"stale-{index}")
        if region.namespace in list_namespaces() or _link_exists(region.host_veth):
            logger.warning("removing a stale region network", extra={"namespace": region.namespace})
        region.delete()


class LabLock:
    """An exclusive claim on one lab index, held through an flock on a file in LOCK_DIR.

    Parallel test workers and concurrent test runs each claim their own index, so that
    remove_stale_namespaces() never removes another run's regions. The kernel releases the lock
    when the process exits, so a crash leaves no stale claim.
    """

    def __init__(self, index: int, handle: IO[bytes]) -> None:
        self.index = index
        self._handle = handle

    @classmethod
    def acquire(cls, preferred: int = 0) -> LabLock:
        """Claim the first free lab index, trying ``preferred`` first.

        Raises RuntimeError when all MAX_LABS indexes are taken.
        """
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for offset in range(MAX_LABS):
            index = (preferred + offset) % MAX_LABS
            handle = (LOCK_DIR / f"lab-{index}.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return cls(index, handle)
        raise RuntimeError(
            f"all {MAX_LABS} lab indexes are in use; see the lock files in {LOCK_DIR}"
        )

    def release(self) -> None:
        """Give the index back; safe to call twice."""
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()

    def __enter__(self) -> LabLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
