"""What the protocol parsers take in and give out; shared by the socket sensor and the tables.

The socket sensor (``bpf/net/``, ``andon.events`` sources) delivers, per connection, the
bytes the traced process sent and received, in order, each chunk stamped with the time
its syscall returned. A parser is one object per connection and protocol::

    parser = PARSERS[Protocol.HTTP](Role.CLIENT)
    for chunk in chunks_of_this_connection:
        for record in parser.feed(chunk):
            table.append(record)           # http_events columns, minus the connection's
    parser.close(now_ns)                    # counts what was left unmatched

Records are plain dicts keyed by Pixie's column names for the protocol's table
(``req_method``, ``resp_status``, ``latency``, ``time_``...). The columns that describe
the connection (``upid``, ``remote_addr``, ``remote_port``, ``local_addr``,
``local_port``, ``trace_role``, ``encrypted``) and andon's own (``pid``, ``comm``,
``container``) are added by the caller, which knows the connection.

Parsers are pure (no kernel, no clock, no I/O) and never raise on hostile bytes: what
they cannot use is skipped and counted in :class:`ParseStats`.

Values follow Pixie's ``src/stirling/source_connectors/socket_tracer/bcc_bpf_intf/common.h``:
``endpoint_role_t`` (client 1, server 2) and ``traffic_protocol_t``.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field


class Role(enum.IntEnum):
    """Who the traced process is on this connection (Pixie's ``trace_role``)."""

    UNKNOWN = 0
    CLIENT = 1
    SERVER = 2


class Direction(enum.IntEnum):
    """Which way a chunk went, seen from the traced process."""

    EGRESS = 0  # written/sent by the traced process
    INGRESS = 1  # read/received by the traced process


class Protocol(enum.IntEnum):
    """Pixie's ``traffic_protocol_t`` values, so ``conn_stats.protocol`` means the same."""

    UNKNOWN = 0
    HTTP = 1
    HTTP2 = 2
    MYSQL = 3
    CQL = 4
    PGSQL = 5
    DNS = 6
    REDIS = 7
    NATS = 8
    MONGO = 9
    KAFKA = 10
    MUX = 11
    AMQP = 12


@dataclass(slots=True)
class DataChunk:
    """One read or write on a connection, as the sensor saw it.

    ``size`` is what the syscall moved; ``data`` is the copied prefix of it (the sensor
    copies a bounded amount), so ``len(data) < size`` means the rest is missing and the
    parser must resynchronise after it. ``gap`` > 0 says that many bytes of this
    direction were lost before this chunk (ring full, or a chunk never copied).
    """

    ts_ns: int
    direction: Direction
    data: bytes
    size: int = -1
    gap: int = 0

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)

    @property
    def truncated(self) -> int:
        """Bytes of this chunk that were not copied."""
        return max(0, self.size - len(self.data))


@dataclass(slots=True)
class ParseStats:
    """What a parser did with its bytes; every skipped byte and unmatched message counted."""

    frames: int = 0  # whole protocol messages parsed
    records: int = 0  # request/response pairs emitted
    invalid: int = 0  # places where the bytes were not the protocol (then resynchronised)
    bytes_skipped: int = 0  # bytes thrown away while resynchronising or after a gap
    unmatched_requests: int = 0  # requests that never got a response (at close/timeout)
    unmatched_responses: int = 0  # responses with no request before them
    truncated: int = 0  # messages whose body was cut short by the copy bound
    unknown_headers: int = 0  # HTTP/2 header fields naming a table entry added while bytes were lost

    def add(self, other: ParseStats) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ConnParser(abc.ABC):
    """Base of the per-connection parsers. Subclasses implement ``feed`` and ``close``."""

    role: Role = Role.UNKNOWN
    stats: ParseStats = field(default_factory=ParseStats)

    protocol = Protocol.UNKNOWN
    table = ""

    @abc.abstractmethod
    def feed(self, chunk: DataChunk) -> list[dict]:
        """Take the next chunk of this connection; return the records it completed."""

    @abc.abstractmethod
    def close(self, now_ns: int) -> list[dict]:
        """The connection ended (or timed out): count what is left unmatched, return any last records."""
