"""andon's tables: Pixie's columns in Pixie's order, then andon's enrichment columns.

Column names and types follow Pixie's Stirling table definitions
(``src/stirling/source_connectors/*/*_table.h``; see ``shared/reference/pixie_tables.md``),
so a PxL script written for Pixie finds the columns it expects. Debug-only columns
(``px_info_``) are left out.

Types are Pixie's names; on disk (Parquet) and in DuckDB they are:

    TIME64NS  BIGINT   nanoseconds since the Unix epoch
    INT64     BIGINT
    FLOAT64   DOUBLE
    STRING    VARCHAR
    BOOLEAN   BOOLEAN
    UINT128   VARCHAR  ``upid`` only: "asid:pid:start_ts" (asid 0 on one host, start_ts
                       the process start time in clock ticks since boot, as /proc/PID/stat
                       field 22), so the same pid reused later is a different upid

After Pixie's columns every table that describes a process gets andon's enrichment
(``ENRICHMENT``): ``pid``, ``comm`` (the process name, as Falco's ``proc.name``),
``container_id`` and ``container_name`` (empty on the host). PxL's ``df.ctx[...]`` maps
onto these (see :mod:`andon.query.pxl`). The request-response tables then have ``PEER``:
``remote_pid`` and ``remote_comm``, the process at the other end of the connection when
that end is on this host and traced too (0 and '' otherwise).

Missing values are filled with the type's zero ('' / 0 / false) when a record is stored,
as Pixie does: no NULLs reach a query, so ``df.x != ''`` means what it says.
"""

from __future__ import annotations

from dataclasses import dataclass

TIME64NS, INT64, FLOAT64, STRING, BOOLEAN, UINT128 = "TIME64NS", "INT64", "FLOAT64", "STRING", "BOOLEAN", "UINT128"

SQL_TYPE = {TIME64NS: "BIGINT", INT64: "BIGINT", FLOAT64: "DOUBLE", STRING: "VARCHAR", BOOLEAN: "BOOLEAN",
            UINT128: "VARCHAR"}
ZERO = {TIME64NS: 0, INT64: 0, FLOAT64: 0.0, STRING: "", BOOLEAN: False, UINT128: ""}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    desc: str = ""
    semantic: str = ""  # Pixie's semantic type (ST_DURATION_NS, ST_BYTES, ...), '' for none

    @property
    def sql_type(self) -> str:
        return SQL_TYPE[self.type]


