"""Policy checks on the rendered manifests: what a platform team's review would demand.

Every container is probed, bounded and locked down; every setting the code needs
reaches it with a valid value; each service logs in to NATS as its own user whose
permissions are exactly those `shared/permissions.py` derives; production is highly
available (replicas, PDBs, spread, default-deny network).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from types import ModuleType

import pytest

from shared.names import SERVICES, Names
from shared.permissions import USERS, all_permissions, password_variable, render_authorization
from shared.settings import ENV_PREFIX, Settings, secret_fields
from tests.deploy.render import K8S, OVERLAYS, ROOT, Obj, Rendered, k8s_name, rendered, settings_from_env

NAMES = Names()
#: Every Deployment of marketpulse: the services and the operators' dashboard.
WORKLOADS = (*SERVICES, "dashboard")
#: Settings every service needs in a deployment although the model has defaults for
#: them (defaults point at localhost, and production NATS refuses anonymous clients).
DEPLOYMENT_REQUIRED = {"nats_url", "mongo_url", "nats_user", "nats_password"}
#: Secrets production creates out of band (deploy/README.md): key -> a plausible value.
EXTERNAL_SECRETS: dict[tuple[str, str], str] = {
    ("marketpulse-mongo", "url"): "mongodb+srv://pulse:pw@mongo.example.com/?tls=true",
    ("marketpulse-provider", "polymarket-api-key"): "api-key",
    ("marketpulse-dashboard", "token"): "a-dashboard-operator-token",
    **{("marketpulse-nats-users", user): f"{user}-password" for user in USERS},
}


def workload_id(workload: Obj, container: Obj) -> str:
    return f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"


# -- containers ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_and_bounded_resources(overlay: str) -> None:
    problems = []
    for workload, container in rendered(overlay).containers():
        where = workload_id(workload, container)
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in container:
                problems.append(f"{where}: no {probe}")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(bound, {}):
                    problems.append(f"{where}: no {bound}.{resource}")
    assert problems == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    problems = []
    for workload, container in rendered(overlay).containers():
        where = workload_id(workload, container)
        pod = workload["spec"]["template"]["spec"]
        pod_security = pod.get("securityContext", {})
        security = container.get("securityContext", {})
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not true")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as uid 0")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities.drop is not [ALL]")
        if security.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token it never uses")
        image = container["image"]
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{where}: image {image} is not pinned to a version")
    assert problems == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_runs_its_module_and_serves_health_on_the_settings_port(overlay: str) -> None:
    target = rendered(overlay)
    assert sorted(d["metadata"]["name"] for d in target.of_kind("Deployment")) == sorted(map(k8s_name, WORKLOADS))
    for service in WORKLOADS:
        deployment = target.get("Deployment", k8s_name(service))
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [f"services.{service}"]
        settings = container_settings(target, container)
        [port] = container["ports"]
        assert port["containerPort"] == (settings.dashboard_port if service == "dashboard" else settings.http_port)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(settings.http_port)
        assert annotations["prometheus.io/path"] == "/metrics"


# -- settings ------------------------------------------------------------------------------


def secret_value(target: Rendered, name: str, key: str, optional: bool) -> str | None:
    """The value a secretKeyRef resolves to; a Secret not rendered must be a known external one."""
    # Exact names: kustomize rewrites references to generated Secrets with their hash suffix.
    secret = next((s for s in target.of_kind("Secret") if s["metadata"]["name"] == name), None)
    if secret is not None:
        if key in secret.get("data", {}):
            return base64.b64decode(secret["data"][key]).decode()
        assert optional, f"{target.overlay}: Secret {name} has no key {key}"
        return None
    assert (name, key) in EXTERNAL_SECRETS, f"{target.overlay}: Secret {name}/{key} is neither rendered nor external"
    return EXTERNAL_SECRETS[(name, key)]


def pod_volumes(target: Rendered, container: Obj) -> list[Obj]:
    """The volumes of the pod that runs `container`."""
    for deployment in target.of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        if any(candidate is container for candidate in spec["containers"]):
            volumes: list[Obj] = spec.get("volumes", [])
            return volumes
    raise AssertionError("the container belongs to no rendered Deployment")


def mounted_secret(target: Rendered, container: Obj, path: str) -> str | None:
    """The content of the file at `path` when it comes from a mounted Secret (else fail)."""
    for mount in container.get("volumeMounts", []):
        folder = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        [volume] = [v for v in pod_volumes(target, container) if v["name"] == mount["name"]]
        assert "secret" in volume, f"{path} is mounted from {volume}, not from a Secret"
        source = volume["secret"]
        relative = path.removeprefix(folder)
        keys = {item["path"]: item["key"] for item in source.get("items", [])} or {relative: relative}
        assert relative in keys, f"{path}: the Secret volume {volume['name']} has no such file"
        return secret_value(target, source["secretName"], keys[relative], source.get("optional", False))
    raise AssertionError(f"{path} is not under any volume mount of the container")


def container_env(target: Rendered, container: Obj) -> dict[str, str]:
    """The environment the container starts with, resolved from ConfigMaps and Secrets.

    A secret given as a mounted file (`<SECRET>_FILE`) is resolved to the value the service
    reads from that file (and checked to come from a mounted Secret).
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = target.get("ConfigMap", source["configMapRef"]["name"])
        assert config_map["metadata"]["name"] == source["configMapRef"]["name"], "reference without hash suffix"
        env.update(config_map["data"])
    for variable in container.get("env", []):
        secret_file = variable["name"].removeprefix(ENV_PREFIX).lower().removesuffix("_file")
        if "value" in variable and variable["name"].endswith("_FILE") and secret_file in secret_fields():
            value = mounted_secret(target, container, variable["value"])
            if value is not None:
                env[variable["name"].removesuffix("_FILE")] = value
        elif "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            ref = variable["valueFrom"]["secretKeyRef"]
            value = secret_value(target, ref["name"], ref["key"], ref.get("optional", False))
            if value is not None:
                env[variable["name"]] = value
    return env


