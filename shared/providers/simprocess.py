"""Run the simulator as a real child process (for tests, benchmarks and local runs).

    with simulator_process(markets=500, frozen=True, faults=["markets:5xx=0.2"]) as sim:
        settings = make_settings(polymarket_gamma_url=sim.url, polymarket_data_url=sim.url)

The child binds a free port and prints its URL; it is stopped on exit, and dies with its
parent on Linux even when the parent is killed, so no simulator outlives a test run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from shared.errors import Unreachable

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator child process and the URL it serves (Gamma and Data API alike)."""

    url: str
    process: subprocess.Popen[bytes]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def simulator_command(
    *, markets: int, seed: int, faults: Sequence[str], frozen: bool, extra: Sequence[str]
) -> list[str]:
    """The `pulse simulate` command line for these options (on a free port)."""
    command = [sys.executable, "-m", "shared.cli.simulate", "--host", "127.0.0.1", "--port", "0"]
    command += ["--markets", str(markets), "--seed", str(seed)]
    command += ["--frozen"] if frozen else ["--no-frozen"]
    for fault in faults:
        command += ["--fault", fault]
    return command + list(extra)


@contextlib.contextmanager
def simulator_process(
    *,
    markets: int = 1000,
    seed: int = 1,
    faults: Sequence[str] = (),
    frozen: bool = True,
    extra: Sequence[str] = (),
    start_timeout_s: float = 20.0,
) -> Iterator[RunningSimulator]:
    """Start `pulse simulate` on a free port, yield it, and stop it.

    Args:
        markets: catalogue size.
        seed: seed of records and faults.
        faults: `ENDPOINT:KIND=RATE` strings.
        frozen: sim time moves only through POST /_sim/advance (deterministic tests).
        extra: further `pulse simulate` options, e.g. ["--slow-s", "2"].
        start_timeout_s: longest wait for the simulator to print its URL.

    Raises:
        Unreachable: the simulator did not start in time (its stderr is in the message).
    """
    command = simulator_command(markets=markets, seed=seed, faults=faults, frozen=frozen, extra=extra)
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, preexec_fn=_die_with_parent, env=dict(os.environ)
        )
        try:
            url = _read_url(process, start_timeout_s, errors)
            yield RunningSimulator(url, process)
        finally:
            _stop(process)


def _read_url(process: subprocess.Popen[bytes], timeout_s: float, errors: object) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    selector.close()
    try:
        return str(json.loads(line)["simulator"])
    except (ValueError, KeyError):
        _stop(process)
        detail = b""
        if hasattr(errors, "seek") and hasattr(errors, "read"):
            errors.seek(0)
            detail = errors.read()[-2000:]
        raise Unreachable(
            f"the simulator did not start within {timeout_s:g}s: {detail.decode(errors='replace').strip()}"
        ) from None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()
