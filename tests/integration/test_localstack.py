"""The local launcher: real servers that answer, stop cleanly, and never outlive their parent."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from pymongo import AsyncMongoClient

from shared.bus import connect_nats
from shared.localstack import local_servers
from shared.settings import load_settings
from tests.helpers import process_alive, wait_for


async def test_servers_answer_and_stop_cleanly(tmp_path: Path) -> None:
    with local_servers(tmp_path) as servers:
        pids = [p.pid for p in servers.processes]
        settings = load_settings(nats_url=servers.nats_url, mongo_url=servers.mongo_url)
        client = await connect_nats(settings, name="test")
        assert client.is_connected
        await client.close()
        mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(servers.mongo_url, serverSelectionTimeoutMS=3000)
        assert (await mongo.admin.command("ping"))["ok"] == 1
        await mongo.close()
    assert not any(process_alive(pid) for pid in pids)


_LAUNCHER = """
import sys, time
from pathlib import Path
from shared.localstack import start_local_servers
servers = start_local_servers(Path(sys.argv[1]))
print(" ".join(str(p.pid) for p in servers.processes), flush=True)
time.sleep(600)
"""


async def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    assert parent.stdout is not None
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(pids) == 2
    assert all(process_alive(pid) for pid in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    async def orphans_gone() -> bool:
        return not any(process_alive(pid) for pid in pids)

    await wait_for(orphans_gone, timeout_s=15, what="servers to exit after their parent was killed")
