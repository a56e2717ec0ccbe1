"""Typed settings for the isolator service and the node agent.

Every setting reads from the environment with the prefix ``ISOLATOR_`` (service) or
``ISOLATOR_AGENT_`` (agent). The service also reads one YAML file named by ``ISOLATOR_CONFIG_FILE``,
whose keys are the field names below; an environment variable overrides the file. Each field
states what it sets, its unit, and why its default is what it is. Settings are loaded once at
start-up and passed explicitly.
"""

from __future__ import annotations

import os
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from isolator import tls

CONFIG_FILE_VARIABLE = "ISOLATOR_CONFIG_FILE"

# The API roles that a reviewed Kubernetes user can be mapped to; isolator.api.auth.Role has
# the same values.
ApiRole = Literal["viewer", "operator", "alertmanager", "agent"]


class SettingsFileError(ValueError):
    """The settings file named by ISOLATOR_CONFIG_FILE is missing or not a YAML mapping."""


class SettingsFile(PydanticBaseSettingsSource):
    """The settings in one YAML file: a mapping from field names to values.

    A missing or malformed file is an error, never an empty source, so that a typo in a path
    cannot start the service on defaults.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self._path = path
        self._values = self._read()

    def _read(self) -> dict[str, Any]:
        where = f"{CONFIG_FILE_VARIABLE}={self._path}"
        try:
            loaded = yaml.safe_load(self._path.read_text(encoding="utf-8"))
        except OSError as err:
            raise SettingsFileError(f"{where}: cannot read the file: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise SettingsFileError(f"{where}: not valid YAML: {err}") from err
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise SettingsFileError(
                f"{where}: expected a mapping of setting names to values, "
                f"got {type(loaded).__name__}"
            )
        return {str(key): value for key, value in loaded.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class Settings(BaseSettings):
    """Settings of the isolator service (``isolator serve``)."""

    model_config = SettingsConfigDict(env_prefix="ISOLATOR_", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read the arguments, then the environment, then the settings file if one is named."""
        path = os.environ.get(CONFIG_FILE_VARIABLE)
        sources = [init_settings, env_settings, dotenv_settings, file_secret_settings]
        if path:
            sources.insert(2, SettingsFile(settings_cls, Path(path)))
        return tuple(sources)

    listen_host: str = Field(
        "0.0.0.0",
        description="Address the API binds to. Agents in every region must reach it.",
    )
    listen_port: int = Field(8080, ge=1, le=65535, description="TCP port of the API.")
    kubeconfig: str | None = Field(
        None,
        description="Path of a kubeconfig file. Unset means the in-cluster ServiceAccount.",
    )
    prometheus_url: str = Field(
        "http://127.0.0.1:9090",
        description="Base URL of the central Prometheus that federates every edge Prometheus.",
    )
    prometheus_timeout_s: float = Field(
        2.0,
        gt=0,
        description=(
            "Timeout of one Prometheus query, in seconds. A query that times out counts as "
            "unknown evidence, so it must stay well under the heartbeat timeout."
        ),
    )
    alertmanager_url: str | None = Field(
        None,
        description=(
            "Base URL of Alertmanager, read for the full alert set when a webhook notification "
            "was truncated. Unset means truncated notifications add only the alerts they carry."
        ),
    )
    agent_job: str = Field(
        "isolator-agent",
        description="Prometheus job name under which each edge Prometheus scrapes the agents.",
    )
    kubelet_job: str = Field(
        "kubelet",
        description=(
            "Job name under which each edge Prometheus scrapes the nodes' kubelets, with a "
            "`node` target label. A kubelet still scraped up means the node serves even when "
            "its agent is gone."
        ),
    )
    federation_job: str = Field(
        "federate",
        description="Job name under which the central Prometheus scrapes each edge /federate.",
    )
    agent_port: int = Field(
        9910,
        ge=1,
        le=65535,
        description="TCP port of the node agent on every edge node's InternalIP.",
    )
    heartbeat_interval_s: float = Field(
        1.0,
        gt=0,
        description=(
            "Period at which agents send heartbeats and the isolator probes agents, in seconds. "
            "One second lets a crash be cut in about three seconds."
        ),
    )
    heartbeat_miss_count: int = Field(
        3,
        ge=2,
        description=(
            "Heartbeats a node may miss before it counts as silent. Three absorbs one lost "
            "packet and one late packet on a weak WAN link."
        ),
    )
    component_failure_count: int = Field(
        3,
        ge=1,
        description=(
            "Consecutive heartbeats that must report a component or the ingress path failing "
            "before the node counts as failed. Three rides out one slow health check."
        ),
    )
    probe_timeout_s: float = Field(
        0.8,
        gt=0,
        description="Timeout of one probe from the isolator to an agent, in seconds.",
    )
    site_max_age_s: float = Field(
        15.0,
        gt=0,
        description=(
            "Oldest federated sample, in seconds, that still counts as the site's current view. "
            "Federated series outlive their source by up to five minutes, so presence alone "
            "proves nothing. Keep it at about three central scrape intervals."
        ),
    )
    loop_interval_s: float = Field(
        0.5,
        gt=0,
        description="Period of the control loop, in seconds.",
    )
    correlation_window_s: float = Field(
        2.0,
        ge=0,
        description=(
            "How long a node must stay failed before it is cut, in seconds. A region cut that "
            "arrives node by node spreads over about one heartbeat interval, and this window "
            "lets it be judged as one region event."
        ),
    )
    restore_hold_s: float = Field(
        10.0,
        ge=0,
        description=(
            "How long a cut node must stay healthy before it is restored, in seconds. It keeps "
            "a flapping node from being cut and restored on every tick."
        ),
    )
    region_max_cut_fraction: float = Field(
        0.34,
        gt=0,
        le=1,
        description=(
            "Largest share of a region's nodes that may be cut automatically. More failures "
            "than that at once look like a site-wide event that a person should judge."
        ),
    )
    region_min_cut_nodes: int = Field(
        1,
        ge=0,
        description=(
            "Nodes that may always be cut in a region, whatever its size, so that a small "
            "site can still lose one failed node."
        ),
    )
    fail_safe_region_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Share of regions that, when silent at once, trips the global fail-safe. So many "
            "sites failing together points at the central side."
        ),
    )
    startup_grace_s: float = Field(
        10.0,
        ge=0,
        description=(
            "Seconds after the isolator starts during which it cuts nothing. A restarted "
            "isolator has no heartbeat history, and every agent needs a few periods to be seen "
            "both ways again."
        ),
    )
    cuts_per_minute: int = Field(
        6,
        ge=0,
        description=(
            "Automatic cuts allowed per minute across the estate. A burst beyond it is far "
            "likelier a shared cause than independent node failures, so the rest wait."
        ),
    )
    region_cooldown_s: float = Field(
        120.0,
        ge=0,
        description=(
            "Seconds during which automatic cuts in a region stay held after more of its nodes "
            "were flagged than its budget allows. A person judges a site-wide event."
        ),
    )
    min_ready_endpoints: int = Field(
        1,
        ge=0,
        description=(
            "Ready endpoints every Service must keep after an automatic cut. A cut that would "
            "leave a Service with fewer is held whole, because a Service with no endpoint "
            "fails every request while a failed replica fails only some. One keeps each "
            "Service serving; the Service annotation isolator.io/min-ready-endpoints overrides "
            "it, and 0 there lets that Service go dark. Manual isolations may override it."
        ),
    )
    region_verdict_hold_s: float = Field(
        5.0,
        ge=0,
        description=(
            "How long the evidence must support a milder region verdict before the region gets "
            "it, in seconds. A more severe verdict applies at once. Five seconds outlasts the "
            "heartbeat timeout (three seconds at the defaults), so a region whose silent nodes "
            "hover at the partition threshold keeps its verdict instead of flipping every "
            "pass. The global fail-safe ends only after the estate has looked normal for as "
            "long, so regions coming back one by one after a central fault cause no cuts "
            "while the evidence settles. 0 turns this hysteresis off."
        ),
    )
    grey_scoring: bool = Field(
        False,
        description=(
            "Score nodes for grey failure with the learned model. The model only makes healthy "
            "nodes suspect; it never causes a cut. Off by default, because it was trained on "
            "simulated data only."
        ),
    )
    grey_model_path: str | None = Field(
        None,
        description="Path of the grey-failure model file. Unset means the bundled model.",
    )
    grey_suspect_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description=(
            "Grey-failure score from which a healthy node is reported suspect. High, because "
            "suspicion pages a person: the evaluation in docs/MODEL.md gives the trade-off."
        ),
    )
    grey_score_interval_s: float = Field(
        5.0,
        gt=0,
        description="Period of grey-failure scoring, in seconds; scoring runs off the loop.",
    )
    inventory_refresh_s: float = Field(
        10.0,
        gt=0,
        description="Period at which edge Nodes are listed from Kubernetes, in seconds.",
    )
    verify_timeout_s: float = Field(
        5.0,
        gt=0,
        description=(
            "How long a cut or restore is read back from the EndpointSlices before it is "
            "reported as failed, in seconds."
        ),
    )
    dry_run: bool = Field(
        False,
        description="Decide and report every action, but write nothing to Kubernetes.",
    )
    log_json: bool = Field(False, description="Write logs as one JSON object per line.")
    ingress_components: list[str] = Field(
        default_factory=lambda: ["ingress", "ingress-controller"],
        description=(
            "Component names, as agents report them, that mean the node's ingress path failed. "
            "Such a failure cuts only the node's ingress-controller Pods, since the node's other "
            "Pods still serve traffic that does not enter through its ingress. A JSON list."
        ),
    )
    ingress_controller_selector: str = Field(
        "app.kubernetes.io/component=controller",
        min_length=1,
        description=(
            "Label selector of the ingress controller's Pods, cut when a node's ingress path "
            "fails. The default is the label that the ingress-nginx and Traefik charts set."
        ),
    )
    ingress_region_label: str = Field(
        "isolator.io/region",
        min_length=1,
        description=(
            "Label whose value names the region a cloud-side Ingress serves. Those Ingresses "
            "move to their fallback Service while the region is partitioned."
        ),
    )
    region_fallback_services: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Fallback Service of each region's cloud-side Ingresses during a partition, as a "
            'JSON object of region to "service" or "service:port" in the Ingress\'s namespace. '
            "An isolator.io/fallback-service annotation on an Ingress overrides it."
        ),
    )
    action_retry_limit: int = Field(
        3,
        ge=0,
        description=(
            "Further attempts at a cut that reading back did not confirm, or at a restore of an "
            "expired manual isolation. A cut that something keeps undoing needs a person, so "
            "the isolator stops after a few attempts and reports it unverified."
        ),
    )
    action_retry_interval_s: float = Field(
        5.0,
        gt=0,
        description="Pause between attempts at an unconfirmed action, in seconds.",
    )
    cut_recheck_interval_s: float = Field(
        10.0,
        ge=0,
        description=(
            "Period at which verified cuts are read back again, in seconds; 0 turns it off. "
            "A cut that something undid later (a kubelet marking a Pod ready, a person editing "
            "a Pod, a deployment tool reapplying an Ingress) is applied again within the retry "
            "budget. Ten seconds bounds how long traffic reaches a cut node after that, at the "
            "cost of one list of all Pods per check, plus the EndpointSlices of each namespace "
            "with a cut Pod and, while a region is split, the Ingresses."
        ),
    )
    manual_default_ttl_s: float = Field(
        86_400.0,
        ge=0,
        description=(
            "Lifetime of a manual isolation whose request names no TTL, in seconds; 0 means no "
            "expiry. One day, so that a forgotten isolation ends within a day."
        ),
    )
    manual_max_ttl_s: float = Field(
        7 * 86_400.0,
        gt=0,
        description="Longest TTL a manual isolation may ask for, in seconds: one week.",
    )
    manual_restore_hold_s: float = Field(
        300.0,
        ge=0,
        description=(
            "How long automatic cuts of a node stay held after a person restored it, in "
            "seconds, so the control loop does not undo that decision at its next pass."
        ),
    )
    auth_token_file: str | None = Field(
        None,
        description=(
            "Path of the YAML or JSON file that maps each API token, or its SHA-256 as "
            '"sha256:<hex>", to a name and a role (viewer, operator, alertmanager, agent). '
            "Read at start and again whenever the file changes."
        ),
    )
    auth_disabled: bool = Field(
        False,
        description=(
            "Serve the API without authentication. Only for tests: without a token file the "
            "service does not start unless this is set."
        ),
    )
    auth_token_review: bool = Field(
        False,
        description=(
            "Send a bearer token that the token file does not contain to the Kubernetes "
            "TokenReview API (authentication.k8s.io/v1), and map the user it returns to a role "
            "with auth_token_review_service_accounts and auth_token_review_groups. Off by "
            "default because it needs create on tokenreviews in the isolator's ClusterRole."
        ),
    )
    auth_token_review_audiences: list[str] = Field(
        default_factory=list,
        description=(
            "Audiences that a reviewed token must be issued for, as a JSON list, for example "
            '["isolator"]. Empty accepts the API server\'s own audiences, which every '
            "default ServiceAccount token carries."
        ),
    )
    auth_token_review_service_accounts: dict[str, ApiRole] = Field(
        default_factory=dict,
        description=(
            'Role of each ServiceAccount, as a JSON object of "namespace:name" to viewer, '
            "operator, alertmanager or agent. An agent's node is the node-name user extra of "
            "its Pod-bound token, so an agent ServiceAccount needs Kubernetes 1.32 or later."
        ),
    )
    auth_token_review_groups: dict[str, ApiRole] = Field(
        default_factory=dict,
        description=(
            "Role of each Kubernetes group, as a JSON object of group to role, for users that "
            "auth_token_review_service_accounts does not name. A user whose groups map to "
            "different roles is rejected with 403."
        ),
    )
    auth_token_review_ttl_s: float = Field(
        60.0,
        gt=0,
        description=(
            "How long an accepted token is trusted without asking the API server again, in "
            "seconds, and never past the token's own expiry. One minute keeps the load at one "
            "review per token per minute against agents that send a heartbeat every second, "
            "and bounds how long a deleted ServiceAccount keeps access."
        ),
    )
    auth_token_review_negative_ttl_s: float = Field(
        5.0,
        ge=0,
        description=(
            "How long a rejected token stays rejected without asking the API server again, in "
            "seconds. Short, so a token issued just after it was first tried works soon."
        ),
    )
    auth_token_review_grace_s: float = Field(
        300.0,
        ge=0,
        description=(
            "How long past auth_token_review_ttl_s an accepted token stays accepted while the "
            "API server cannot be reached, in seconds, and never past the token's expiry. Five "
            "minutes lets agents ride out a control-plane restart without losing heartbeats."
        ),
    )
    auth_token_review_cache_size: int = Field(
        10_000,
        ge=1,
        description=(
            "Maximum number of accepted tokens in the review cache, and separately of rejected "
            "ones; the least recently used entry leaves first. Size it above the number of "
            "agents, so that every agent's token stays cached."
        ),
    )
    auth_token_review_timeout_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Timeout of one TokenReview request, in seconds. A request waits that long at "
            "most before it gets 503."
        ),
    )

    tls_cert_file: str | None = Field(
        None,
        description=(
            "Path of the PEM certificate chain that the API serves HTTPS with; set it with "
            "tls_key_file. Unset serves plain HTTP, as the lab does."
        ),
    )
    tls_key_file: str | None = Field(
        None,
        description="Path of the unencrypted PEM private key of tls_cert_file.",
    )
    tls_client_ca_file: str | None = Field(
        None,
        description=(
            "Path of a PEM CA bundle for mutual TLS: every client must then present a "
            "certificate signed by it, besides its bearer token. Needs tls_cert_file. The "
            "kubelet's httpGet probes present no client certificate, so they fail against it: "
            "probe /healthz and /readyz with tcpSocket instead."
        ),
    )
    probe_ca_file: str | None = Field(
        None,
        description=(
            "Path of a PEM CA bundle that verifies the agents' serving certificates. Set means "
            "probes go over https, so every agent must serve TLS; unset probes over plain http."
        ),
    )
    probe_tls_server_name: str | None = Field(
        None,
        min_length=1,
        description=(
            "Name that each agent's certificate is checked against instead of the Node's "
            "InternalIP, so that one certificate with this DNS name serves every agent. Unset "
            "checks the InternalIP, which must then be an IP SAN of that agent's certificate. "
            "Needs probe_ca_file."
        ),
    )
    tls_reload_interval_s: float = Field(
        60.0,
        ge=0,
        description=(
            "How often the files of tls_cert_file, tls_key_file, tls_client_ca_file and "
            "probe_ca_file are checked for changes, in seconds; changed files are loaded for "
            "new connections without a restart. 0 turns the check off. The kubelet takes up to "
            "its sync period (1 minute by default) plus its cache delay to update a mounted "
            "Secret, and cert-manager renews a certificate weeks before it expires, so a shorter "
            "period gains little."
        ),
    )

    leader_election: bool = Field(
        False,
        description=(
            "Act only while this replica holds the leader Lease; every replica still serves "
            "the read API. Off by default so that a single replica and the lab act without a "
            "Lease; deploy/base turns it on for its two replicas."
        ),
    )
    leader_election_namespace: str = Field(
        "isolator-system",
        min_length=1,
        description=(
            "Namespace of the leader Lease and of this replica's Pod. deploy/base sets it to "
            "the Pod's own namespace through the downward API."
        ),
    )
    leader_election_lease_name: str = Field(
        "isolator-leader",
        min_length=1,
        description="Name of the coordination.k8s.io/v1 Lease that the replicas compete for.",
    )
    leader_election_identity: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
        min_length=1,
        description=(
            "Holder identity this replica writes into the Lease. The default is the host name, "
            "which in a Pod is the Pod name, plus a random suffix, so that a restarted "
            "container never mistakes its predecessor's Lease for its own."
        ),
    )
    leader_election_pod_name: str | None = Field(
        None,
        description=(
            "Name of this replica's Pod, from the downward API. When set, the leader labels its "
            "Pod isolator.io/leader=true and the other replicas' Pods false, so that the "
            "isolator Service routes heartbeats, alerts and manual requests to the leader only. "
            "Unset labels nothing, as outside a cluster."
        ),
    )
    leader_election_lease_duration_s: float = Field(
        15.0,
        ge=1,
        description=(
            "Seconds without a renewal after which another replica may take the Lease over. "
            "15, 10 and 2 s for the lease, renew deadline and retry period are the defaults "
            "of kube-controller-manager's own leader election."
        ),
    )
    leader_election_renew_deadline_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Seconds after its last successful renewal at which a leader that cannot renew "
            "stops acting. Below the lease duration, so that it has stopped before another "
            "replica may take over."
        ),
    )
    leader_election_retry_period_s: float = Field(
        2.0,
        gt=0,
        description=(
            "Seconds between attempts to acquire or renew the Lease. Below the renew deadline, "
            "so that a leader gets several attempts before it must stop."
        ),
    )

    @property
    def heartbeat_timeout_s(self) -> float:
        """Seconds of silence after which a node counts as silent."""
        return self.heartbeat_interval_s * self.heartbeat_miss_count

    @model_validator(mode="after")
    def _check_timings(self) -> Self:
        if self.prometheus_timeout_s >= self.heartbeat_timeout_s:
            raise ValueError(
                "prometheus_timeout_s must be shorter than the heartbeat timeout "
                f"({self.heartbeat_timeout_s:g} s); lower ISOLATOR_PROMETHEUS_TIMEOUT_S"
            )
        if self.probe_timeout_s >= self.heartbeat_interval_s * 2:
            raise ValueError(
                "probe_timeout_s must be shorter than two heartbeat intervals; "
                "lower ISOLATOR_PROBE_TIMEOUT_S"
            )
        if self.leader_election_renew_deadline_s >= self.leader_election_lease_duration_s:
            raise ValueError(
                "leader_election_renew_deadline_s must be shorter than "
                "leader_election_lease_duration_s, or a leader that cannot renew would still act "
                "after another replica took over; lower ISOLATOR_LEADER_ELECTION_RENEW_DEADLINE_S"
            )
        if self.leader_election_retry_period_s >= self.leader_election_renew_deadline_s:
            raise ValueError(
                "leader_election_retry_period_s must be shorter than "
                "leader_election_renew_deadline_s, or a leader steps down before its next "
                "renewal; lower ISOLATOR_LEADER_ELECTION_RETRY_PERIOD_S"
            )
        if self.auth_token_file is None and not self.auth_token_review and not self.auth_disabled:
            raise ValueError(
                "no API token file: set ISOLATOR_AUTH_TOKEN_FILE or ISOLATOR_AUTH_TOKEN_REVIEW, "
                "or ISOLATOR_AUTH_DISABLED=true to serve the API without authentication"
            )
        return self

    @field_validator("tls_cert_file", "tls_key_file", "tls_client_ca_file", "probe_ca_file")
    @classmethod
    def _check_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _readable(value, f"ISOLATOR_{str(info.field_name).upper()}")

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        _require_pair(
            ("ISOLATOR_TLS_CERT_FILE", self.tls_cert_file),
            ("ISOLATOR_TLS_KEY_FILE", self.tls_key_file),
        )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "ISOLATOR_TLS_CLIENT_CA_FILE is set without ISOLATOR_TLS_CERT_FILE: mutual TLS "
                "needs the API to serve HTTPS, so set ISOLATOR_TLS_CERT_FILE and "
                "ISOLATOR_TLS_KEY_FILE too"
            )
        if self.probe_tls_server_name is not None and self.probe_ca_file is None:
            raise ValueError(
                "ISOLATOR_PROBE_TLS_SERVER_NAME is set without ISOLATOR_PROBE_CA_FILE: probes "
                "go over https only with a CA bundle to verify the agents"
            )
        # Loading the files once here turns a key that does not match its certificate into a
        # start-up error instead of a failure at the first connection.
        self.api_ssl_context()
        self.probe_ssl_context()
        return self

    def api_ssl_context(self) -> ssl.SSLContext | None:
        """Build the API's server context, or return None when it serves plain HTTP."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        client_ca = None
        if self.tls_client_ca_file is not None:
            client_ca = (self.tls_client_ca_file, "ISOLATOR_TLS_CLIENT_CA_FILE")
        return tls.server_context(
            (self.tls_cert_file, "ISOLATOR_TLS_CERT_FILE"),
            (self.tls_key_file, "ISOLATOR_TLS_KEY_FILE"),
            client_ca,
        )

    def probe_ssl_context(self) -> ssl.SSLContext | None:
        """Build the probes' client context, or return None when probes use plain HTTP."""
        if self.probe_ca_file is None:
            return None
        return tls.client_context(ca=(self.probe_ca_file, "ISOLATOR_PROBE_CA_FILE"))


