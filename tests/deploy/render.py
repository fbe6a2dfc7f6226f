"""Render the kustomize tree once per test session and index what comes out.

kustomize is looked up in this order: `PULSE_KUSTOMIZE_BIN`, the path
`scripts/install-kustomize.sh` installs to, then `PATH`. A missing binary fails the
test with the command that installs it (CI runs that script first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
#: Keep in step with scripts/install-kustomize.sh.
KUSTOMIZE_VERSION = "v5.8.1"

Obj = dict[str, Any]


def kustomize_install_path() -> Path:
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_dir / "marketpulse" / "bin" / f"kustomize-{KUSTOMIZE_VERSION}"


def find_kustomize() -> Path:
    """The kustomize binary, or an AssertionError saying how to install it."""
    for candidate in (os.environ.get("PULSE_KUSTOMIZE_BIN"), str(kustomize_install_path()), shutil.which("kustomize")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise AssertionError(
        f"kustomize not found (looked at $PULSE_KUSTOMIZE_BIN, {kustomize_install_path()} and PATH): "
        "run scripts/install-kustomize.sh (needs Go) or set PULSE_KUSTOMIZE_BIN"
    )


@cache
def render(target: str) -> tuple[Obj, ...]:
    """`kustomize build deploy/k8s/<target>` as parsed objects (`base` or `overlays/<name>`)."""
    result = subprocess.run(
        [str(find_kustomize()), "build", str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kustomize build {target} failed:\n{result.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


@dataclass(frozen=True)
class Rendered:
    """One rendered overlay with look-ups by kind and name."""

    overlay: str
    objects: tuple[Obj, ...]

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        """The object of `kind` named `name`, ignoring a generator's hash suffix."""
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name or obj["metadata"]["name"].rsplit("-", 1)[0] == name:
                return obj
        raise AssertionError(f"{self.overlay}: no {kind} named {name}")

    def find(self, kind: str, name: str) -> Obj | None:
        try:
            return self.get(kind, name)
        except AssertionError:
            return None

    @property
    def namespace(self) -> str:
        [namespace] = self.of_kind("Namespace")
        name: str = namespace["metadata"]["name"]
        return name

    def workloads(self) -> list[Obj]:
        return self.of_kind("Deployment") + self.of_kind("StatefulSet")

    def containers(self) -> Iterator[tuple[Obj, Obj]]:
        """(workload, container) for every container and init container."""
        for workload in self.workloads():
            spec = workload["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield workload, container


def rendered(overlay: str) -> Rendered:
    return Rendered(overlay, render(f"overlays/{overlay}"))


def k8s_name(service: str) -> str:
    """Kubernetes object name of a service (`market_sync` -> `market-sync`)."""
    return service.replace("_", "-")


def settings_from_env(env: dict[str, str]) -> Settings:
    """Settings as a process with exactly this PULSE_* environment would load them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()
