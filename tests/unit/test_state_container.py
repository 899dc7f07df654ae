"""Container ids from cgroup paths, runtime metadata parsing, the non-blocking registry, and
user/group names."""

from __future__ import annotations

import json
import os
import stat
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
