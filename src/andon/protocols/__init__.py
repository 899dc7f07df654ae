"""Protocol parsers: pure bytes in, Pixie-shaped records out (see ``base.py`` for the interface).

``PARSERS`` maps each supported :class:`~andon.protocols.base.Protocol` to its per-connection
parser class: ``PARSERS[Protocol.HTTP](Role.CLIENT)``.
"""

from __future__ import annotations

from andon.protocols.base import ConnParser, DataChunk, Direction, ParseStats, Protocol, Role
from andon.protocols.dns import DNSParser
from andon.protocols.http import HTTPParser
from andon.protocols.http2 import HTTP2Parser
from andon.protocols.mysql import MySQLParser
from andon.protocols.pgsql import PgSQLParser
from andon.protocols.redis import RedisParser

PARSERS: dict[Protocol, type[ConnParser]] = {
    Protocol.HTTP: HTTPParser,
    Protocol.HTTP2: HTTP2Parser,
    Protocol.PGSQL: PgSQLParser,
    Protocol.MYSQL: MySQLParser,
    Protocol.REDIS: RedisParser,
    Protocol.DNS: DNSParser,
}

__all__ = [
    "PARSERS", "ConnParser", "DataChunk", "Direction", "ParseStats", "Protocol", "Role",
    "DNSParser", "HTTPParser", "HTTP2Parser", "MySQLParser", "PgSQLParser", "RedisParser",
]
