"""A throwaway rabbitmq-server for the tests: its own node, ports, epmd and data dir, no plugins.

With `tls=True` the node also listens for TLS (`tls_uri`), with a throwaway CA,
a server certificate and a client certificate (tests/brokers/certs.py); the
node requires the client certificate. Both listeners start together, so TLS
costs no second boot.

The node runs from the versioned script under /usr/lib/rabbitmq (the /usr/sbin
wrapper would `su` to the rabbitmq user and use /var/lib/rabbitmq). Everything
the node writes stays in the temp dir, and it never touches a system broker:
AMQP, Erlang distribution and epmd each get a free port of their own. The
epmd is started here (not by the VM, which would daemonize it out of reach),
so cleanup can stop it by pid; the VM and its helpers share one process group
that kill() signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pamqp.commands
import pamqp.exceptions
import pamqp.frame
import pamqp.header

from tests.brokers import BrokerServer, free_port, port_open, require_binary
from tests.brokers.certs import make_certificates

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
PROBE_TIMEOUT = 2.0
CTL_TIMEOUT = 60.0


class RabbitServer(BrokerServer):
    name = "rabbitmq"

    def __init__(self, *, tls: bool = False) -> None:
        require_binary("rabbitmq-server")
        self.epmd_bin = require_binary("epmd")
        super().__init__()
        self.tls_port = free_port() if tls else None
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"syncar-{uuid.uuid4().hex[:8]}@localhost"
        self.epmd: subprocess.Popen[bytes] | None = None
        (self.dir / "home").mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    "log.console = true",
                    "log.console.level = warning",
                    "log.file = false",
                    # A nearly full test disk must not block publishers.
                    "disk_free_limit.absolute = 1MB",
                    *self._tls_config(),
                    "",
                ]
            )
        )

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def tls_uri(self) -> str:
        """amqps:// with the test CA and the client certificate, as aiormq reads them from the query."""
        assert self.tls_port is not None, "started without tls=True"
        query = urlencode(
            {"cafile": self.certs.ca, "certfile": self.certs.client_cert, "keyfile": self.certs.client_key}
        )
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/?{query}"

    def _tls_config(self) -> list[str]:
        if self.tls_port is None:
            return []
        self.certs = make_certificates(self.dir)
        return [
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
            f"ssl_options.cacertfile = {self.certs.ca}",
            f"ssl_options.certfile = {self.certs.server_cert}",
            f"ssl_options.keyfile = {self.certs.server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
        ]

    def command(self) -> list[str]:
        return [SERVER]

    def env(self) -> dict[str, str]:
        base = self.dir
        return {
            **os.environ,
            "HOME": str(base / "home"),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Do not read /etc/rabbitmq/rabbitmq-env.conf: it could point the node at system paths.
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),  # .conf is appended
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            # The epmd started below serves this node; the VM must not spawn a daemonized one.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
        }

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node (Erlang distribution, no management plugin); its stdout."""
        done = subprocess.run(
            [CTL, "-n", self.node, *args],
            env=self.env(),
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def list(self, what: str, *columns: str) -> list[dict[str, Any]]:
        """`rabbitmqctl list_<what> <columns>` as dicts, e.g. list("queues", "name", "arguments")."""
        rows: list[dict[str, Any]] = json.loads(self.ctl(f"list_{what}", *columns, "--formatter", "json"))
        return rows

    def ready(self) -> bool:
        """An AMQP login as guest to vhost / succeeds: the listener is up and the node has booted."""
        return port_open(self.port) and amqp_login(self.port) and (self.tls_port is None or self.tls_answers())

    def tls_answers(self) -> bool:
        """A TLS handshake with the node's TLS listener completes. An open port is not enough: a node that cannot
        bind its TLS port logs "eaddrinuse" and boots on without it, and the port is someone else's."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # whether the certificate is valid is the tests' business, not readiness
        context.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        assert self.tls_port is not None
        try:
            with (
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=PROBE_TIMEOUT) as raw,
                context.wrap_socket(raw),
            ):
                return True
        except OSError:  # ssl.SSLError too
            return False

    def start(self) -> None:
        self.start_epmd()
        super().start()

    def start_epmd(self) -> None:
        if self.epmd is not None and self.epmd.poll() is None:
            return
        self.epmd = subprocess.Popen(
            [self.epmd_bin, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on port {self.epmd_port}; see {self.dir}/server.log")
            time.sleep(0.02)

    def cleanup(self) -> None:
        # The data is throwaway: SIGKILL is as good as a graceful stop and takes no time.
        self.kill()
        if self.epmd is not None and self.epmd.poll() is None:
            os.killpg(self.epmd.pid, signal.SIGKILL)
            self.epmd.wait(timeout=10)
        self.epmd = None
        super().cleanup()


class RabbitClusterNode(RabbitServer):
    """One node of a `RabbitCluster`: its own node name, ports and data, the cluster's epmd and Erlang cookie."""

    def __init__(self, index: int, tag: str, epmd_port: int, cookie: str) -> None:
        super().__init__()
        self.index = index
        self.node = f"syncar-{tag}-{index}@localhost"
        self.epmd_port = epmd_port  # one epmd for the cluster: each node finds the others' distribution ports there
        cookie_file = self.dir / "home" / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)  # Erlang refuses a cookie others can read

    @property
    def address(self) -> str:
        """What a daemon names as its node (`status` frames, `syncar_broker_node_info`)."""
        return f"127.0.0.1:{self.port}"


class RabbitCluster:
    """Three rabbitmq-server nodes clustered on loopback, started once a session (tests marked `cluster`).

    The nodes boot together (standalone, in parallel: a boot takes seconds), then nodes 2 and 3 join node 1 with
    `rabbitmqctl stop_app`, `join_cluster`, `start_app`, one after the other: joined at once, one of them failed to
    start its Mnesia now and then (`{badmatch, {error, {normal, {mnesia_app, start, ...}}}}`, a CI run whose 10
    cluster tests all errored). A node killed by a test comes back with its data and rejoins by itself (`whole()`)."""

    def __init__(self, size: int = 3) -> None:
        tag = uuid.uuid4().hex[:8]
        epmd_port = free_port()
        cookie = uuid.uuid4().hex.upper()
        self.nodes = [RabbitClusterNode(i + 1, tag, epmd_port, cookie) for i in range(size)]
        self.start_seconds = 0.0

    @property
    def uri(self) -> str:
        return "amqp://guest:guest@" + ",".join(node.address for node in self.nodes) + "/"

    def node_at(self, address: str) -> RabbitClusterNode:
        """The node a daemon names in `syncar_broker_node_info` or a `status` frame (`127.0.0.1:port`)."""
        return next(node for node in self.nodes if node.address == address)

    def start(self) -> None:
        began = time.monotonic()
        first, *others = self.nodes
        first.start_epmd()  # the cluster's epmd, stopped with node 1
        self.whole()
        for node in others:
            self._join(node, first)
        self.start_seconds = time.monotonic() - began

    @staticmethod
    def _join(node: RabbitClusterNode, first: RabbitClusterNode) -> None:
        node.ctl("stop_app")
        node.ctl("join_cluster", first.node)
        node.ctl("start_app")
        node.wait_ready()

    def whole(self) -> None:
        """Start every node not running (all at first, those a test killed later), together; returns once each
        takes AMQP logins."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.launch()
        for node in self.nodes:
            node.wait_ready()

    def running(self) -> list[str]:
        """The names of the nodes the cluster says are running, asked of node 1."""
        status = json.loads(self.nodes[0].ctl("cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def cleanup(self) -> None:
        for node in self.nodes[1:]:
            node.cleanup()
        self.nodes[0].cleanup()  # last: it owns the epmd


def amqp_login(port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Log in over AMQP 0-9-1 as guest, open vhost /, close; True if every step worked."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            reader = _FrameReader(conn)
            conn.sendall(pamqp.frame.marshal(pamqp.header.ProtocolHeader(), 0))
            if not isinstance(reader.next(), pamqp.commands.Connection.Start):
                return False
            conn.sendall(pamqp.frame.marshal(pamqp.commands.Connection.StartOk(response="\0guest\0guest"), 0))
            tune = reader.next()
            if not isinstance(tune, pamqp.commands.Connection.Tune):
                return False
            conn.sendall(pamqp.frame.marshal(pamqp.commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), 0))
            conn.sendall(pamqp.frame.marshal(pamqp.commands.Connection.Open("/"), 0))
            if not isinstance(reader.next(), pamqp.commands.Connection.OpenOk):
                return False
            conn.sendall(pamqp.frame.marshal(pamqp.commands.Connection.Close(200, "probe", 0, 0), 0))
            return isinstance(reader.next(), pamqp.commands.Connection.CloseOk)
    except (OSError, pamqp.exceptions.PAMQPException):
        return False


class _FrameReader:
    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""

    def next(self) -> object:
        for _ in range(1000):
            try:
                used, _channel, frame = pamqp.frame.unmarshal(self._buffer)
            except pamqp.exceptions.UnmarshalingException:
                chunk = self._conn.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed by the broker") from None
                self._buffer += chunk
                continue
            self._buffer = self._buffer[used:]
            return frame
        raise ConnectionResetError("no complete frame")