def container_settings(target: Rendered, container: Obj) -> Settings:
    """Settings as the service would load them from its environment (and only from it)."""
    return settings_from_env(container_env(target, container))


def is_setting(variable: str) -> bool:
    """True when a PULSE_ variable names a field of Settings (nested parts with `__`)."""
    field = variable.removeprefix(ENV_PREFIX).split("__", 1)[0].lower()
    return field in Settings.model_fields


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_required_setting_is_provided_and_valid(overlay: str) -> None:
    target = rendered(overlay)
    required = {name for name, field in Settings.model_fields.items() if field.is_required()} | DEPLOYMENT_REQUIRED
    for service in WORKLOADS:
        [container] = target.get("Deployment", k8s_name(service))["spec"]["template"]["spec"]["containers"]
        env = container_env(target, container)
        unknown = [name for name in env if name.startswith(ENV_PREFIX) and not is_setting(name)]
        assert unknown == [], f"{service}: variables that no setting reads (typo?)"
        missing = sorted(f"{ENV_PREFIX}{name.upper()}" for name in required if f"{ENV_PREFIX}{name.upper()}" not in env)
        assert missing == [], f"{service}: required settings not provided"
        settings = container_settings(target, container)  # raises ConfigError on a bad value
        assert settings.namespace == "", "deployments use DESIGN.md's names: PULSE_NAMESPACE must be empty"
        assert settings.nats_user == service
        assert settings.nats_url.startswith("nats://nats:")


def test_streams_are_replicated_on_every_prod_server() -> None:
    for overlay, servers in (("dev", 1), ("prod", 3)):
        target = rendered(overlay)
        assert target.get("StatefulSet", "nats")["spec"]["replicas"] == servers
        [container] = target.get("Deployment", "ticker")["spec"]["template"]["spec"]["containers"]
        assert container_settings(target, container).stream_replicas == servers


def test_invalid_settings_are_caught() -> None:
    """Guards the settings test: a bad value in the ConfigMap fails it."""
    target = rendered("dev")
    config_map = target.get("ConfigMap", "marketpulse-settings")
    broken_map = {**config_map, "data": {**config_map["data"], "PULSE_NATS_URL": "http://nats"}}
    broken = Rendered("dev", tuple(broken_map if o is config_map else o for o in target.objects))
    [container] = broken.get("Deployment", "ticker")["spec"]["template"]["spec"]["containers"]
    with pytest.raises(ValueError, match="PULSE_NATS_URL"):
        container_settings(broken, container)


# -- NATS users ------------------------------------------------------------------------------