@dataclass(frozen=True, slots=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    desc: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _cols(*spec: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(n, t) for n, t in spec)


# The leading columns every socket-tracer table shares, in Pixie's order.
_CONN = (("time_", TIME64NS), ("upid", UINT128), ("remote_addr", STRING), ("remote_port", INT64),
         ("local_addr", STRING), ("local_port", INT64), ("trace_role", INT64), ("encrypted", BOOLEAN))

ENRICHMENT = _cols(("pid", INT64), ("comm", STRING), ("container_id", STRING), ("container_name", STRING))

# After the enrichment of a request-response table: the process at the connection's other end,
# when that end is on this host and traced too (loopback, a unix socket, a container's veth
# without NAT); 0 and '' when it is elsewhere.
PEER = _cols(("remote_pid", INT64), ("remote_comm", STRING))

# Keys a producer may use for an enrichment column (protocols/base.py says ``container``).
ALIASES = {"container": "container_name", "command": "comm"}


# Pixie's semantic types of the columns that have one (shared/reference/pixie_tables.md):
# what ``andon query`` shows as ``5.07 ms`` or ``1.2 KiB``. mysql_events' resp_status is a
# MySQL status, not an HTTP one, and has none, as in Pixie.
_SEMANTIC = {"latency": "ST_DURATION_NS", "cpu_utime_ns": "ST_DURATION_NS", "cpu_ktime_ns": "ST_DURATION_NS",
             **{c: "ST_BYTES" for c in ("req_body_size", "resp_body_size", "bytes_sent", "bytes_recv", "vsize_bytes",
                                        "rss_bytes", "rchar_bytes", "wchar_bytes", "read_bytes", "write_bytes")}}


def _table(name: str, desc: str, *spec: tuple[str, str], peer: bool = False) -> TableSchema:
    sem = dict(_SEMANTIC)
    if name == "http_events":
        sem["resp_status"] = "ST_HTTP_RESP_STATUS"
    cols = tuple(Column(n, t, semantic=sem.get(n, "")) for n, t in spec) + ENRICHMENT + (PEER if peer else ())
    return TableSchema(name, cols, desc)


def _events(name: str, desc: str, *spec: tuple[str, str]) -> TableSchema:
    """A request-response table: the connection's columns, its own, the enrichment, the peer."""
    return _table(name, desc, *_CONN, *spec, peer=True)


TABLES: dict[str, TableSchema] = {t.name: t for t in (
    _events("http_events", "HTTP request-response pairs",
           ("major_version", INT64), ("minor_version", INT64), ("content_type", INT64),
           ("req_headers", STRING), ("req_method", STRING), ("req_path", STRING), ("req_body", STRING),
           ("req_body_size", INT64), ("resp_headers", STRING), ("resp_status", INT64),
           ("resp_message", STRING), ("resp_body", STRING), ("resp_body_size", INT64), ("latency", INT64)),
    _events("pgsql_events", "PostgreSQL request-response pairs",
           ("req_cmd", STRING), ("req", STRING), ("resp", STRING), ("latency", INT64)),
    _events("mysql_events", "MySQL request-response pairs",
           ("req_cmd", INT64), ("req_body", STRING), ("resp_status", INT64), ("resp_body", STRING),
           ("latency", INT64)),
    _events("redis_events", "Redis request-response pairs",
           ("req_cmd", STRING), ("req_args", STRING), ("resp", STRING), ("latency", INT64)),
    _events("dns_events", "DNS request-response pairs",
           ("req_header", STRING), ("req_body", STRING), ("resp_header", STRING), ("resp_body", STRING),
           ("latency", INT64)),
    _table("conn_stats", "connection-level byte and connection counters", ("time_", TIME64NS),
           ("upid", UINT128), ("remote_addr", STRING), ("remote_port", INT64), ("trace_role", INT64),
           ("addr_family", INT64), ("protocol", INT64), ("ssl", BOOLEAN), ("conn_open", INT64),
           ("conn_close", INT64), ("conn_active", INT64), ("bytes_sent", INT64), ("bytes_recv", INT64)),
    _table("process_stats", "CPU, memory and IO per process", ("time_", TIME64NS), ("upid", UINT128),
           ("major_faults", INT64), ("minor_faults", INT64), ("cpu_utime_ns", INT64), ("cpu_ktime_ns", INT64),
           ("num_threads", INT64), ("vsize_bytes", INT64), ("rss_bytes", INT64), ("rchar_bytes", INT64),
           ("wchar_bytes", INT64), ("read_bytes", INT64), ("write_bytes", INT64)),
)}


# andon's own table (not Pixie's): one row per verdict of the network policy datapath, in
# Hubble's words (flow.proto: ``verdict``, ``drop_reason_desc``, ``traffic_direction``, ``is_reply``,
# ``policy_match_type``...). Written by the agent's flow service (andon.netpolicy.flows), read by
# ``andon observe``; labels are JSON lists of ``source:key=value`` strings; ``decided_by`` says which
# policy and rule decided ("allowed by P rule 0 (ingress item 0)", "default deny by P", ...).
FLOWS = TableSchema("flows", _cols(
    ("time_", TIME64NS), ("node_name", STRING), ("verdict", STRING), ("drop_reason", INT64),
    ("drop_reason_desc", STRING), ("event_type", STRING), ("traffic_direction", STRING), ("is_reply", BOOLEAN),
    ("policy_match_type", STRING), ("ip_version", INT64), ("source_ip", STRING), ("destination_ip", STRING),
    ("l4_protocol", STRING), ("source_port", INT64), ("destination_port", INT64), ("tcp_flags", STRING),
    ("icmp_type", INT64), ("icmp_code", INT64),
    ("source_identity", INT64), ("source_id", INT64), ("source_name", STRING), ("source_namespace", STRING),
    ("source_labels", STRING),
    ("destination_identity", INT64), ("destination_id", INT64), ("destination_name", STRING),
    ("destination_namespace", STRING), ("destination_labels", STRING),
    ("endpoint", STRING), ("ifindex", INT64), ("policy_id", INT64), ("policy_name", STRING), ("policy_kind", STRING),
    ("rule_index", INT64), ("policy_rule", STRING), ("policy_direction", STRING), ("decided_by", STRING),
    ("ct_new", BOOLEAN), ("bytes", INT64), ("summary", STRING)),
    "network policy verdicts as Hubble flows (andon observe)")
TABLES[FLOWS.name] = FLOWS


def upid(pid: int, start_ts: int, asid: int = 0) -> str:
    """The ``upid`` string for a process: ``"asid:pid:start_ts"``."""
    return f"{asid}:{pid}:{start_ts}"
