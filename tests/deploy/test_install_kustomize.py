"""scripts/install-kustomize.sh installs (once) the kustomize the render tests look for."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.render import KUSTOMIZE_VERSION, ROOT, kustomize_install_path

SCRIPT = ROOT / "scripts" / "install-kustomize.sh"


def test_script_and_tests_pin_the_same_version() -> None:
    [pinned] = re.findall(r"^version=(\S+)$", SCRIPT.read_text(), re.MULTILINE)
    assert pinned == KUSTOMIZE_VERSION


def test_script_reuses_the_installed_binary_and_prints_its_path() -> None:
    """Runs the script as CI does; once installed, a second run only checks the version."""
    first = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == str(kustomize_install_path())
    again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 0, again.stderr
    assert "(cached)" in again.stdout
    version = subprocess.run([str(kustomize_install_path()), "version"], capture_output=True, text=True,
                             timeout=30, check=True)  # fmt: skip
    assert KUSTOMIZE_VERSION in version.stdout
