"""The socket data sensor with the calls and habits of real clients: sendmmsg/recvmmsg
(dig's libuv), DNS over TCP (dig +tcp against dnsmasq), the process name of a
multi-threaded client. As in test_sockdata.py, every traced process is a CHILD whose pid
is added to the sensor's filter before it does its work, and the assertions look at the
records of those pids only (the machine is shared).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from andon.events.sockdata import F_ADDR, ConnClose, ConnOpen, Data, SockSource
from andon.protocols.base import Direction, Protocol, Role

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import servers as S  # noqa: E402  (tests/servers.py: real servers and clients)
from test_sockdata import GATE, closes, collect, run_child, sd, shared  # noqa: E402,F401

NR_SENDMMSG, NR_RECVMMSG = 307, 299


def dns_query(qid: int, name: bytes) -> bytes:
    labels = b"".join(bytes([len(p)]) + p for p in name.split(b"."))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", 1, 1)


# -- sendmmsg / recvmmsg ---------------------------------------------------------------------------

# Python has no sendmmsg: ctypes. The client sends QUERIES in one sendmmsg, each message in
# two iovecs with the server's address; the server takes them in one recvmmsg into
# buffers of 512 bytes, with room for each sender's address. Prints the ports and counts.
MMSG_CHILD = r"""
import ctypes, json, socket
QUERIES = {queries!r}
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(("127.0.0.1", 0))
sport = s.getsockname()[1]
sa = ctypes.create_string_buffer(socket.AF_INET.to_bytes(2, "little") + sport.to_bytes(2, "big") + bytes([127, 0, 0, 1]) + bytes(8))
n = len(QUERIES)
keep = []
out = (mmsghdr * n)()
for i, q in enumerate(QUERIES):
    a, b = ctypes.create_string_buffer(q[:5], 5), ctypes.create_string_buffer(q[5:], len(q) - 5)
    iov = (iovec * 2)(iovec(ctypes.addressof(a), 5), iovec(ctypes.addressof(b), len(q) - 5))
    keep += [a, b, iov]
    out[i].hdr = msghdr(ctypes.addressof(sa), 16, ctypes.addressof(iov), 2, None, 0, 0)
sent = libc.sendmmsg(c.fileno(), out, n, 0)
inn = (mmsghdr * n)()
for i in range(n):
    buf = ctypes.create_string_buffer(512); name = ctypes.create_string_buffer(16)
    iov = (iovec * 1)(iovec(ctypes.addressof(buf), 512))
    keep += [buf, name, iov]
    inn[i].hdr = msghdr(ctypes.addressof(name), 16, ctypes.addressof(iov), 1, None, 0, 0)