_USER_RE = re.compile(
    r'user: "(?P<user>[^"]+)"\s+password: \$(?P<variable>\w+)\s+permissions: \{\s+'
    r"publish: \{ allow: (?P<publish>\[.*?\]) \}\s+subscribe: \{ allow: (?P<subscribe>\[.*?\]) \}"
)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_nats_config", ROOT / "deploy" / "generate_nats_config.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_nats_files_are_up_to_date() -> None:
    stale = [str(p.relative_to(ROOT)) for p, text in generator().wanted_files().items() if p.read_text() != text]
    assert stale == [], "run: .venv/bin/python deploy/generate_nats_config.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_nats_users_have_exactly_the_derived_permissions(overlay: str) -> None:
    auth = rendered(overlay).get("ConfigMap", "nats-config")["data"]["auth.conf"]
    assert auth == render_authorization(NAMES)
    parsed = {
        m["user"]: (m["variable"], {"publish": json.loads(m["publish"]), "subscribe": json.loads(m["subscribe"])})
        for m in _USER_RE.finditer(auth)
    }
    assert list(parsed) == list(USERS)
    for user, permissions in all_permissions(NAMES).items():
        variable, granted = parsed[user]
        assert variable == password_variable(user)
        assert granted == permissions, f"{user}: rendered permissions differ from shared/permissions.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_with_the_password_nats_holds_for_it(overlay: str) -> None:
    target = rendered(overlay)
    [nats] = target.get("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    nats_env = {v["name"]: v for v in nats["env"]}
    for user in USERS:
        variable = password_variable(user)
        assert nats_env[variable]["value"] == f'"$({variable}_RAW)"', "nats-server needs the password quoted"
    for service in WORKLOADS:
        [container] = target.get("Deployment", k8s_name(service))["spec"]["template"]["spec"]["containers"]
        env = {v["name"]: v for v in container["env"]}
        assert env["PULSE_NATS_USER"]["value"] == service
        assert "PULSE_NATS_PASSWORD" not in env, "a mounted file, so that a rotated password reaches the pod"
        path = env["PULSE_NATS_PASSWORD_FILE"]["value"]
        [mount] = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        [volume] = [v for v in pod_volumes(target, container) if v["name"] == mount["name"]]
        [item] = [i for i in volume["secret"]["items"] if i["path"] == path.removeprefix(mount["mountPath"] + "/")]
        server_ref = nats_env[f"{password_variable(service)}_RAW"]["valueFrom"]["secretKeyRef"]
        assert (volume["secret"]["secretName"], item["key"]) == (server_ref["name"], server_ref["key"])
        assert mounted_secret(target, container, path) == secret_value(
            target, server_ref["name"], server_ref["key"], False
        )


def test_dev_generates_a_password_for_every_user() -> None:
    secret = rendered("dev").get("Secret", "marketpulse-nats-users")
    assert sorted(secret["data"]) == sorted(USERS)


def test_external_prod_secrets_are_documented() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    prod = rendered("prod")
    assert prod.of_kind("Secret") == [], "production Secrets are created out of band, never committed"
    for name, key in EXTERNAL_SECRETS:
        assert name in readme, f"deploy/README.md does not explain Secret {name}"
        assert key in readme, f"deploy/README.md does not name key {key} of Secret {name}"


# -- production availability -------------------------------------------------------------------


def selects(selector: Obj, workload: Obj) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector["matchLabels"].items() <= labels.items())


def test_prod_replicas() -> None:
    prod = rendered("prod")
    assert prod.get("Deployment", "ticker")["spec"]["replicas"] == 2
    for service in ("stats", "janitor"):
        assert prod.get("Deployment", service)["spec"]["replicas"] == 1
    for workload in rendered("dev").workloads():
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]


def test_every_prod_workload_has_one_disruption_budget_and_spreads() -> None:
    prod = rendered("prod")
    budgets = prod.of_kind("PodDisruptionBudget")
    for workload in prod.workloads():
        name = workload["metadata"]["name"]
        covering = [b["metadata"]["name"] for b in budgets if selects(b["spec"]["selector"], workload)]
        assert len(covering) == 1, f"{name}: covered by PDBs {covering}"
        spread = workload["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
    nats = prod.get("PodDisruptionBudget", "nats")
    assert nats["spec"]["minAvailable"] == 2, "a drain must never take the JetStream cluster below quorum"


def test_prod_network_is_default_deny_with_an_allowance_per_workload() -> None:
    prod = rendered("prod")
    policies = prod.of_kind("NetworkPolicy")
    deny = prod.get("NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for workload in prod.workloads():
        allowing = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], workload)]
        assert allowing, f"{workload['metadata']['name']}: no NetworkPolicy lets it talk to anything"
    nats_policy = prod.get("NetworkPolicy", "nats")
    client_selector = nats_policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    for service in WORKLOADS:
        assert selects(client_selector, prod.get("Deployment", k8s_name(service))), f"{service} cannot reach NATS"


def test_kustomize_tree_has_no_stray_files() -> None:
    """Every YAML file under deploy/k8s is referenced by a kustomization (none forgotten)."""
    referenced: set[str] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        text = kustomization.read_text()
        referenced |= {str((kustomization.parent / m).resolve()) for m in re.findall(r"[\w./-]+\.(?:yaml|conf)", text)}
    files = [p for p in K8S.rglob("*") if p.suffix in (".yaml", ".conf") and p.name != "kustomization.yaml"]
    assert sorted(str(p.relative_to(K8S)) for p in files if str(p.resolve()) not in referenced) == []


def test_readme_explains_every_setting() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    variables = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    missing = [variable for variable in variables if f"`{variable}`" not in readme]
    assert missing == [], "add them to the settings table of deploy/README.md"
