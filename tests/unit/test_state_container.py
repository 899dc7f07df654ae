"""Container ids from cgroup paths, runtime metadata parsing, the non-blocking registry, and
user/group names."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from andon.state.container import (
    ContainerInfo,
    ContainerRegistry,
    ContainerSettings,
    container_id_from_cgroup,
    info_from_docker,
    info_from_podman,
    match_cgroup,
    match_proc_cgroup,
    parse_rfc3339_ns,
    split_image,
)
from andon.state.users import NA, UserDb, loginuid_value

CID = "f75f8025ce36280c95d8cb56d17a528eeaf3670fa1e4d5843eb1400099ec284f"


@pytest.mark.parametrize(
    ("path", "runtime"),
    [
        (f"/system.slice/docker-{CID}.scope", "docker"),
        (f"docker-{CID}.scope", "docker"),
        (f"/docker/{CID}", "docker"),
        (f"/system.slice/containerd.service/kubepods-besteffort-pod1.slice:cri-containerd:{CID}", "containerd"),
        (f"/kubepods.slice/kubepods-burstable-pod1.slice/cri-containerd-{CID}.scope", "containerd"),
        (f"/kubepods/besteffort/pod0b6b9b8e-1c33-4f0e-9b8e-000000000000/{CID}", "cri"),
        (f"/kubepods.slice/kubepods-pod1.slice/crio-{CID}.scope", "cri-o"),
        (f"/crio-{CID}", "cri-o"),
        (f"/libpod_parent/libpod-{CID}", "podman"),
        (f"libpod-{CID}", "podman"),
        (f"/machine.slice/libpod-{CID}.scope", "podman"),
        (f"/machine.slice/libpod-{CID}.scope/container", "podman"),
        (f"/default/{CID}", "containerd"),
        (CID, ""),
    ],
)
def test_container_cgroups_match(path, runtime):
    m = match_cgroup(path)
    assert m is not None and m.id == CID and m.runtime == runtime
    assert container_id_from_cgroup(path) == "f75f8025ce36"


@pytest.mark.parametrize(
    "path",
    [
        f"/libpod_parent/libpod-conmon-{CID}",  # conmon runs on the host, beside the container
        f"/machine.slice/libpod-conmon-{CID}.scope",
        f"/kubepods.slice/crio-conmon-{CID}.scope",
        f"/system.slice/docker-{CID[:63]}.scope",  # 63 hex: not an id
        f"/docker/{CID}x",
        f"/docker/{CID}/extra",
        "/user.slice/user-0.slice/session-1.scope",
        "/process_api/d94c0568ee87f68b2fdd11f40e37ee2e",  # 32 hex
        "/",
        "",
        "init.scope",
    ],
)
def test_not_containers(path):
    assert match_cgroup(path) is None
    assert container_id_from_cgroup(path) == "host"


def test_uppercase_hex_is_lowered():
    assert match_cgroup(f"docker-{CID.upper()}.scope").id == CID


def test_proc_cgroup_text_v1_and_v2():
    text = (
        "9:name=systemd:/\n"
        f"4:memory:/libpod_parent/libpod-{CID}\n"
        "1:cpu:/\n"
        f"0::/libpod_parent/libpod-{CID}\n"
    )
    assert match_proc_cgroup(text).id == CID
    assert match_proc_cgroup("0::/init.scope\n4:memory:/process_api/abc\n") is None


def test_split_image():
    assert split_image("localhost/andon-test:bookworm") == ("localhost/andon-test", "bookworm", "")
    assert split_image("registry:5000/ns/img") == ("registry:5000/ns/img", "", "")
    assert split_image("docker.io/library/nginx:1.25@sha256:abc") == ("docker.io/library/nginx", "1.25", "sha256:abc")


def test_rfc3339_ns():
    assert parse_rfc3339_ns("1970-01-01T00:00:01.000000002Z") == 1_000_000_002
    assert parse_rfc3339_ns("2024-01-01T00:00:00+01:00") == 1704063600 * 10**9
    assert parse_rfc3339_ns("2024-01-01T00:00:00.5Z") == 1704067200 * 10**9 + 500_000_000
    assert parse_rfc3339_ns("0001-01-01T00:00:00Z") is None  # podman's "never started"
    assert parse_rfc3339_ns("yesterday") is None


PODMAN_JSON = {
    "Id": CID,
    "Name": "andon-t-web",
    "Image": "733c8c3e112c4c12da8dbd1435df56f2a256900009b6f12290228b2208301709",
    "ImageName": "localhost/andon-test:bookworm",
    "State": {"StartedAt": "2026-11-21T21:08:03.96184596Z"},
    "Config": {"Image": "localhost/andon-test:bookworm", "Labels": {"app": "web"}},
    "HostConfig": {"Privileged": True},
}


def test_info_from_podman():
    i = info_from_podman(PODMAN_JSON)
    assert (i.id, i.name, i.image, i.image_repository, i.image_tag) == (
        CID, "andon-t-web", "localhost/andon-test:bookworm", "localhost/andon-test", "bookworm",
    )  # fmt: skip
    assert i.privileged is True and i.resolved and i.labels == {"app": "web"}
    assert i.start_ts == parse_rfc3339_ns("2026-11-21T21:08:03.96184596Z") and i.start_ts % 10**9 == 961845960


def test_info_from_docker_defaults_tag():
    i = info_from_docker({
        "Id": CID, "Name": "/db", "Image": "sha256:1", "Config": {"Image": "postgres"},
        "HostConfig": {"Privileged": False}, "State": {"StartedAt": "2024-01-01T00:00:00Z"},
    })  # fmt: skip
    assert (i.name, i.image_repository, i.image_tag, i.privileged) == ("db", "postgres", "latest", False)


def test_registry_without_lookups_is_a_cache():
    reg = ContainerRegistry(ContainerSettings(lookups=False, max_entries=3))
    assert reg.get("") is None and reg.get("host") is None
    placeholder = reg.get(CID)
    assert placeholder is not None and not placeholder.resolved and placeholder.name is None
    reg.add(ContainerInfo(CID, "podman", name="web", resolved=True))
    assert reg.get(CID).name == "web"
    for i in range(4):
        reg.add(ContainerInfo(f"{i:064x}", resolved=True))
    assert len(reg) == 3 and reg.stats["evicted"] >= 2


def fake_podman(tmp_path: Path, delay: float, body: dict | None) -> str:
    """A stand-in for podman: sleeps, then prints an inspect answer (or fails)."""
    out = tmp_path / "answer.json"
    out.write_text(json.dumps([body] if body else []))
    script = tmp_path / "podman"
    rc = 0 if body else 125
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\nsleep {delay}\ncat {out}\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_registry_never_blocks_the_event_path(tmp_path):
    exe = fake_podman(tmp_path, 0.5, PODMAN_JSON)
    reg = ContainerRegistry(ContainerSettings(podman=exe, docker_socket=str(tmp_path / "none.sock")))
    try:
        t0 = time.monotonic()
        first = reg.get(CID)
        for _ in range(100):
            reg.get(CID)
        assert time.monotonic() - t0 < 0.2  # the 0.5 s runtime call is not on this path
        assert first is not None and not first.resolved and first.image is None
        got = reg.resolve(CID, timeout=5)
        assert got.resolved and got.name == "andon-t-web" and got.image_repository == "localhost/andon-test"
        assert reg.get(CID) is got
        calls = (tmp_path / "calls").read_text().splitlines()
        assert calls == [f"inspect --type container --format json {CID}"]  # asked once
    finally:
        reg.close()


def test_registry_timeout_and_negative_cache(tmp_path):
    exe = fake_podman(tmp_path, 3, PODMAN_JSON)
    reg = ContainerRegistry(ContainerSettings(podman=exe, timeout=0.2, docker_socket=str(tmp_path / "none.sock")))
    try:
        t0 = time.monotonic()
        got = reg.resolve(CID, timeout=5)
        assert time.monotonic() - t0 < 2
        assert got is not None and not got.resolved
        assert reg.stats["failed"] == 1
        reg.get(CID)  # within the negative ttl: not asked again
        time.sleep(0.1)
        assert reg.stats["lookups"] == 1
    finally:
        reg.close()


def test_registry_unknown_container(tmp_path):
    exe = fake_podman(tmp_path, 0, None)
    reg = ContainerRegistry(ContainerSettings(podman=exe, docker_socket=str(tmp_path / "none.sock")))
    try:
        got = reg.resolve(CID, timeout=5)
        assert not got.resolved and got.name is None and reg.stats["failed"] == 1
    finally:
        reg.close()


# -- users ------------------------------------------------------------------------------------
def test_user_and_group_names(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n"
                                "# comment\nbroken-line\nalias:x:33:33::/:/bin/sh\n")  # fmt: skip
    (etc / "group").write_text("root:x:0:\nwww-data:x:33:\n")
    db = UserDb(str(etc), recheck=0)
    assert db.user_name(0) == "root" and db.user_name(33) == "www-data"  # first name of an id wins
    assert db.user_name(4242) == NA and db.group_name(33) == "www-data" and db.group_name(7) == NA
    assert db.login_name(0xFFFFFFFF) == NA and db.login_name(0) == "root"
    assert loginuid_value(0xFFFFFFFF) == -1 and loginuid_value(1000) == 1000
    # the file changes: the next lookup sees it
    time.sleep(0.01)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nmallory:x:4242:4242::/:/bin/sh\n")
    os.utime(etc / "passwd", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert db.user_name(4242) == "mallory"


def test_container_root_names(tmp_path):
    host = tmp_path / "host" / "etc"
    host.mkdir(parents=True)
    (host / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (host / "group").write_text("root:x:0:\n")
    root = tmp_path / "ctr"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\npostgres:x:999:999::/:/bin/sh\n")
    (root / "etc" / "group").write_text("postgres:x:999:\n")
    db = UserDb(str(host), recheck=0)
    assert db.user_name(999) == NA
    assert db.user_name(999, root=str(root), key=CID) == "postgres"
    assert db.group_name(999, root=str(root), key=CID) == "postgres"

    class P:
        pid = 1234
        container = CID

    assert db.for_process(P()) == ("/proc/1234/root", CID)


def test_docker_api_over_its_unix_socket(tmp_path):
    import http.server
    import socketserver
    import threading

    from andon.state.container import docker_inspect

    body = json.dumps({"Id": CID, "Name": "/api", "Image": "sha256:2", "Config": {"Image": "nginx:1.25"},
                       "HostConfig": {"Privileged": True}, "State": {"StartedAt": "2024-01-01T00:00:00Z"}})  # fmt: skip
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            ok = self.path == f"/containers/{CID}/json"
            data = body.encode() if ok else b'{"message":"No such container"}'
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def address_string(self):
            return "unix"

        def log_message(self, *a):
            pass

    path = str(tmp_path / "docker.sock")
    srv = socketserver.UnixStreamServer(path, Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        info = docker_inspect(CID, path, timeout=2)
        assert (info.runtime, info.name, info.image_repository, info.image_tag, info.privileged) == (
            "docker", "api", "nginx", "1.25", True,
        )  # fmt: skip
        assert docker_inspect("0" * 64, path, timeout=2) is None
        assert seen == [f"/containers/{CID}/json", f"/containers/{'0' * 64}/json"]
        # the registry falls back to docker when podman does not know the id
        reg = ContainerRegistry(ContainerSettings(podman=str(tmp_path / "no-podman"), docker_socket=path))
        try:
            assert reg.resolve(CID, timeout=5).name == "api"
        finally:
            reg.close()
    finally:
        srv.shutdown()
        srv.server_close()


# -- the runtimes' event streams ----------------------------------------------------------------
from andon.state.container import (  # noqa: E402
    DirWatch,
    RuntimeEvent,
    parse_docker_event,
    parse_podman_event,
    privileged_from_bundle,
    tail_lines,
)

PODMAN_EVENTS = [
    # what podman 4.3 writes to its events log / `podman events --format json`, one per line
    json.dumps({"ID": CID, "Image": "localhost/andon-test:bookworm", "Name": "andon-t-web", "Status": "create",
                "Time": "2026-11-21T22:54:11.834490531Z", "Type": "container", "Attributes": {"app": "web"}}),
    json.dumps({"ID": "a" * 64, "Name": "localhost/andon-test:bookworm", "Status": "pull", "Type": "image"}),
    "not json at all",
    json.dumps({"ID": "abc", "Status": "create", "Type": "container"}),  # not a full id
]


def test_parse_podman_events():
    rev = parse_podman_event(PODMAN_EVENTS[0])
    assert rev == RuntimeEvent("podman", "create", CID, "andon-t-web", "localhost/andon-test:bookworm",
                               {"app": "web"}, 1795301651834490531)
    info = rev.info()
    assert (info.name, info.image_repository, info.image_tag, info.privileged, info.resolved) == (
        "andon-t-web", "localhost/andon-test", "bookworm", None, False)
    assert [parse_podman_event(line) for line in PODMAN_EVENTS[1:]] == [None, None, None]


def test_parse_docker_event():
    d = {"Type": "container", "Action": "exec_start: sh", "Actor": {"ID": CID.upper(), "Attributes": {
        "name": "web", "image": "nginx", "com.example": "x"}}, "timeNano": 5}
    rev = parse_docker_event(d)
    assert (rev.runtime, rev.status, rev.id, rev.name, rev.image, rev.labels, rev.time_ns) == (
        "docker", "exec_start", CID, "web", "nginx", {"com.example": "x"}, 5)
    assert rev.info().image_tag == "latest"
    assert parse_docker_event({"Type": "network", "Action": "connect"}) is None


def test_privileged_from_bundle(tmp_path):
    cfg = tmp_path / "config.json"
    assert privileged_from_bundle(str(cfg)) is None
    cfg.write_text(json.dumps({"annotations": {"io.podman.annotations.privileged": "TRUE"}}))
    assert privileged_from_bundle(str(cfg)) is True
    cfg.write_text(json.dumps({"annotations": {"io.podman.annotations.privileged": "FALSE"}}))
    assert privileged_from_bundle(str(cfg)) is False
    cfg.write_text('{"annota')  # being written
    assert privileged_from_bundle(str(cfg)) is None


def test_tail_lines_reads_appended_whole_lines(tmp_path):
    log = tmp_path / "events.log"
    log.write_bytes(b"old line\n")
    stop = []
    it = tail_lines(str(log), lambda: bool(stop), every=0.001)
    with log.open("ab") as f:
        f.write(b"one\ntw")
        f.flush()
        assert next(it) == b"one"
        f.write(b"o\n")
        f.flush()
        assert next(it) == b"two"
    log.write_bytes(b"rotated\n")  # smaller: podman rotated it
    assert next(it) == b"rotated"
    stop.append(1)
    assert list(it) == []


def test_tail_lines_is_woken_by_a_write_not_by_its_poll(tmp_path):
    log = tmp_path / "events.log"
    log.write_bytes(b"")
    stop = []
    # a poll every 30 s: only the inotify watch can bring the line sooner
    it = tail_lines(str(log), lambda: bool(stop), every=30.0, idle=30.0)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(next(it)))
    t.start()
    time.sleep(0.1)  # the tail is asleep now
    t0 = time.monotonic()
    with log.open("ab") as f:
        f.write(b"started\n")
    t.join(5)
    assert got == [b"started"] and time.monotonic() - t0 < 2
    stop.append(1)
    with log.open("ab") as f:
        f.write(b"\n")  # wakes it to see stop
    assert list(it) == []


def test_dir_watch_reports_a_change_and_a_quiet_timeout(tmp_path):
    w = DirWatch(str(tmp_path))
    try:
        assert w.wait(0.05) is False
        (tmp_path / "f").write_bytes(b"x")
        assert w.wait(5) is True
        assert w.wait(0.05) is False  # the events were consumed
    finally:
        w.close()
    with pytest.raises(OSError):
        DirWatch(str(tmp_path / "missing"))


def _watching_registry(tmp_path, inspect_delay: float, body: dict | None, bundle_priv: str | None):
    exe = fake_podman(tmp_path, inspect_delay, body)
    storage = tmp_path / "storage"
    (storage / "overlay-containers").mkdir(parents=True)
    if bundle_priv is not None:
        d = storage / "overlay-containers" / CID / "userdata"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"annotations": {"io.podman.annotations.privileged": bundle_priv}}))
    return ContainerRegistry(ContainerSettings(podman=exe, docker_socket=str(tmp_path / "none.sock"),
                                               podman_storage=str(storage)))


def test_create_event_gives_metadata_from_bundle_before_inspect(tmp_path):
    body = dict(PODMAN_JSON, HostConfig={"Privileged": True})
    reg = _watching_registry(tmp_path, 1.0, body, "TRUE")
    reg.keep_news = True
    try:
        t = threading.Thread(target=reg.on_runtime_event, args=(parse_podman_event(PODMAN_EVENTS[0]),))
        t.start()
        time.sleep(0.02)
        # inspect is still running (1 s): the kernel's first sight must not queue another
        assert reg.pending(CID) or reg.get(CID).resolved
        info = reg.wait(CID, 0.5)
        assert info is not None and info.resolved
        assert (info.name, info.image_repository, info.privileged) == ("andon-t-web", "localhost/andon-test", True)
        assert reg.stats["from_bundle"] == 1 and reg.stats["early"] == 1
        t.join(5)
        deadline = time.monotonic() + 5
        while reg.get(CID).image_id is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reg.get(CID).image_id == body["Image"]  # inspect's complete answer replaced it
        assert [i.image_id for i in reg.drain_resolved()] == [None, body["Image"]]
        assert (tmp_path / "calls").read_text().splitlines() == [f"inspect --type container --format json {CID}"]
    finally:
        reg.close()


def test_container_gone_before_inspect_keeps_what_the_events_said(tmp_path):
    reg = _watching_registry(tmp_path, 0, None, None)  # inspect fails, no bundle
    try:
        reg.get(CID)  # the kernel saw it; its lookup fails
        reg.resolve(CID, timeout=5)
        assert reg.stats["failed"] == 1
        gone = parse_podman_event(PODMAN_EVENTS[0].replace('"create"', '"remove"'))
        reg.on_runtime_event(gone)
        info = reg.get(CID)
        assert info.resolved and info.name == "andon-t-web" and info.privileged is None and "events" in info.error
    finally:
        reg.close()


def test_wait_is_bounded_and_counted_once_per_container(tmp_path):
    exe = fake_podman(tmp_path, 2.0, PODMAN_JSON)
    reg = ContainerRegistry(ContainerSettings(podman=exe, docker_socket=str(tmp_path / "none.sock")))
    try:
        reg.get(CID)
        assert reg.pending(CID)
        t0 = time.monotonic()
        assert not reg.wait(CID, 0.2).resolved
        assert 0.15 < time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        reg.wait(CID, 0.2)  # expired once: no second wait for the same container
        assert time.monotonic() - t0 < 0.05
        assert (reg.stats["waits"], reg.stats["wait_expired"]) == (1, 1)
        assert not reg.pending("host") and reg.wait("", 1) is None
    finally:
        reg.close()


def test_watch_follows_the_podman_events_log(tmp_path):
    log = tmp_path / "events.log"
    log.write_text("")
    exe = tmp_path / "podman"
    # `podman info` says the file logger; inspect answers
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps([dict(PODMAN_JSON, HostConfig={"Privileged": False})]))
    exe.write_text(f'#!/bin/sh\nif [ "$1" = info ]; then echo file; exit 0; fi\ncat {answer}\n')
    exe.chmod(0o755)
    reg = ContainerRegistry(ContainerSettings(podman=str(exe), docker_socket=str(tmp_path / "none.sock"),
                                              podman_events_log=str(log), podman_storage=str(tmp_path / "none")))
    try:
        assert reg.watch() == 1
        time.sleep(0.3)  # the watcher asks `podman info`, then reads from the log's end
        with log.open("a") as f:
            f.write("\n".join(PODMAN_EVENTS) + "\n")
        deadline = time.monotonic() + 5
        while not (reg._cache.get(CID) and reg._cache[CID].resolved) and time.monotonic() < deadline:
            time.sleep(0.01)
        info = reg._cache.get(CID)
        assert info is not None and info.resolved and info.name == "andon-t-web" and info.privileged is False
        assert reg.watching == f"podman events log {log}"
        assert reg.stats["runtime_events"] == 1 and reg.stats["runtime_events_skipped"] == 3
        assert reg.stats["early"] == 1
    finally:
        reg.close()