got = libc.recvmmsg(s.fileno(), inn, n, 0x40, None)  # MSG_WAITFORONE is 0x10000; 0x40: MSG_DONTWAIT
lens = [inn[i].len for i in range(max(got, 0))]
print(json.dumps({{"sent": sent, "got": got, "lens": lens, "server": sport, "client": c.getsockname()[1]}}))
s.close(); c.close()
"""


def test_sendmmsg_and_recvmmsg_give_one_record_per_message(sd: SockSource):
    queries = [dns_query(0x100 + i, b"m%d.example.com" % i) for i in range(3)]
    # TRIGGER
    pid, info = run_child(sd, MMSG_CHILD.format(queries=queries))
    assert info["sent"] == 3 and info["got"] == 3, info
    recs = collect(sd, {pid}, closes(2))
    # ASSERT: three records each way, in order, with their own bytes, positions and peers
    data = [r for r in recs if isinstance(r, Data)]
    out = [r for r in data if r.nr == NR_SENDMMSG]
    inn = [r for r in data if r.nr == NR_RECVMMSG]
    assert [r.data for r in out] == queries
    assert [r.data for r in inn] == queries
    assert [r.pos for r in out] == [0, len(queries[0]), len(queries[0]) + len(queries[1])]
    assert [r.size for r in inn] == [len(q) for q in queries] == info["lens"]
    assert all(r.direction == Direction.EGRESS and r.role == Role.CLIENT for r in out)
    assert all(r.direction == Direction.INGRESS and r.role == Role.SERVER for r in inn)
    assert all(r.protocol == Protocol.DNS and r.flags & F_ADDR for r in out + inn)
    assert {r.peer for r in out} == {("127.0.0.1", info["server"])}
    assert {r.peer for r in inn} == {("127.0.0.1", info["client"])}


# -- dig against dnsmasq ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_server():
    if shutil.which("dnsmasq") is None or shutil.which("dig") is None:
        pytest.skip("needs dnsmasq and dig")
    with S.dnsmasq() as srv:
        yield srv


def run_dig(src: SockSource, srv, *args: str) -> tuple[int, str]:
    """dig @srv svc.andon.test A, traced from its first instruction (a shell waits for a
    line, then execs dig under the same pid). Returns its pid and output."""
    argv = ["dig", f"@{srv.host}", "-p", str(srv.port), "svc.andon.test", "A", "+tries=1", "+time=2", *args]
    p = subprocess.Popen(["sh", "-c", 'read x; exec "$@"', "sh", *argv], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        src.add_pid(p.pid)
        out, err = p.communicate("go\n", timeout=15)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "10.1.2.3" in out, out
    return p.pid, out


def test_dig_udp_both_sides_and_the_process_name(sd: SockSource, dns_server):
    sd.add_pid(dns_server.pid)
    # TRIGGER
    pid, _ = run_dig(sd, dns_server)
    recs = collect(sd, {pid, dns_server.pid}, lambda rs: sum(isinstance(r, Data) for r in rs) >= 4)
    # ASSERT: dig's own query and answer are there, whatever calls libuv used
    mine = [r for r in recs if r.pid == pid]
    data = [r for r in mine if isinstance(r, Data)]
    assert {r.direction for r in data} == {Direction.EGRESS, Direction.INGRESS}
    assert all(r.protocol == Protocol.DNS and r.role == Role.CLIENT for r in data)
    q = next(r for r in data if r.direction == Direction.EGRESS)
    a = next(r for r in data if r.direction == Direction.INGRESS)
    assert q.data[:2] == a.data[:2] and q.data[2] & 0x80 == 0 and a.data[2] & 0x80
    assert b"\x03svc\x05andon\x04test\x00" in q.data
    opens = [r for r in mine if isinstance(r, ConnOpen)]
    assert opens and all(o.comm == "dig" for o in opens)  # the process, not its isc-net thread
    srv = [r for r in recs if r.pid == dns_server.pid and isinstance(r, Data) and r.data[:2] == q.data[:2]]
    assert {r.direction for r in srv} == {Direction.EGRESS, Direction.INGRESS}


def test_dig_tcp_both_sides_even_when_dnsmasq_reads_the_length_first(sd: SockSource, dns_server):
    sd.add_pid(dns_server.pid)
    # TRIGGER: dig +tcp writes length and message at once; dnsmasq reads the 2-byte
    # length, then the message
    pid, _ = run_dig(sd, dns_server, "+tcp")
    recs = collect(sd, {pid, dns_server.pid}, closes(2))
    # ASSERT: both ends of the TCP connection give DNS records, with the length prefix
    mine = [r for r in recs if r.pid == pid and isinstance(r, Data)]
    assert mine and all(r.protocol == Protocol.DNS and r.role == Role.CLIENT for r in mine)
    query = b"".join(r.data for r in mine if r.direction == Direction.EGRESS)
    answer = b"".join(r.data for r in mine if r.direction == Direction.INGRESS)
    assert int.from_bytes(query[:2], "big") == len(query) - 2
    assert int.from_bytes(answer[:2], "big") == len(answer) - 2
    assert answer[2:4] == query[2:4] and answer[4] & 0x80 and bytes([10, 1, 2, 3]) in answer
    # dnsmasq's side, this connection only (its port is dig's): the same bytes, nothing lost
    dig_port = next(r.lport for r in recs if r.pid == pid and isinstance(r, ConnOpen))
    conn = next(r.conn_id for r in recs if r.pid == dns_server.pid and isinstance(r, ConnOpen) and r.rport == dig_port)
    srv = [r for r in recs if r.conn_id == conn and isinstance(r, Data)]
    assert all(r.protocol == Protocol.DNS and r.role == Role.SERVER and r.gap == 0 for r in srv)
    got = [r for r in srv if r.direction == Direction.INGRESS]
    assert got[0].size == 2 and got[0].pos == 0  # the held length, sent ahead of the message
    assert b"".join(r.data for r in got) == query
    assert b"".join(r.data for r in srv if r.direction == Direction.EGRESS) == answer


# -- a MySQL client that reads each packet's header, then its payload ---------------------------------

MYSQL_CHILD = r"""
import json, sys
sys.path.insert(0, {tests!r})
import servers as S
class Srv: host, port = "127.0.0.1", {port}
print(json.dumps({{"rows": S.mysql_prepared(Srv, "select ? + 1", (41,))}}))
"""


@pytest.fixture(scope="module")
def maria():
    if shutil.which("mariadbd") is None:
        pytest.skip("needs mariadb-server")
    with S.mariadb() as srv:
        yield srv


def test_mysql_connector_client_side_split_reads(sd: SockSource, maria):
    # TRIGGER: mysql-connector (pure Python) reads the 4-byte header of the greeting, then
    # its payload: neither read alone is a recognisable MySQL packet
    code = MYSQL_CHILD.format(tests=str(Path(__file__).resolve().parents[1]), port=maria.port)
    pid, info = run_child(sd, code, timeout=30)
    assert info["rows"] == [[42]]
    recs = collect(sd, {pid}, closes(1))
    # ASSERT
    data = [r for r in recs if isinstance(r, Data)]
    assert data and all(r.protocol == Protocol.MYSQL and r.role == Role.CLIENT and r.gap == 0 for r in data)
    inn = b"".join(r.data for r in data if r.direction == Direction.INGRESS)
    out = b"".join(r.data for r in data if r.direction == Direction.EGRESS)
    # the greeting from its first byte: length, sequence 0, protocol version 10
    assert int.from_bytes(inn[:3], "little") > 40 and inn[3] == 0 and inn[4] == 0x0A
    first = next(r for r in data if r.direction == Direction.INGRESS)
    assert (first.pos, first.size) == (0, 4)
    # COM_STMT_PREPARE with the statement, then COM_STMT_EXECUTE, as the client wrote them
    assert b"\x16select ? + 1" in out and b"\x17" in out
    close = next(r for r in recs if isinstance(r, ConnClose))
    assert close.bytes_recv == len(inn) and close.bytes_sent == len(out)