class AgentSettings(BaseSettings):
    """Settings of the node agent (``isolator agent``)."""

    model_config = SettingsConfigDict(env_prefix="ISOLATOR_AGENT_", extra="forbid")

    node: str = Field(description="Kubernetes Node name of the node the agent runs on.")
    region: str = Field(description="Region of the node, as in its topology label.")
    isolator_url: str = Field(description="Base URL of the isolator API, for heartbeats.")
    isolator_ca_file: str | None = Field(
        None,
        description=(
            "Path of a PEM CA bundle that verifies the isolator's certificate when isolator_url "
            "is https. Unset verifies it against the system's trust store."
        ),
    )
    isolator_client_cert_file: str | None = Field(
        None,
        description=(
            "Path of the PEM client certificate that the agent presents to the isolator, for "
            "mutual TLS; set it with isolator_client_key_file. Needs an https isolator_url."
        ),
    )
    isolator_client_key_file: str | None = Field(
        None,
        description="Path of the unencrypted PEM private key of isolator_client_cert_file.",
    )
    tls_cert_file: str | None = Field(
        None,
        description=(
            "Path of the PEM certificate chain that the agent serves /probe, /metrics and "
            "/healthz with, over HTTPS; set it with tls_key_file. Unset serves plain HTTP. The "
            "isolator's probe_ca_file and the edge Prometheus's scrape must then use https."
        ),
    )
    tls_key_file: str | None = Field(
        None,
        description="Path of the unencrypted PEM private key of tls_cert_file.",
    )
    tls_reload_interval_s: float = Field(
        60.0,
        ge=0,
        description=(
            "How often the agent's certificate, key and CA files are checked for changes, in "
            "seconds; changed files are loaded for new connections without a restart. 0 turns "
            "the check off. The default matches the isolator's tls_reload_interval_s."
        ),
    )
    listen_host: str = Field("0.0.0.0", description="Address the agent binds to.")
    listen_port: int = Field(9910, ge=1, le=65535, description="TCP port of the agent.")
    heartbeat_interval_s: float = Field(
        1.0, gt=0, description="Period of heartbeats to the isolator, in seconds."
    )
    heartbeat_timeout_s: float = Field(
        0.8, gt=0, description="Timeout of one heartbeat request, in seconds."
    )
    components: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Health endpoints of the node's components, as a JSON object of name to URL, for "
            'example {"kubelet": "http://127.0.0.1:10248/healthz"}. A component counts as up '
            "while its endpoint answers 2xx within the check timeout."
        ),
    )
    ingress_check_url: str | None = Field(
        None,
        description=(
            "A URL served through this node's ingress controller. The agent requests it every "
            "heartbeat interval, so the data path itself is checked, not only the processes."
        ),
    )
    check_timeout_s: float = Field(
        0.5, gt=0, description="Timeout of one component or ingress check, in seconds."
    )
    token_file: str | None = Field(
        None,
        description=(
            "Path of a file that contains the agent's API token, sent as a bearer token with "
            "every heartbeat. Read at start and again after the isolator rejects a heartbeat "
            "with 401, so a rotated token takes effect without a restart. Unset sends none."
        ),
    )

    @property
    def isolator_https(self) -> bool:
        """Whether heartbeats go to the isolator over TLS."""
        return self.isolator_url.lower().startswith("https://")

    @field_validator(
        "isolator_ca_file",
        "isolator_client_cert_file",
        "isolator_client_key_file",
        "tls_cert_file",
        "tls_key_file",
    )
    @classmethod
    def _check_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _readable(value, f"ISOLATOR_AGENT_{str(info.field_name).upper()}")

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        _require_pair(
            ("ISOLATOR_AGENT_ISOLATOR_CLIENT_CERT_FILE", self.isolator_client_cert_file),
            ("ISOLATOR_AGENT_ISOLATOR_CLIENT_KEY_FILE", self.isolator_client_key_file),
        )
        _require_pair(
            ("ISOLATOR_AGENT_TLS_CERT_FILE", self.tls_cert_file),
            ("ISOLATOR_AGENT_TLS_KEY_FILE", self.tls_key_file),
        )
        for variable, value in [
            ("ISOLATOR_AGENT_ISOLATOR_CA_FILE", self.isolator_ca_file),
            ("ISOLATOR_AGENT_ISOLATOR_CLIENT_CERT_FILE", self.isolator_client_cert_file),
        ]:
            if value is not None and not self.isolator_https:
                raise ValueError(
                    f"{variable} needs an https ISOLATOR_AGENT_ISOLATOR_URL, but the URL is "
                    f"{self.isolator_url!r}: change it to https, or unset {variable}"
                )
        # Loading the files once here turns a key that does not match its certificate into a
        # start-up error instead of a failure at the first heartbeat.
        self.isolator_ssl_context()
        self.serving_ssl_context()
        return self

    def isolator_ssl_context(self) -> ssl.SSLContext | None:
        """Build the heartbeats' client context, or return None when isolator_url is http."""
        if not self.isolator_https:
            return None
        ca = cert = key = None
        if self.isolator_ca_file is not None:
            ca = (self.isolator_ca_file, "ISOLATOR_AGENT_ISOLATOR_CA_FILE")
        if self.isolator_client_cert_file is not None and self.isolator_client_key_file is not None:
            cert = (self.isolator_client_cert_file, "ISOLATOR_AGENT_ISOLATOR_CLIENT_CERT_FILE")
            key = (self.isolator_client_key_file, "ISOLATOR_AGENT_ISOLATOR_CLIENT_KEY_FILE")
        return tls.client_context(ca, cert, key)

    def serving_ssl_context(self) -> ssl.SSLContext | None:
        """Build the context the agent serves with, or return None for plain HTTP."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return tls.server_context(
            (self.tls_cert_file, "ISOLATOR_AGENT_TLS_CERT_FILE"),
            (self.tls_key_file, "ISOLATOR_AGENT_TLS_KEY_FILE"),
        )


def _readable(path: str | None, variable: str) -> str | None:
    return None if path is None else tls.check_readable(path, variable)


def _require_pair(cert: tuple[str, str | None], key: tuple[str, str | None]) -> None:
    """Reject a certificate without its key, or a key without its certificate."""
    (cert_variable, cert_path), (key_variable, key_path) = cert, key
    if cert_path is not None and key_path is None:
        raise ValueError(f"{cert_variable} is set without {key_variable}: set both, or neither")
    if key_path is not None and cert_path is None:
        raise ValueError(f"{key_variable} is set without {cert_variable}: set both, or neither")
