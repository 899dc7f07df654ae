"""The busiest endpoints of the last window: what ``andon top`` shows, as one SQL query.

An endpoint is a service (the container's name, else the process name, and the port it
serves on) and what was asked of it:

    http_events    method and path, without the query string; a gRPC call (``content_type``
                   2) is protocol ``grpc`` and its path (/package.Service/Method); a path
                   the agent never saw (an HTTP/2 field naming an HPACK entry lost) is
                   "(path not seen)"
    pgsql_events   the statement's first word (SELECT, INSERT, ...), for simple queries and
                   Executes only (Parse, Bind and Describe are rows of their own, as in Pixie)
    mysql_events   the statement's first word
    redis_events   the command (GET, SET, ...)
    dns_events     the queried name

An error is what each protocol calls one: HTTP status >= 400 (as Pixie's service_stats), or
a gRPC call (``content_type`` 2) whose ``grpc-status`` is not 0, OK (gRPC fails calls with
HTTP status 200 and the status in its trailers, which Pixie's status test misses), a
PostgreSQL ErrorResponse, a MySQL ERR packet (Pixie's resp_status 3), a Redis error
reply, a DNS rcode other than 0. Latency quantiles are DuckDB's exact ``quantile_cont``.

Rows are the server side's (``trace_role = 2``) unless ``client=True``: with both ends
traced on one host, counting both would count every request twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store.catalog import Catalog

_SERVICE = "CASE WHEN container_name <> '' THEN container_name ELSE comm END"
_WORD = "upper(split_part(trim({col}), ' ', 1))"
# resp_headers is a JSON object (cut at its column's bound, so not always valid JSON): the
# member as written, "grpc-status":"N"; a value's own quotes are escaped, never match
_GRPC_FAILED = "(content_type = 2 AND regexp_extract(resp_headers, '\"grpc-status\":\"([0-9]+)\"', 1) NOT IN ('', '0'))"

_HTTP_ENDPOINT = ("CASE WHEN req_path = '' THEN req_method || ' (path not seen)' WHEN content_type = 2 THEN req_path "
                  "ELSE req_method || ' ' || split_part(req_path, '?', 1) END")

# table -> (protocol label, endpoint expression, error predicate, which rows); the label is
# SQL too
ENDPOINTS: dict[str, tuple[str, str, str, str]] = {
    "http_events": ("CASE WHEN content_type = 2 THEN 'grpc' ELSE 'http' END", _HTTP_ENDPOINT,
                    "resp_status >= 400 OR " + _GRPC_FAILED, "true"),
    "pgsql_events": ("'pgsql'",
                     _WORD.format(col="CASE WHEN starts_with(req, 'query=[') THEN substr(req, 8) ELSE req END"),
                     "starts_with(resp, 'ERROR RESPONSE')", "req_cmd IN ('Query', 'Execute')"),
    "mysql_events": ("'mysql'", _WORD.format(col="req_body"), "resp_status = 3", "true"),
    "redis_events": ("'redis'", "upper(req_cmd)", "(starts_with(resp, '-') OR starts_with(resp, '!'))", "true"),
    "dns_events": ("'dns'", "coalesce(json_extract_string(req_body, '$.queries[0].name'), '')",
                   "coalesce(TRY_CAST(json_extract(resp_header, '$.rcode') AS BIGINT), 0) <> 0", "true"),
}


@dataclass(frozen=True)
class Endpoint:
    protocol: str
    service: str
    port: int
    endpoint: str
    requests: int
    errors: int
    rate: float  # requests per second over the window
    error_rate: float  # errors / requests
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def top_sql(catalog: Catalog, since_ns: int, until_ns: int, *, client: bool = False) -> str:
    role = "trace_role = 1" if client else "trace_role = 2"
    port = "remote_port" if client else "local_port"
    parts = []
    for table, (proto, endpoint, error, which) in ENDPOINTS.items():
        if table not in catalog.tables:
            continue
        src = catalog.rows_sql(table, since_ns, until_ns)
        parts.append(
            f"SELECT {proto} AS protocol, {_SERVICE} AS service, {port} AS port, {endpoint} AS endpoint, "
            f"({error}) AS is_error, latency FROM ({src}) AS rows WHERE {role} AND {which}"
        )
    union = " UNION ALL ".join(parts)
    return (
        f"SELECT protocol, service, port, endpoint, count(*) AS requests, "
        f"count(*) FILTER (WHERE is_error) AS errors, "
        f"quantile_cont(latency, 0.5) / 1e6 AS p50_ms, quantile_cont(latency, 0.99) / 1e6 AS p99_ms "
        f"FROM ({union}) GROUP BY ALL ORDER BY requests DESC, protocol, service, endpoint"
    )


def top(catalog: Catalog, since_ns: int, until_ns: int, *, limit: int = 20, client: bool = False) -> list[Endpoint]:
    """The ``limit`` busiest endpoints with rows in [since_ns, until_ns)."""
    seconds = max((until_ns - since_ns) / 1e9, 1e-9)
    rows = catalog.con.execute(top_sql(catalog, since_ns, until_ns, client=client) + f" LIMIT {int(limit)}").fetchall()
    return [
        Endpoint(proto, service or "", int(port or 0), endpoint or "", int(n), int(err), n / seconds,
                 err / n if n else 0.0, float(p50 or 0.0), float(p99 or 0.0))
        for proto, service, port, endpoint, n, err, p50, p99 in rows
    ]
