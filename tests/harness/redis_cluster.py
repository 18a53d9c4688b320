"""A real Redis Cluster for the tests: three masters with one replica each, started from the
local `redis-server` and joined by `redis-cli --cluster create`, on free ports.

Nodes keep their `nodes.conf` in their own folders, so a node that was killed can be started
again and rejoin (as a replica of whoever took its slots). Data is never persisted, as on the
single test Redis. Every node speaks only TLS (to clients, to its replica and on the cluster
bus) and admits only an ACL user (the default user is off), so the clients' TLS and
authentication are exercised by every test that runs on the cluster.
"""

from __future__ import annotations

import random
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from tenantry.redis_client import cluster_enabled
from tests.harness.servers import SERVER_START_TIMEOUT, MissingServerBinaryError, RedisProcess
from tests.harness.tls import TlsFiles, make_tls_files, redis_tls_options

MASTERS = 3
NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over
BUS_PORT_OFFSET = 10_000  # Redis Cluster's bus listens on the client port + 10000
USER = "tenantry"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose bus port (port + 10000) is free too."""
    while True:
        port = random.randint(20_000, 50_000)
        if _free(port) and _free(port + BUS_PORT_OFFSET):
            return port


def redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise MissingServerBinaryError(
            "redis-cli is not installed: run `make servers` (installs Debian's `redis-server`, "
            "which brings `redis-tools`) or set TENANTRY_TEST_REDIS_CLUSTER_URL"
        )
    return found


SyncRedis = redis.Redis | redis.RedisCluster


def sync_client(url: str) -> SyncRedis:
    """A blocking client of whatever `url` points at, one Redis or a cluster (for tests
    that write or read keys the way the services do)."""
    with redis.Redis.from_url(url) as probe:
        clustered = cluster_enabled(probe.info("cluster"))
    if clustered:
        return redis.RedisCluster.from_url(url, require_full_coverage=False)
    return redis.Redis.from_url(url)


@dataclass
class RedisCluster:
    base_dir: Path
    nodes: list[RedisProcess] = field(default_factory=list)
    password: str = field(default_factory=lambda: secrets.token_hex(8))
    with_tls: bool = True  # off: plain TCP (the benchmark, which measures routing alone)
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        """Any node's URL reaches the cluster: the first one's."""
        address = f"{USER}:{self.password}@127.0.0.1:{self.nodes[0].port}/0"
        if self.tls is None:
            return f"redis://{address}"
        return f"rediss://{address}?ssl_ca_certs={self.tls.ca}"

    def client(self, port: int) -> redis.Redis:
        """A client of one node."""
        tls: dict[str, Any] = (
            {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls is not None else {}
        )
        return redis.Redis(
            port=port, username=USER, password=self.password, socket_timeout=5, **tls
        )

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> None:
        tls = self.tls = make_tls_files(self.base_dir / "tls") if self.with_tls else None
        for index in range(MASTERS * 2):
            folder = self.base_dir / f"node-{index}"
            port = free_cluster_port()
            encrypted = (
                (*redis_tls_options(port, tls), "--tls-cluster", "yes", "--tls-replication", "yes")
                if tls is not None
                else ()
            )
            node = RedisProcess(
                folder,
                port=port,
                options=(
                    *encrypted,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # A replica with stale data may still take over: the tests kill masters.
                    "--cluster-replica-validity-factor", "0",
                    # A master that is down takes only its own slots away (Redis' default
                    # refuses every slot until it is replaced): what Tenantry recommends.
                    "--cluster-require-full-coverage", "no",
                    "--user", USER, "on", f">{self.password}", "~*", "&*", "+@all",
                    "--user", "default", "off",
                    "--masteruser", USER,
                    "--masterauth", self.password,
                ),
            )  # fmt: skip
            node.start()
            self.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = [redis_cli(), *(("--tls", "--cacert", str(tls.ca)) if tls else ())]
        create += ["--user", USER, "--pass", self.password, "--no-auth-warning"]
        create += ["--cluster", "create", *addresses, "--cluster-replicas", "1"]
        result = subprocess.run(
            [*create, "--cluster-yes"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )
        self.wait_until_healthy()

    def wait_until_healthy(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        """Every running node reports `cluster_state:ok` and agrees there are three masters
        with a replica each."""
        deadline = time.monotonic() + timeout
        problem = "not checked yet"
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the Redis Cluster is not healthy after {timeout:.0f}s: {problem}")

    def _problem(self) -> str:
        for node in self.nodes:
            if not node.running:
                continue
            with self.client(node.port) as client:
                try:
                    info = client.cluster("info")
                    shards = client.cluster("slots")
                except (redis.RedisError, OSError) as error:
                    return f"node {node.port}: {error}"
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state {info.get('cluster_state')}"
            running = sum(1 for n in self.nodes if n.running)
            expected_replicas = 1 if running == len(self.nodes) else 0
            if len(shards) < MASTERS:
                return f"node {node.port} sees {len(shards)} masters"
            if any(len(shard[2:]) - 1 < expected_replicas for shard in shards):
                return f"node {node.port}: a master has no replica yet"
        return ""

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Each master's port and its slot ranges, as the cluster sees them now."""
        with self.client(self._any_running().port) as client:
            shards = client.cluster("slots")
        owners: dict[int, list[tuple[int, int]]] = {}
        for start, end, master, *_ in shards:
            owners.setdefault(int(master[1]), []).append((int(start), int(end)))
        return owners

    def master_of(self, key: str) -> int:
        """The port of the master serving `key` now."""
        slot = key_slot(key.encode())
        for port, ranges in self.masters().items():
            if any(start <= slot <= end for start, end in ranges):
                return port
        raise LookupError(f"no master serves slot {slot}")

    def migrate_slot(self, key: str, target_port: int, pause_seconds: float = 0.0) -> int:
        """Move the slot of `key` to the master at `target_port` the way `redis-cli
        --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE key by key, then NODE on
        every master), pausing between keys so that traffic meets the slot half moved.
        Returns the number of keys moved."""
        slot = key_slot(key.encode())
        source_port = self.master_of(key)
        with (
            self.client(source_port) as source,
            self.client(target_port) as target,
        ):
            source_id, target_id = source.cluster("myid"), target.cluster("myid")
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 1):
                source.execute_command(
                    "MIGRATE", "127.0.0.1", target_port, "", 0, 5000,
                    "AUTH2", USER, self.password, "KEYS", *keys,
                )  # fmt: skip
                moved += len(keys)
                time.sleep(pause_seconds)
            for port in self.masters():
                with self.client(port) as master:
                    master.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def wait_until_in_sync(self, master_port: int, timeout: float = SERVER_START_TIMEOUT) -> None:
        """Wait until the master's replica has every write the master took."""
        deadline = time.monotonic() + timeout
        with self.client(master_port) as master:
            while time.monotonic() < deadline:
                info = master.info("replication")
                replica = info.get("slave0", {})
                if replica.get("offset") == info["master_repl_offset"]:
                    return
                time.sleep(0.02)
        raise TimeoutError(f"the replica of {master_port} did not catch up in {timeout:.0f}s")

    def replica_of(self, master_port: int) -> int:
        """The port of the replica that follows `master_port`."""
        with self.client(master_port) as client:
            info = client.info("replication")
        return int(info["slave0"]["port"])

    def _any_running(self) -> RedisProcess:
        return next(node for node in self.nodes if node.running)

    def flush(self) -> None:
        """Empty every master (replicas follow)."""
        for port in self.masters():
            with self.client(port) as client:
                client.flushall()

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()
        shutil.rmtree(self.base_dir, ignore_errors=True)
