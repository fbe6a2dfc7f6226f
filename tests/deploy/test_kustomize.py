"""Both overlays render with kustomize and every object is valid Kubernetes, offline.

Built-in kinds validate strictly (unknown fields are errors) against the Kubernetes
1.30 schemas shipped with `kubernetes-validate`. Custom resources have no schema there:
they are listed in CRDS, skipped explicitly, and their required fields checked here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from shared.localstack import find_nats_server
from shared.names import JOB_SERVICE, Names
from shared.permissions import USERS, password_variable
from tests.deploy.render import OVERLAYS, Obj, Rendered, k8s_name, render, rendered

#: Oldest Kubernetes we support; its schemas are the strictest test of our fields.
KUBERNETES_VERSION = "1.30.0"
#: Custom resources (no schema offline): apiVersion/kind -> who installs the CRD.
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "KEDA 2.x",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator",
}
NAMES = Names()  # production names: empty namespace


@pytest.mark.parametrize("target", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_renders(target: str) -> None:
    objects = render(target)
    assert objects, f"{target} rendered nothing"
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects), "duplicate objects"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_validates_against_the_kubernetes_schema(overlay: str) -> None:
    problems = []
    for obj in rendered(overlay).objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert problems == []


def test_validation_catches_a_misspelt_field() -> None:
    """Guards the test above: strict validation really rejects unknown fields."""
    deployment = rendered("dev").get("Deployment", "ticker")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_known_custom_resources_are_left_unvalidated(overlay: str) -> None:
    unknown = set()
    for obj in rendered(overlay).objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add(key)
        except kubernetes_validate.ValidationError:
            pass  # reported by the schema test
    assert unknown == set()


# -- custom resources, checked by hand -----------------------------------------------------


def scaled_jobs(prod: Rendered) -> dict[str, Obj]:
    """Each ScaledObject by the main job of the service it scales (the first job `JOB_SERVICE` gives
    the service: market_sync also runs market_refresh, whose queue does not scale it)."""
    main_job = {service: job for job, service in reversed(JOB_SERVICE.items())}
    return {
        main_job[service]: scaled
        for scaled in prod.of_kind("ScaledObject")
        for service in main_job
        if scaled["spec"]["scaleTargetRef"]["name"] == k8s_name(service)
    }


def test_keda_scales_market_sync_and_whale_sync_on_their_consumers() -> None:
    prod = rendered("prod")
    by_job = scaled_jobs(prod)
    assert sorted(by_job) == ["market_sync", "whale_sync"]
    headless = prod.get("Service", "nats-headless")
    monitor_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "monitor")
    for job, scaled in by_job.items():
        spec = scaled["spec"]
        target = prod.get("Deployment", spec["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], f"{job}: KEDA owns the replica count; drop spec.replicas"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["stream"] == NAMES.jobs_stream
        assert meta["consumer"] == NAMES.consumer_name(job)
        assert meta["account"] == "$G"  # no accounts configured: the global account
        assert meta["natsServerMonitoringEndpoint"] == (
            f"nats-headless.{prod.namespace}.svc.cluster.local:{monitor_port}"
        )
        assert int(meta["lagThreshold"]) >= 1
        assert all(isinstance(value, str) for value in meta.values()), "KEDA metadata values must be strings"


def test_service_monitor_selects_every_service_port() -> None:
    prod = rendered("prod")
    [monitor] = prod.of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    selected = [s for s in prod.of_kind("Service") if selector.items() <= s["metadata"].get("labels", {}).items()]
    deployments = sorted(d["metadata"]["name"] for d in prod.of_kind("Deployment"))
    assert sorted(s["metadata"]["name"] for s in selected) == deployments
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# -- the NATS configuration really loads -------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_server_accepts_the_rendered_configuration(overlay: str, tmp_path: Path) -> None:
    """`nats-server -t` parses the ConfigMap's files, with passwords as the pod provides them."""
    config_map = rendered(overlay).get("ConfigMap", "nats-config")
    for filename, text in config_map["data"].items():
        (tmp_path / filename).write_text(text.replace('"/data"', f'"{tmp_path / "data"}"'))
    env = {"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"}
    env |= {password_variable(user): f'"{user}-Secret-1234"' for user in USERS}
    result = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(tmp_path / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
