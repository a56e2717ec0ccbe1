"""The deployment manifests on the real kube-apiserver: accepted, and least privilege for real."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.model import CUT_ANNOTATION
from isolator.sources.kubernetes import KubernetesSource
from isolator.sources.leader import LEADER_LABEL

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "isolator-system"
ISOLATOR_USER = f"system:serviceaccount:{NAMESPACE}:isolator"

# The prometheus-operator kinds the monitoring manifests use, with an open schema: enough for
# the API server to accept the manifests, not a copy of the operator's own definitions.
MONITORING_CRDS = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def kubectl(
    plane: ControlPlane, bin_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def installed_rbac(control_plane: ControlPlane, control_plane_bin_dir: Path) -> None:
    """The namespace, CRDs and RBAC applied for real; the rest is only dry-run."""
    for args, stdin in [
        (("apply", "-f", "-"), MONITORING_CRDS),
        (("apply", "-f", str(REPO_ROOT / "deploy/base/namespace.yaml")), None),
        (("apply", "-n", NAMESPACE, "-f", str(REPO_ROOT / "deploy/base/rbac.yaml")), None),
    ]:
        result = await asyncio.to_thread(
            kubectl, control_plane, control_plane_bin_dir, *args, stdin=stdin
        )
        assert result.returncode == 0, result.stderr
    result = await asyncio.to_thread(
        kubectl,
        control_plane,
        control_plane_bin_dir,
        "wait",
        "--for=condition=Established",
        "crd/prometheusrules.monitoring.coreos.com",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=30s",
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "folder", ["deploy/base", "deploy/overlays/example-region", "deploy/overlays/tls"]
)
async def test_manifests_accepted_by_server_dry_run(
    control_plane: ControlPlane, control_plane_bin_dir: Path, installed_rbac: None, folder: str
) -> None:
    result = await asyncio.to_thread(
        kubectl,
        control_plane,
        control_plane_bin_dir,
        "apply",
        "--dry-run=server",
        "-k",
        str(REPO_ROOT / folder),
    )

    assert result.returncode == 0, result.stderr
    assert "deployment.apps/isolator" in result.stdout


ALLOWED = [
    ("list", "nodes"),
    ("watch", "nodes"),
    ("list", "pods"),
    ("patch", "pods"),
    ("patch", "pods/status"),
    ("list", "endpointslices.discovery.k8s.io"),
    ("patch", "endpointslices.discovery.k8s.io"),
    ("patch", "endpoints"),
    ("patch", "ingresses.networking.k8s.io"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("create", "tokenreviews.authentication.k8s.io"),
]
FORBIDDEN = [
    ("delete", "pods"),
    ("create", "pods"),
    ("create", "pods/eviction"),
    ("update", "pods"),
    ("get", "secrets"),
    ("list", "secrets"),
    ("patch", "nodes"),
    ("delete", "nodes"),
    ("delete", "endpointslices.discovery.k8s.io"),
    ("create", "endpointslices.discovery.k8s.io"),
    ("delete", "ingresses.networking.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
    ("create", "subjectaccessreviews.authorization.k8s.io"),
]


@pytest.mark.parametrize(("verb", "resource"), ALLOWED + FORBIDDEN)
async def test_isolator_role_allows_exactly_what_it_uses(
    control_plane: ControlPlane,
    control_plane_bin_dir: Path,
    installed_rbac: None,
    verb: str,
    resource: str,
) -> None:
    result = await asyncio.to_thread(
        kubectl,
        control_plane,
        control_plane_bin_dir,
        "auth",
        "can-i",
        verb,
        resource,
        "--all-namespaces",
        f"--as={ISOLATOR_USER}",
    )

    expected = "yes" if (verb, resource) in ALLOWED else "no"
    assert result.stdout.strip() == expected, (verb, resource, result.stdout, result.stderr)


LEASE = "leases.coordination.k8s.io"


@pytest.mark.parametrize(
    ("verb", "lease", "namespace", "expected"),
    [
        ("get", f"{LEASE}/isolator-leader", NAMESPACE, "yes"),
        ("update", f"{LEASE}/isolator-leader", NAMESPACE, "yes"),
        ("create", LEASE, NAMESPACE, "yes"),
        ("update", f"{LEASE}/other-lease", NAMESPACE, "no"),
        ("get", f"{LEASE}/other-lease", NAMESPACE, "no"),
        ("delete", f"{LEASE}/isolator-leader", NAMESPACE, "no"),
        ("update", f"{LEASE}/isolator-leader", "kube-node-lease", "no"),
        ("create", LEASE, "kube-node-lease", "no"),
    ],
    ids=[
        "get-own-lease",
        "update-own-lease",
        "create-in-own-namespace",
        "update-other-lease",
        "get-other-lease",
        "delete-own-lease",
        "update-in-node-lease-namespace",
        "create-in-node-lease-namespace",
    ],
)
async def test_leader_lease_rights_limited_to_one_lease(
    control_plane: ControlPlane,
    control_plane_bin_dir: Path,
    installed_rbac: None,
    verb: str,
    lease: str,
    namespace: str,
    expected: str,
) -> None:
    result = await asyncio.to_thread(
        kubectl,
        control_plane,
        control_plane_bin_dir,
        "auth",
        "can-i",
        verb,
        lease,
        "-n",
        namespace,
        f"--as={ISOLATOR_USER}",
    )

    assert result.stdout.strip() == expected, (verb, lease, namespace, result.stderr)


async def test_two_replicas_and_service_selects_leader(
    control_plane: ControlPlane, control_plane_bin_dir: Path, installed_rbac: None
) -> None:
    result = await asyncio.to_thread(
        kubectl,
        control_plane,
        control_plane_bin_dir,
        "kustomize",
        str(REPO_ROOT / "deploy/base"),
    )
    assert result.returncode == 0, result.stderr
    documents = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}
    deployment = documents[("Deployment", "isolator")]
    service = documents[("Service", "isolator")]
    budget = documents[("PodDisruptionBudget", "isolator")]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    config_map = documents[("ConfigMap", "isolator")]

    assert deployment["spec"]["replicas"] == 2
    assert config_map["data"]["ISOLATOR_LEADER_ELECTION"] == "true"
    assert service["spec"]["selector"][LEADER_LABEL] == "true"
    assert budget["spec"]["minAvailable"] == 1
    pod_name = env["ISOLATOR_LEADER_ELECTION_POD_NAME"]["valueFrom"]["fieldRef"]
    assert pod_name["fieldPath"] == "metadata.name"
    namespace = env["ISOLATOR_LEADER_ELECTION_NAMESPACE"]["valueFrom"]["fieldRef"]
    assert namespace["fieldPath"] == "metadata.namespace"


async def test_tls_overlay_mounts_its_secrets(
    control_plane: ControlPlane, control_plane_bin_dir: Path
) -> None:
    result = await asyncio.to_thread(
        kubectl,
        control_plane,
        control_plane_bin_dir,
        "kustomize",
        str(REPO_ROOT / "deploy/overlays/tls"),
    )
    assert result.returncode == 0, result.stderr
    documents = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}

    for workload, secret, variables in [
        (
            ("Deployment", "isolator"),
            "isolator-tls",
            {"ISOLATOR_TLS_CERT_FILE", "ISOLATOR_TLS_KEY_FILE", "ISOLATOR_PROBE_CA_FILE"},
        ),
        (
            ("DaemonSet", "isolator-agent-r1"),
            "isolator-agent-tls",
            {
                "ISOLATOR_AGENT_ISOLATOR_CA_FILE",
                "ISOLATOR_AGENT_TLS_CERT_FILE",
                "ISOLATOR_AGENT_TLS_KEY_FILE",
            },
        ),
    ]:
        pod = documents[workload]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        [volume] = [
            v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret
        ]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume]
        for variable in variables:
            assert env[variable].startswith(mount["mountPath"] + "/"), (workload, variable)
        assert mount["readOnly"] is True, workload
    isolator_pod = documents[("Deployment", "isolator")]["spec"]["template"]["spec"]
    agent_pod = documents[("DaemonSet", "isolator-agent-r1")]["spec"]["template"]["spec"]
    [isolator], [agent] = isolator_pod["containers"], agent_pod["containers"]
    assert isolator["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert isolator["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    agent_env = {e["name"]: e.get("value") for e in agent["env"]}
    assert agent_env["ISOLATOR_AGENT_ISOLATOR_URL"].startswith("https://")


@pytest_asyncio.fixture(loop_scope="session")
async def isolator_source(
    control_plane: ControlPlane, installed_rbac: None
) -> AsyncIterator[KubernetesSource]:
    kubeconfig = control_plane.user_kubeconfig(
        ISOLATOR_USER, ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"]
    )
    source = await KubernetesSource.create(str(kubeconfig), agent_port=9910)
    try:
        yield source
    finally:
        await source.close()


async def test_cut_and_restore_work_with_the_role_alone(
    api: ApiClient, isolator_source: KubernetesSource
) -> None:
    await cluster.create_edge_node(api, "rbac-n01", "rbac", "198.18.250.10")
    await cluster.create_service(api, "default", "rbac-svc", {"app": "rbac"}, 8080)
    await cluster.create_pod(api, "default", "rbac-pod", "rbac-n01", {"app": "rbac"})

    nodes = await isolator_source.list_edge_nodes()
    await isolator_source.ensure_serving("rbac-n01")
    cut = await isolator_source.cut_node("rbac-n01", "least-privilege test", "rbac-1")
    restored = await isolator_source.restore_node("rbac-n01", "rbac-1")

    assert "rbac-n01" in {node.name for node in nodes}
    assert cut.pods == ("default/rbac-pod",)
    assert restored.pods == ("default/rbac-pod",)
    pod = await client.CoreV1Api(api).read_namespaced_pod("rbac-pod", "default")
    assert CUT_ANNOTATION not in (pod.metadata.annotations or {})


async def test_role_forbidden_to_read_secrets_or_delete_pods(
    control_plane: ControlPlane, installed_rbac: None
) -> None:
    kubeconfig = control_plane.user_kubeconfig(
        ISOLATOR_USER, ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"]
    )
    async with await config.new_client_from_config(
        config_file=str(kubeconfig), persist_config=False
    ) as as_isolator:
        core = client.CoreV1Api(as_isolator)
        with pytest.raises(ApiException) as secrets:
            await core.list_secret_for_all_namespaces()
        with pytest.raises(ApiException) as delete:
            await core.delete_namespaced_pod("rbac-pod", "default")

    assert secrets.value.status == 403
    assert delete.value.status == 403
