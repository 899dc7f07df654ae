"""DNS over UDP (one message per chunk) and TCP (2-byte length prefix): queries paired with
answers by transaction id into ``dns_events`` records.

Which transport a connection uses is given (``DNSParser(role, tcp=True)``) or found from its
first chunk: a chunk shorter than a DNS header, or whose first two bytes are the length of
the rest, is TCP. Whether a message is a query or a response is its QR bit, so the role is
not needed (Role.UNKNOWN works the same). Names follow compression pointers with loop
protection (at most ``MAX_JUMPS`` jumps, always backwards, 255 characters).

Columns follow Pixie's ``dns/stitcher.cc``: ``req_header`` and ``resp_header`` are compact
JSON objects of the header fields (``txid``, ``qr``, ``opcode``, ``aa``, ``tc``, ``rd``,
``ra``, ``ad``, ``cd``, ``rcode``, ``num_queries``, ``num_answers``, ``num_auth``,
``num_addl``); ``req_body`` is ``{"queries":[{"name":...,"type":...}]}``; ``resp_body`` is
``{"answers":[...]}`` with the answer section's A and AAAA records as
``{"name","type","addr"}`` and CNAME records as ``{"name","type","cname"}`` (other record
types are left out, as in Pixie). Query types other than A and AAAA carry their mnemonic
(``MX``, ``TXT``...) where Pixie leaves the type empty.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import dataclass

from andon.protocols.base import DataChunk, Protocol, Role
from andon.protocols.stream import Side, StreamParser, latency

MAX_JUMPS = 32
MAX_NAME = 255
MAX_RECORDS = 256  # records decoded per section (the count field may say 65535)
_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          35: "NAPTR", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


class DNSFormatError(ValueError):
    """The bytes are not a DNS message (internal: the parser counts it, never raises it)."""


def _js(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """The domain name at ``pos``; returns it and the position after it (after the first
    pointer, if the name is compressed)."""
    labels: list[str] = []
    length = 0
    jumps = 0
    end = -1
    while True:
        if pos >= len(msg):
            raise DNSFormatError("name runs past the message")
        n = msg[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DNSFormatError("pointer runs past the message")
            target = ((n & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > MAX_JUMPS or target >= pos:
                raise DNSFormatError("compression loop")
            pos = target
            continue
        if n & 0xC0:
            raise DNSFormatError("reserved label type")
        label = msg[pos + 1 : pos + 1 + n]
        if len(label) != n:
            raise DNSFormatError("label runs past the message")
        length += n + 1
        if length > MAX_NAME:
            raise DNSFormatError("name longer than 255")
        labels.append(label.decode("ascii", errors="backslashreplace"))
        pos += 1 + n
    return ".".join(labels), (end if end >= 0 else pos)


@dataclass(slots=True)
class Message:
    txid: int
    flags: int
    counts: tuple[int, int, int, int]
    queries: list[dict]
    answers: list[dict]
    ts: int = 0

    @property
    def qr(self) -> int:
        return self.flags >> 15

    def header_json(self) -> str:
        f = self.flags
        return _js({
            "txid": self.txid, "qr": f >> 15 & 1, "opcode": f >> 11 & 0xF, "aa": f >> 10 & 1,
            "tc": f >> 9 & 1, "rd": f >> 8 & 1, "ra": f >> 7 & 1, "ad": f >> 5 & 1, "cd": f >> 4 & 1,
            "rcode": f & 0xF, "num_queries": self.counts[0], "num_answers": self.counts[1],
            "num_auth": self.counts[2], "num_addl": self.counts[3],
        })


def parse_message(msg: bytes) -> Message:
    """Decode one DNS message (header, question and answer sections)."""
    if len(msg) < 12:
        raise DNSFormatError("shorter than a DNS header")
    txid, flags, qd, an, ns, ar = struct.unpack_from("!6H", msg)
    if flags >> 11 & 0xF > 6:
        raise DNSFormatError("unassigned opcode")
    pos = 12
    queries: list[dict] = []
    for _ in range(min(qd, MAX_RECORDS)):
        name, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise DNSFormatError("question runs past the message")
        qtype, _qclass = struct.unpack_from("!HH", msg, pos)
        pos += 4
        queries.append({"name": name, "type": _TYPES.get(qtype, "")})
    if qd > MAX_RECORDS:
        raise DNSFormatError("too many questions")
    answers: list[dict] = []
    for _ in range(min(an, MAX_RECORDS)):
        name, pos = read_name(msg, pos)
        if pos + 10 > len(msg):
            raise DNSFormatError("record runs past the message")
        rtype, _rclass, _ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
        pos += 10
        rdata = msg[pos : pos + rdlen]
        if len(rdata) != rdlen:
            raise DNSFormatError("rdata runs past the message")
        if rtype == 1 and rdlen == 4:
            answers.append({"name": name, "type": "A", "addr": str(ipaddress.IPv4Address(rdata))})
        elif rtype == 28 and rdlen == 16:
            answers.append({"name": name, "type": "AAAA", "addr": str(ipaddress.IPv6Address(rdata))})
        elif rtype == 5:
            cname, _ = read_name(msg, pos)
            answers.append({"name": name, "type": "CNAME", "cname": cname})
        pos += rdlen
    return Message(txid, flags, (qd, an, ns, ar), queries, answers)


def _looks_tcp(chunk: DataChunk) -> bool:
    """A first chunk shorter than a DNS header, made of whole length-prefixed messages, or
    whose question count sits two bytes late (one question is the usual query)."""
    if chunk.size < 12:
        return True
    data, pos = chunk.data, 0
    if data[6:8] == b"\x00\x01" and data[4:6] != b"\x00\x01":
        return True
    while pos + 2 <= len(data):
        pos += 2 + struct.unpack_from("!H", data, pos)[0]
        if pos == chunk.size:
            return True
    return False


class DNSParser(StreamParser):
    protocol = Protocol.DNS
    table = "dns_events"

    def __init__(self, role: Role = Role.UNKNOWN, stats=None, tcp: bool | None = None) -> None:
        super().__init__(role, stats)
        self.tcp = tcp

    def _guess(self, chunk: DataChunk) -> bool | None:
        return True  # queries and responses are told apart by their QR bit

    def feed(self, chunk: DataChunk) -> list[dict]:
        if self.closed:
            return []
        if self.tcp is None:
            self.tcp = _looks_tcp(chunk)
        if self.tcp:
            return super().feed(chunk)
        # UDP: the chunk is one whole datagram (or its copied prefix)
        if chunk.truncated:
            self.stats.truncated += 1
        try:
            msg = parse_message(bytes(chunk.data))
        except (DNSFormatError, struct.error, ValueError):
            self.stats.invalid += 1
            self.stats.bytes_skipped += len(chunk.data)
            return []
        msg.ts = chunk.ts_ns
        return self._message(msg)

    def _find_boundary(self, side: Side) -> int:
        return -1  # a TCP stream that lost bytes cannot find its length prefixes again

    def _parse(self, side: Side) -> list[dict]:
        out: list[dict] = []
        buf = side.buf
        while len(buf) >= 2:
            n = struct.unpack_from("!H", buf)[0]
            if len(buf) < 2 + n:
                break
            ts = side.ts_at(2 + n)
            raw = bytes(buf[2 : 2 + n])
            side.consume(2 + n)
            try:
                msg = parse_message(raw)
            except (DNSFormatError, struct.error, ValueError):
                self.stats.invalid += 1
                self.stats.bytes_skipped += 2 + n
                continue
            msg.ts = ts
            out += self._message(msg)
        return out

    def _message(self, msg: Message) -> list[dict]:
        if msg.qr == 0:
            self._push_request(msg)
            return []
        self.stats.frames += 1
        for i, req in enumerate(self.reqs):
            if req.txid == msg.txid and req.ts <= msg.ts:
                del self.reqs[i]
                return [self._emit({
                    "time_": msg.ts,
                    "req_header": req.header_json(),
                    "req_body": _js({"queries": req.queries}),
                    "resp_header": msg.header_json(),
                    "resp_body": _js({"answers": msg.answers}),
                    "latency": latency(req.ts, msg.ts),
                })]
        self.stats.unmatched_responses += 1
        return []
