"""Reads the in-site view from the central Prometheus that federates every edge Prometheus.

prometheus-api-client is synchronous (requests), so every query runs in a worker thread and the
event loop never blocks. The number of queries per pass is fixed, whatever the node count.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException

from isolator.clock import Clock
from isolator.metrics import Metrics
from isolator.model import SiteSample, SiteView
from isolator.sources.errors import SourceError, SourceUnavailableError

logger = logging.getLogger(__name__)

QueryResult = list[dict[str, Any]]


class PrometheusError(SourceError):
    """A query to the central Prometheus failed or returned something unusable."""


class PrometheusUnavailableError(PrometheusError, SourceUnavailableError):
    """The central Prometheus timed out or refused the connection."""


def parse_vector(result: QueryResult, label: str) -> dict[str, float]:
    """Map the value of ``label`` on each series to the series' value.

    Series without the label, with an unparseable value, or with NaN or an infinity are left out,
    so that they count as unknown and never reach a comparison. Entries that are not series at
    all are left out too, because a broken or hostile server must not stop the control loop.
    """
    values: dict[str, float] = {}
    for series in result:
        metric = series.get("metric") if isinstance(series, dict) else None
        key = metric.get(label) if isinstance(metric, dict) else None
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if not isinstance(key, str) or not math.isfinite(value):
            continue
        values[key] = value
    return values


def join_samples(values: dict[str, float], ages: dict[str, float]) -> dict[str, SiteSample]:
    """Pair each value with its sample age; a value without a usable age is unknown."""
    return {
        key: SiteSample(value=value, age_s=max(ages[key], 0.0))
        for key, value in values.items()
        if key in ages
    }


class PrometheusSource:
    """The central Prometheus, queried for agent and federation health."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        agent_job: str,
        federation_job: str,
        metrics: Metrics,
        clock: Clock,
        kubelet_job: str = "kubelet",
    ) -> None:
        self._client = PrometheusConnect(url=url, disable_ssl=False, timeout=timeout_s)
        self._url = url
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prometheus")
        # Ages are computed by Prometheus itself, as its evaluation time minus the sample's own
        # timestamp, so presence of a lingering federated series never counts as fresh.
        self._queries = {
            "agent_up": f'up{{job="{agent_job}"}}',
            "agent_age": f'time() - timestamp(up{{job="{agent_job}"}})',
            "federation_up": f'up{{job="{federation_job}"}}',
            "federation_age": f'time() - timestamp(up{{job="{federation_job}"}})',
            "kubelet_up": f'up{{job="{kubelet_job}"}}',
            "kubelet_age": f'time() - timestamp(up{{job="{kubelet_job}"}})',
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def read_site_view(self) -> SiteView:
        """Run the fixed set of queries concurrently and build the site view."""
        names = list(self._queries)
        results = await asyncio.gather(*(self._query(self._queries[n]) for n in names))
        by_name = dict(zip(names, results, strict=True))
        agents = join_samples(
            parse_vector(by_name["agent_up"], "node"), parse_vector(by_name["agent_age"], "node")
        )
        federation = join_samples(
            parse_vector(by_name["federation_up"], "region"),
            parse_vector(by_name["federation_age"], "region"),
        )
        kubelets = join_samples(
            parse_vector(by_name["kubelet_up"], "node"),
            parse_vector(by_name["kubelet_age"], "node"),
        )
        return SiteView(agents=agents, federation=federation, kubelets=kubelets)

    async def _query(self, query: str) -> QueryResult:
        loop = asyncio.get_running_loop()
        started = self._clock.monotonic()
        call: Callable[[], QueryResult] = lambda: self._client.custom_query(  # noqa: E731
            query, params={"timeout": f"{round(self._timeout_s * 1000)}ms"}
        )
        try:
            return await loop.run_in_executor(self._executor, call)
        except requests.exceptions.RequestException as err:
            raise PrometheusUnavailableError(
                f"central Prometheus at {self._url} did not respond to {query!r}: {err}"
            ) from err
        except PrometheusApiClientException as err:
            raise PrometheusError(
                f"central Prometheus at {self._url} rejected {query!r}: {err}"
            ) from err
        finally:
            self._metrics.prometheus_query_seconds.observe(self._clock.monotonic() - started)
