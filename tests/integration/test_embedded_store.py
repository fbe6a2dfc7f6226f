"""The embedded store (mongo-java-server behind tools/embedded-mongo): start, restart on the
same data, crash durability, clean stop, and one clear line for each start-up failure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from shared.errors import ConfigError, Unreachable
from shared.localstack import find_embedded_mongo, find_java, start_embedded_mongo
from tests.helpers import process_alive

_DATA_FILE = Path("embedded-mongo") / "marketpulse.mv.db"


def _client(port: int) -> MongoClient[dict[str, object]]:
    return MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=5000, timeoutMS=10000)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=20)


def test_starts_from_an_empty_folder_restarts_on_its_data_and_stops_cleanly(tmp_path: Path) -> None:
    process, port = start_embedded_mongo(tmp_path)
    with _client(port) as client:
        assert client.admin.command("buildInfo")["version"].startswith("6.")
        client.app.items.insert_many([{"_id": n, "n": n} for n in range(100)])
    _stop(process)
    assert process.returncode in (0, 143)  # SIGTERM runs the shutdown hook, which commits and closes
    assert not process_alive(process.pid)
    assert (tmp_path / _DATA_FILE).is_file()

    process, port = start_embedded_mongo(tmp_path)
    try:
        with _client(port) as client:
            assert client.app.items.count_documents({}) == 100
            assert client.app.items.find_one({"_id": 42}) == {"_id": 42, "n": 42}
    finally:
        _stop(process)


def test_what_was_acknowledged_survives_a_kill_9_during_writes(tmp_path: Path) -> None:
    """Writers keep inserting while the store is SIGKILLed; every acknowledged insert is there after a restart."""
    process, port = start_embedded_mongo(tmp_path)
    acknowledged: list[list[int]] = [[] for _ in range(4)]
    enough = threading.Event()

    def writer(slot: int) -> None:
        with _client(port) as client:
            for n in range(100_000):
                try:
                    client.app.items.insert_one({"_id": f"{slot}:{n}"})
                except PyMongoError:
                    return  # the store died under us: this write was never acknowledged
                acknowledged[slot].append(n)
                if sum(map(len, acknowledged)) >= 400:
                    enough.set()

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    assert enough.wait(timeout=60), "the writers did not get 400 inserts acknowledged within 60 s"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=30)

    process, port = start_embedded_mongo(tmp_path)
    try:
        with _client(port) as client:
            stored = {doc["_id"] for doc in client.app.items.find({}, {"_id": 1})}
    finally:
        _stop(process)
    expected = {f"{slot}:{n}" for slot, numbers in enumerate(acknowledged) for n in numbers}
    assert len(expected) >= 400
    assert expected <= stored, f"{len(expected - stored)} acknowledged inserts were lost"


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(Unreachable) as caught:
            start_embedded_mongo(tmp_path, port)
    message = str(caught.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message
    assert "in use" in message


def test_a_locked_data_folder_is_one_clear_line(tmp_path: Path) -> None:
    first, _ = start_embedded_mongo(tmp_path)
    try:
        with pytest.raises(Unreachable) as caught:
            start_embedded_mongo(tmp_path)
    finally:
        _stop(first)
    message = str(caught.value)
    assert "\n" not in message
    assert "locked" in message
    assert str(tmp_path / _DATA_FILE) in message


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--cache-mb", "0"], "--cache-mb must be 1 or more, got 0"),
        (["--cache-mb", "lots"], "--cache-mb must be a whole number of MB, got lots"),
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--bogus"], "unknown argument --bogus"),
    ],
)
def test_bad_launcher_arguments_are_one_line_and_exit_2(tmp_path: Path, arguments: list[str], said: str) -> None:
    command = [str(find_java()), "-cp", f"{find_embedded_mongo()}/*", "marketpulse.store.EmbeddedMongo"]
    result = subprocess.run(
        [*command, "--port", "0", "--data", str(tmp_path), *arguments], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert said in result.stderr
    assert not (tmp_path / _DATA_FILE).exists()  # refused before anything was opened


@pytest.mark.parametrize("content", [b"H:2,block:garbage\n", os.urandom(20_000)], ids=["truncated", "random"])
def test_a_corrupt_data_file_is_one_clear_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / _DATA_FILE).parent.mkdir(parents=True)
    (tmp_path / _DATA_FILE).write_bytes(content)
    with pytest.raises(Unreachable) as caught:
        start_embedded_mongo(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot be read" in message
    assert "move it away" in message


def test_a_missing_java_is_a_config_error_naming_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PULSE_JAVA_BIN", str(tmp_path / "no-java"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        start_embedded_mongo(tmp_path)
    assert "java not found" in str(caught.value)
    assert "PULSE_LOCAL_STORE=ferretdb" in str(caught.value)


def test_pulse_up_without_java_exits_2_with_one_line(tmp_path: Path) -> None:
    """The CLI reports the missing Java as one line and exit 2, and leaves no server running."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PULSE_") and key != "JAVA_HOME"}
    env.update({"PULSE_JAVA_BIN": str(tmp_path / "no-java"), "PATH": str(Path(sys.executable).parent)})
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(tmp_path / "data"), "--for", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "java not found" in errors[0]
