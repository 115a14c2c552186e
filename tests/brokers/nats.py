"""A real nats-server for the tests, with JetStream on (the durable mode needs it)."""

from __future__ import annotations

from tests.brokers import BrokerServer, require_binary


class NatsServer(BrokerServer):
    name = "nats"

    def __init__(self) -> None:
        self.binary = require_binary("nats-server")
        super().__init__()

    @property
    def uri(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # JetStream's store lives in this server's temp dir, so a restart keeps streams as a real crash would.
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "js")]
