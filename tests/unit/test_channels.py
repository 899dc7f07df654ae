"""Output channels, each for real: stdout, a file, a unix syslog socket, a shell program and an
HTTP server on 127.0.0.1 started here; rate limits with an injected clock."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from andon.app.channels import NOTICE_RULE, Channels, ChannelSettings, syslog_time
from andon.errors import UsageError
from andon.rules.outputs import Alert, Priority

TS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


@pytest.fixture(autouse=True)
def tz_plus2(monkeypatch):
    monkeypatch.setenv("TZ", "UTC-2")  # fixed, so the local-time strings are known
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def mk(rule: str = "Write below etc", pri: Priority = Priority.ERROR, output: str = "File opened (file=/etc/x)", ts: int = TS) -> Alert:
    return Alert(ts, rule, pri, "syscall", "host1", output, {"fd.name": "/etc/x", "proc.pid": 7}, ("filesystem", "mitre"))


LINE = "00:13:20.123456789: Error File opened (file=/etc/x)"


def settings(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"stdout_output": {"enabled": False}, "syslog_output": {"enabled": False}}
    base.update(kw)
    return base


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- settings ----------------------------------------------------------------------------------


def test_defaults_are_falcos():
    s = ChannelSettings.from_dict({})
    assert s == ChannelSettings()
    assert (s.json_output, s.stdout.enabled, s.syslog.enabled, s.file.enabled, s.http.enabled) == (False, True, False, False, False)
    assert (s.json_include_output_property, s.json_include_tags_property, s.json_include_output_fields_property) == (True, True, True)
    assert s.json_include_message_property is False
    assert s.file.filename == "./events.txt" and s.file.keep_alive is False
    assert s.rate_limit.rate == 0  # no limit unless asked
    assert s.priority is Priority.DEBUG


def test_settings_from_a_full_dict():
    s = ChannelSettings.from_dict(
        {
            "json_output": True,
            "time_format_iso_8601": "true",
            "priority": "Warning",
            "output_timeout": 500,
            "outputs_queue": {"capacity": 3},
            "file_output": {"enabled": True, "keep_alive": True, "filename": "/tmp/x"},
            "syslog_output": {"enabled": True, "socket": "/run/x", "facility": "LOCAL3", "ident": "sec"},
            "program_output": {"enabled": True, "keep_alive": False, "program": "cat"},
            "http_output": {"enabled": True, "url": "'http://h:2801/'", "user_agent": "ua", "headers": {"X-A": 1}},
            "outputs": {"rate": 0.5, "max_burst": 10, "notice_interval": 5},
        }
    )
    assert s.json_output and s.time_format_iso_8601 and s.priority is Priority.WARNING
    assert (s.output_timeout, s.queue_capacity) == (500, 3)
    assert s.syslog.facility == "local3" and s.syslog.ident == "sec"
    assert s.http.headers == (("X-A", "1"),)
    assert (s.rate_limit.rate, s.rate_limit.max_burst, s.rate_limit.notice_interval) == (0.5, 10, 5)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"jsn_output": True}, "unknown output key(s): jsn_output"),
        ({"json_output": "yes"}, "json_output must be true or false"),
        ({"priority": "loud"}, "priority: unknown priority 'loud'"),
        ({"file_output": {"enabled": True, "filename": ""}}, "file_output.filename must be a non-empty string"),
        ({"file_output": {"path": "x"}}, "unknown key(s) under file_output: path"),
        ({"file_output": "yes"}, "file_output must be a mapping"),
        ({"syslog_output": {"facility": "local9"}}, "syslog_output.facility 'local9'"),
        ({"program_output": {"enabled": True}}, "program_output.program: enabled, but no program given"),
        ({"http_output": {"enabled": True, "url": "ftp://x/"}}, "is not an http:// or https:// URL"),
        ({"http_output": {"enabled": True, "url": ""}}, "is not an http:// or https:// URL"),
        ({"http_output": {"headers": {"Bad Name": "x"}}}, "bad header"),
        ({"http_output": {"compress_uploads": True}}, "compress_uploads: not supported"),
        ({"http_output": {"enabled": True, "url": "http://h/", "mtls": True}}, "mtls needs client_cert"),
        ({"outputs": {"rate": -1}}, "outputs.rate must be a number from 0"),
        ({"outputs": {"max_burst": 0}}, "outputs.max_burst must be a number from 1"),
        ({"outputs_queue": {"capacity": 1.5}}, "outputs_queue.capacity must be an integer"),
        ({"output_timeout": True}, "output_timeout must be an integer"),
    ],
)
def test_bad_settings(data, words):
    with pytest.raises(UsageError) as ei:
        ChannelSettings.from_dict(data)
    assert words in str(ei.value)


# -- stdout ------------------------------------------------------------------------------------


def test_stdout_text(capsys):
    with Channels(settings(stdout_output={"enabled": True})) as ch:
        ch.emit(mk())
    assert capsys.readouterr().out == LINE + "\n"
    assert ch.stats()["channels"]["stdout"] == {"sent": 1, "failed": 0, "dropped": 0, "last_error": None}


def test_stdout_text_iso8601(capsys):
    with Channels(settings(stdout_output={"enabled": True}, time_format_iso_8601=True)) as ch:
        ch.emit(mk())
    assert capsys.readouterr().out == "2023-11-14T22:13:20.123456789+0000: Error File opened (file=/etc/x)\n"


def test_stdout_json(capsys):
    with Channels(settings(stdout_output={"enabled": True}, json_output=True)) as ch:
        ch.emit(mk())
    out = capsys.readouterr().out
    assert out == (
        '{"hostname":"host1","output":"' + LINE + '",'
        '"output_fields":{"evt.time":1700000000123456789,"fd.name":"/etc/x","proc.pid":7},'
        '"priority":"Error","rule":"Write below etc","source":"syscall","tags":["filesystem","mitre"],'
        '"time":"2023-11-14T22:13:20.123456789Z"}\n'
    )


def test_stdout_json_options(capsys):
    s = settings(
        stdout_output={"enabled": True},
        json_output=True,
        json_include_output_property=False,
        json_include_tags_property=False,
        json_include_message_property=True,
        json_include_output_fields_property=False,
    )
    with Channels(s) as ch:
        ch.emit(mk())
    d = json.loads(capsys.readouterr().out)
    assert d == {
        "hostname": "host1",
        "message": "File opened (file=/etc/x)",
        "priority": "Error",
        "rule": "Write below etc",
        "source": "syscall",
        "time": "2023-11-14T22:13:20.123456789Z",
    }


# -- file --------------------------------------------------------------------------------------


def test_file_reopened_per_alert_without_keep_alive(tmp_path):
    path = tmp_path / "events.txt"
    with Channels(settings(file_output={"enabled": True, "filename": str(path)})) as ch:
        ch.emit(mk(output="one"))
        os.rename(path, tmp_path / "rotated.txt")  # logrotate: the next alert makes a new file
        ch.emit(mk(output="two"))
    assert (tmp_path / "rotated.txt").read_text() == "00:13:20.123456789: Error one\n"
    assert path.read_text() == "00:13:20.123456789: Error two\n"


def test_file_keep_alive_keeps_writing_to_the_open_file(tmp_path):
    path = tmp_path / "events.txt"
    with Channels(settings(file_output={"enabled": True, "keep_alive": True, "filename": str(path)}, json_output=True)) as ch:
        ch.emit(mk(output="one"))
        os.rename(path, tmp_path / "rotated.txt")
        ch.emit(mk(output="two"))  # still the open file
        assert not path.exists()
        ch.reopen()  # what SIGUSR1 does in Falco
        ch.emit(mk(output="three"))
    rotated = [json.loads(x)["output"] for x in (tmp_path / "rotated.txt").read_text().splitlines()]
    assert rotated == ["00:13:20.123456789: Error one", "00:13:20.123456789: Error two"]
    assert [json.loads(x)["output"] for x in path.read_text().splitlines()] == ["00:13:20.123456789: Error three"]
    assert ch.stats()["channels"]["file"]["sent"] == 3


def test_file_that_cannot_be_opened_is_a_counted_failure(tmp_path):
    with Channels(settings(file_output={"enabled": True, "filename": str(tmp_path / "no" / "dir" / "x")})) as ch:
        ch.emit(mk())
        ch.emit(mk())
    st = ch.stats()["channels"]["file"]
    assert (st["sent"], st["failed"]) == (0, 2)
    assert "FileNotFoundError" in st["last_error"]


# -- syslog ------------------------------------------------------------------------------------


@pytest.fixture
def syslog_sock(tmp_path):
    path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def test_syslog_rfc3164(syslog_sock):
    path, srv = syslog_sock
    with Channels(settings(syslog_output={"enabled": True, "socket": path}), wall=lambda: TS) as ch:
        ch.emit(mk())
        ch.emit(mk(pri=Priority.WARNING, output="w"))
        ch.emit(mk(pri=Priority.DEBUG, output="d"))
    # PRI = facility user (1) * 8 + severity (Error 3, Warning 4, Debug 7); local time (UTC+2 here)
    assert srv.recv(4096) == ("<11>Nov 15 00:13:20 andon: " + LINE).encode()
    assert srv.recv(4096) == b"<12>Nov 15 00:13:20 andon: 00:13:20.123456789: Warning w"
    assert srv.recv(4096) == b"<15>Nov 15 00:13:20 andon: 00:13:20.123456789: Debug d"
    assert ch.stats()["channels"]["syslog"]["sent"] == 3


def test_syslog_facility_ident_and_json(syslog_sock):
    path, srv = syslog_sock
    s = settings(syslog_output={"enabled": True, "socket": path, "facility": "local0", "ident": "sec"}, json_output=True)
    with Channels(s, wall=lambda: TS) as ch:
        ch.emit(mk(pri=Priority.CRITICAL))
    msg = srv.recv(65536).decode()
    head, body = msg.split(": ", 1)
    assert head == "<130>Nov 15 00:13:20 sec"  # 16 * 8 + 2
    assert json.loads(body)["priority"] == "Critical"


def test_syslog_day_is_space_padded():
    assert syslog_time(1_699_000_000 * 10**9) == "Nov  3 10:26:40"


def test_syslog_stream_socket_gets_nul_terminated_messages(tmp_path):
    path = str(tmp_path / "log")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(5)
    try:
        with Channels(settings(syslog_output={"enabled": True, "socket": path}), wall=lambda: TS) as ch:
            ch.emit(mk(output="a"))
            conn, _ = srv.accept()
            conn.settimeout(5)
            ch.emit(mk(output="b"))
            data = b""
            while data.count(b"\0") < 2:
                data += conn.recv(4096)
            conn.close()
    finally:
        srv.close()
    assert data == b"<11>Nov 15 00:13:20 andon: 00:13:20.123456789: Error a\0<11>Nov 15 00:13:20 andon: 00:13:20.123456789: Error b\0"


def test_syslog_without_a_listener_counts_failures_and_recovers(tmp_path):
    path = str(tmp_path / "log")
    with Channels(settings(syslog_output={"enabled": True, "socket": path}), wall=lambda: TS) as ch:
        ch.emit(mk())
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        srv.bind(path)
        srv.settimeout(5)
        ch.emit(mk(output="later"))
        assert srv.recv(4096).endswith(b"Error later")
        srv.close()
    st = ch.stats()["channels"]["syslog"]
    assert (st["sent"], st["failed"]) == (1, 1)
    assert "FileNotFoundError" in st["last_error"]


# -- program -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [True, False])
def test_program_cat_appends(tmp_path, keep_alive):
    out = tmp_path / "out.txt"
    s = settings(program_output={"enabled": True, "keep_alive": keep_alive, "program": f"cat >> {out}"})
    with Channels(s) as ch:
        for i in range(3):
            ch.emit(mk(output=f"n{i}"))
    assert out.read_text() == "".join(f"00:13:20.123456789: Error n{i}\n" for i in range(3))
    st = ch.stats()["channels"]["program"]
    assert (st["sent"], st["failed"], st["restarts"]) == (3, 0, 0)


def test_program_restarted_when_it_exits(tmp_path):
    out = tmp_path / "out.txt"
    s = settings(program_output={"enabled": True, "keep_alive": True, "program": f"head -n 1 >> {out}"})
    with Channels(s) as ch:
        ch.emit(mk(output="first"))
        prog = ch.channels[0]
        prog._proc.wait(5)  # head read its one line and left
        ch.emit(mk(output="second"))
    assert out.read_text() == "00:13:20.123456789: Error first\n00:13:20.123456789: Error second\n"
    st = ch.stats()["channels"]["program"]
    assert (st["sent"], st["restarts"]) == (2, 1)


def test_program_broken_pipe_restarts(tmp_path):
    out = tmp_path / "out.txt"
    s = settings(program_output={"enabled": True, "keep_alive": True, "program": f"exec cat >> {out}"})
    with Channels(s) as ch:
        ch.emit(mk(output="first"))
        prog = ch.channels[0]
        old = prog._proc
        deadline = time.monotonic() + 5
        while not out.exists() or not out.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # cat has copied the first line
        old.kill()
        old.wait(5)
        # poll() now says it exited; simulate the race where it has not been noticed yet
        prog._proc.poll = lambda: None  # type: ignore[method-assign]
        ch.emit(mk(output="second"))
    assert out.read_text() == "00:13:20.123456789: Error first\n00:13:20.123456789: Error second\n"
    assert ch.stats()["channels"]["program"]["restarts"] == 1


# -- http --------------------------------------------------------------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so that a connection can be kept alive
    requests: list[dict[str, Any]]
    status = 200
    gate: threading.Event | None = None
    arrived: threading.Event

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body, "peer": self.client_address}
        )
        self.arrived.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def server():
    class H(Recorder):
        requests: list[dict[str, Any]] = []
        arrived = threading.Event()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv, H
    if H.gate is not None:
        H.gate.set()
    srv.shutdown()
    srv.server_close()


def http_settings(url: str, **http: Any) -> dict[str, Any]:
    return settings(http_output={"enabled": True, "url": url, **http})


SIDEKICK_KEYS = {"output", "priority", "rule", "time", "output_fields", "source", "hostname", "tags"}


def test_http_posts_the_json_alert(server):
    srv, H = server
    url = f"http://127.0.0.1:{srv.server_port}/falco?x=1"
    a = mk()
    with Channels(http_settings(url, user_agent="andon-test", headers={"Authorization": "Bearer t"})) as ch:
        ch.emit(a)
    assert ch.stats()["channels"]["http"] == {"sent": 1, "failed": 0, "dropped": 0, "last_error": None, "queued": 0}
    (req,) = H.requests
    assert req["method"] == "POST"
    assert req["path"] == "/falco?x=1"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["User-Agent"] == "andon-test"
    assert req["headers"]["Authorization"] == "Bearer t"
    body = json.loads(req["body"])
    assert body == a.to_json()
    assert req["body"].decode() == a.to_json_line()
    # what Falcosidekick's FalcoPayload.Check() needs: priority, rule, RFC 3339 time, output_fields
    assert SIDEKICK_KEYS <= set(body)
    assert body["output_fields"] and body["rule"] and body["priority"] == "Error"
    assert body["time"] == "2023-11-14T22:13:20.123456789Z"


def test_http_is_json_even_when_the_other_channels_are_text(server, capsys):
    srv, H = server
    s = http_settings(f"http://127.0.0.1:{srv.server_port}/")
    s["stdout_output"] = {"enabled": True}
    with Channels(s) as ch:
        ch.emit(mk())
    assert capsys.readouterr().out == LINE + "\n"
    assert json.loads(H.requests[0]["body"])["output"] == LINE


@pytest.mark.parametrize("keep_alive", [True, False])
def test_http_keep_alive_reuses_the_connection(server, keep_alive):
    srv, H = server
    with Channels(http_settings(f"http://127.0.0.1:{srv.server_port}/", keep_alive=keep_alive)) as ch:
        for i in range(3):
            ch.emit(mk(output=f"n{i}"))
    assert [json.loads(r["body"])["output"][-2:] for r in H.requests] == ["n0", "n1", "n2"]
    assert len({r["peer"] for r in H.requests}) == (1 if keep_alive else 3)
    assert ch.stats()["channels"]["http"]["sent"] == 3


def test_http_error_status_is_a_failure(server):
    srv, H = server
    H.status = 500
    with Channels(http_settings(f"http://127.0.0.1:{srv.server_port}/")) as ch:
        ch.emit(mk())
    st = ch.stats()["channels"]["http"]
    assert (st["sent"], st["failed"]) == (0, 1)
    assert st["last_error"] == "HTTP 500 Internal Server Error"


def test_http_server_down_is_a_counted_failure_not_an_exception():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with Channels(http_settings(f"http://127.0.0.1:{port}/")) as ch:
        ch.emit(mk())
        ch.emit(mk())
    st = ch.stats()["channels"]["http"]
    assert (st["sent"], st["failed"], st["dropped"]) == (0, 2, 0)
    assert "ConnectionRefusedError" in st["last_error"]


def test_http_timeout_is_retried_then_counted(server):
    srv, H = server
    H.gate = threading.Event()  # the server never answers in time
    s = http_settings(f"http://127.0.0.1:{srv.server_port}/", max_consecutive_timeouts=1)
    s["output_timeout"] = 200
    ch = Channels(s)
    ch.emit(mk())
    deadline = time.monotonic() + 5
    while ch.stats()["channels"]["http"]["failed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    H.gate.set()
    ch.close()
    st = ch.stats()["channels"]["http"]
    assert (st["sent"], st["failed"]) == (0, 1)
    assert st["last_error"] == "timed out after 0.2 s"
    assert len(H.requests) == 2  # the first try and one retry


def test_http_full_queue_drops_and_counts(server):
    srv, H = server
    H.gate = threading.Event()
    s = http_settings(f"http://127.0.0.1:{srv.server_port}/")
    s["outputs_queue"] = {"capacity": 1}
    ch = Channels(s)
    ch.emit(mk(output="n0"))
    assert H.arrived.wait(5)  # the worker is inside the first POST
    t0 = time.monotonic()
    for i in range(1, 5):
        ch.emit(mk(output=f"n{i}"))  # one fits in the queue, three are dropped
    assert time.monotonic() - t0 < 0.5  # emit never waits for the network
    assert ch.stats()["channels"]["http"]["dropped"] == 3
    H.gate.set()
    ch.close()
    st = ch.stats()["channels"]["http"]
    assert (st["sent"], st["failed"], st["dropped"]) == (2, 0, 3)
    assert [json.loads(r["body"])["output"][-2:] for r in H.requests] == ["n0", "n1"]


# -- priority threshold and rate limits --------------------------------------------------------


def test_priority_threshold(capsys):
    with Channels(settings(stdout_output={"enabled": True}, priority="warning")) as ch:
        ch.emit(mk(pri=Priority.NOTICE, output="notice"))
        ch.emit(mk(pri=Priority.WARNING, output="warning"))
        ch.emit(mk(pri=Priority.DEBUG, output="debug"))
        ch.emit(mk(pri=Priority.EMERGENCY, output="emergency"))
    out = capsys.readouterr().out.splitlines()
    assert [x.split(" ", 2)[1:] for x in out] == [["Warning", "warning"], ["Emergency", "emergency"]]
    assert ch.stats()["below_priority"] == 2


def test_rate_limit_suppresses_counts_and_reports(capsys):
    clock = Clock()
    s = settings(stdout_output={"enabled": True}, outputs={"rate": 1, "max_burst": 2, "notice_interval": 60})
    ch = Channels(s, clock=clock, wall=lambda: TS)
    for i in range(5):
        ch.emit(mk(output=f"a{i}"))  # burst of 2 passes, 3 suppressed
    ch.emit(mk(rule="Other", output="other"))  # every rule has its own bucket
    clock.t += 0.5
    ch.emit(mk(output="a5"))  # half a token: suppressed
    assert ch.stats()["rules"] == {"Write below etc": {"emitted": 2, "suppressed": 4}, "Other": {"emitted": 1, "suppressed": 0}}
    clock.t += 0.5
    ch.emit(mk(output="a6"))  # a whole token again: the notice first, then the alert
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "00:13:20.123456789: Error a0",
        "00:13:20.123456789: Error a1",
        "00:13:20.123456789: Error other",
        '00:13:20.123456789: Error 4 alerts of rule "Write below etc" suppressed in the last 1 s '
        '(rule="Write below etc" suppressed=4 seconds=1.0 rate=1 max_burst=2)',
        "00:13:20.123456789: Error a6",
    ]
    # suppressed again; the notice comes from tick() once notice_interval has passed
    ch.emit(mk(output="a7"))
    clock.t += 30
    ch.tick()
    assert capsys.readouterr().out == ""
    clock.t += 31
    ch.tick()
    assert capsys.readouterr().out == (
        '00:13:20.123456789: Error 1 alert of rule "Write below etc" suppressed in the last 61 s '
        '(rule="Write below etc" suppressed=1 seconds=61.0 rate=1 max_burst=2)\n'
    )
    ch.tick()
    assert capsys.readouterr().out == ""
    # close() reports what is still pending
    clock.t += 100  # tokens back to 2
    ch.emit(mk(output="b0"))
    ch.emit(mk(output="b1"))
    ch.emit(mk(output="b2"))
    clock.t += 0.25
    ch.close()
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith('00:13:20.123456789: Error 1 alert of rule "Write below etc" suppressed in the last 0.2 s')
    st = ch.stats()
    assert st["rules"]["Write below etc"] == {"emitted": 5, "suppressed": 6}
    assert st["notices"] == 3


def test_rate_limit_notice_as_json(capsys):
    clock = Clock()
    s = settings(stdout_output={"enabled": True}, json_output=True, outputs={"rate": 1, "max_burst": 1})
    with Channels(s, clock=clock, wall=lambda: TS + 5) as ch:
        ch.emit(mk(pri=Priority.WARNING))
        ch.emit(mk(pri=Priority.WARNING))
        clock.t += 2
        ch.emit(mk(pri=Priority.WARNING))
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["rule"] for x in lines] == ["Write below etc", NOTICE_RULE, "Write below etc"]
    assert lines[1] == {
        "hostname": "host1",
        "output": '1 alert of rule "Write below etc" suppressed in the last 2 s',
        "output_fields": {"max_burst": 1, "rate": 1, "rule": "Write below etc", "seconds": 2.0, "suppressed": 1},
        "priority": "Warning",
        "rule": NOTICE_RULE,
        "source": "internal",
        "time": "2023-11-14T22:13:20.123456794Z",
    }


def test_no_rate_limit_by_default(capsys):
    with Channels(settings(stdout_output={"enabled": True})) as ch:
        for i in range(2000):
            ch.emit(mk(output=f"n{i}"))
    assert len(capsys.readouterr().out.splitlines()) == 2000
    assert ch.stats()["rules"]["Write below etc"] == {"emitted": 2000, "suppressed": 0}


def test_every_channel_at_once(tmp_path, capsys, syslog_sock, server):
    path, srv_sock = syslog_sock
    srv, H = server
    out = tmp_path / "prog.txt"
    s = {
        "json_output": True,
        "stdout_output": {"enabled": True},
        "file_output": {"enabled": True, "filename": str(tmp_path / "f.txt")},
        "syslog_output": {"enabled": True, "socket": path},
        "program_output": {"enabled": True, "program": f"cat >> {out}"},
        "http_output": {"enabled": True, "url": f"http://127.0.0.1:{srv.server_port}/"},
    }
    a = mk()
    with Channels(s, wall=lambda: TS) as ch:
        ch.emit(a)
    line = a.to_json_line()
    assert capsys.readouterr().out == line + "\n"
    assert (tmp_path / "f.txt").read_text() == line + "\n"
    assert out.read_text() == line + "\n"
    assert srv_sock.recv(65536).decode() == "<11>Nov 15 00:13:20 andon: " + line
    assert H.requests[0]["body"].decode() == line
    assert {k: v["sent"] for k, v in ch.stats()["channels"].items()} == {"stdout": 1, "file": 1, "syslog": 1, "program": 1, "http": 1}
