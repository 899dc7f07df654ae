"""cgroup v2 endpoints: processes on the host network, enforced by cgroup_skb programs.

A cgroup endpoint is a cgroup v2 directory (``/sys/fs/cgroup/unified/...`` on this host:
cgroup v1 everywhere else). The policy object's ``cgroup_skb__egress``/``cgroup_skb__ingress``
programs (every packet) and ``cgroup__connect4``/``cgroup__connect6`` (TCP connect(): a
denied one fails with EPERM before the SYN is sent, as TCP would otherwise retry a SYN
dropped at cgroup_skb until its timeout) are attached to it with ``BPF_PROG_ATTACH`` and ``BPF_F_ALLOW_MULTI`` (other
programs on the same cgroup keep running); such an attachment lives as long as the cgroup,
so the enforcement outlives ``andon endpoint add``. A later process detaches them by the
program ids recorded in the state (``bpf_prog_get_fd_by_id`` then ``BPF_PROG_DETACH``),
since it loads programs of its own.

The kernel finds the endpoint by the cgroup id of the packet's socket, which is the inode
number of the cgroup directory (kernfs), or the deepest ancestor that is an endpoint. A
socket belongs to the cgroup of the process that created it, at the time it did: move a
process first, then let it open its sockets.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from ..bpf.pins import errno_of, lib_fn, obj_info
from ..errors import BpfError, NotSupported, UsageError

# enum bpf_attach_type
BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS, BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT = 0, 1, 10, 11
ATTACH_TYPES = {"ingress": BPF_CGROUP_INET_INGRESS, "egress": BPF_CGROUP_INET_EGRESS,
                "connect4": BPF_CGROUP_INET4_CONNECT, "connect6": BPF_CGROUP_INET6_CONNECT}
# hook -> program in enforce/policy.bpf.o
PROGRAMS = {"egress": "cgroup_skb__egress", "ingress": "cgroup_skb__ingress", "connect4": "cgroup__connect4",
            "connect6": "cgroup__connect6"}
BPF_F_ALLOW_MULTI = 1 << 1
KEY_CGROUP = 0x80000000  # bpf/abi/netpolicy.h NP_KEY_CGROUP
CGROUP2_SUPER_MAGIC = 0x63677270


def cgroup2_mounts() -> list[Path]:
    """Where cgroup2 is mounted (``/proc/self/mounts``)."""
    out = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                out.append(Path(parts[1].replace("\\040", " ")))
    return out


def resolve(path: str | os.PathLike[str]) -> Path:
    """The cgroup v2 directory ``path`` names (absolute, existing); UsageError otherwise."""
    p = Path(path)
    if not p.is_absolute():
        raise UsageError(f"cgroup {path}: give the absolute path of a cgroup v2 directory")
    if not p.is_dir():
        raise UsageError(f"cgroup {path}: no such directory")
    p = p.resolve()
    mounts = cgroup2_mounts()
    if not any(p == m or m in p.parents for m in mounts):
        where = ", ".join(str(m) for m in mounts) or "nowhere (mount -t cgroup2 none DIR)"
        raise UsageError(f"cgroup {path}: not on cgroup2; cgroup2 is mounted at {where}")
    return p


def cgroup_id(path: str | os.PathLike[str]) -> int:
    """The kernel's cgroup id: the inode number of the cgroup2 directory."""
    return os.stat(path).st_ino


def endpoint_key(cgid: int) -> int:
    """The u32 conntrack and counters use for a cgroup endpoint (NP_KEY_CGROUP | low 31 bits)."""
    return KEY_CGROUP | (cgid & 0x7FFFFFFF)


def prog_id(prog_fd: int) -> int:
    # struct bpf_prog_info starts: type, id (u32 each)
    return int.from_bytes(obj_info(prog_fd, 8, "prog")[4:8], "little")


def attach(prog_fd: int, path: Path, direction: str) -> int:
    """Attach a program to ``path`` at hook ``direction`` (a key of ATTACH_TYPES); its program id."""
    fn = lib_fn("bpf_prog_attach", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint])
    cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rc = fn(prog_fd, cg, ATTACH_TYPES[direction], BPF_F_ALLOW_MULTI)
    finally:
        os.close(cg)
    if rc < 0:
        e = errno_of(rc)
        if e in (errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            raise NotSupported("cgroup_skb", f"attaching to {path} failed ({errno.errorcode.get(e, e)}): "
                                             "needs a cgroup2 directory and cgroup BPF in the kernel")
        raise BpfError(f"bpf_prog_attach({path}, {direction})", e)
    return prog_id(prog_fd)


def detach(path: str | os.PathLike[str], direction: str, pid: int) -> bool:
    """Detach program ``pid`` from a cgroup; False when the cgroup or the program is gone."""
    get = lib_fn("bpf_prog_get_fd_by_id", ctypes.c_int, [ctypes.c_uint32])
    det = lib_fn("bpf_prog_detach2", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int])
    fd = get(pid)
    if fd < 0:
        return False
    try:
        try:
            cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False  # the cgroup was removed: its programs went with it
        try:
            return det(fd, cg, ATTACH_TYPES[direction]) == 0
        finally:
            os.close(cg)
    finally:
        os.close(fd)


def attached(path: str | os.PathLike[str], direction: str) -> list[int]:
    """Program ids attached to a cgroup for ``direction`` (``BPF_PROG_QUERY``)."""
    fn = lib_fn("bpf_prog_query", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_uint32,
                                              ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                              ctypes.POINTER(ctypes.c_uint32)])
    ids = (ctypes.c_uint32 * 64)()
    cnt = ctypes.c_uint32(64)
    flags = ctypes.c_uint32(0)
    cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rc = fn(cg, ATTACH_TYPES[direction], 0, ctypes.byref(flags), ids, ctypes.byref(cnt))
    finally:
        os.close(cg)
    if rc < 0:
        raise BpfError(f"bpf_prog_query({path})", errno_of(rc))
    return [int(ids[i]) for i in range(cnt.value)]


def move_pid(path: str | os.PathLike[str], pid: int) -> None:
    """Move a process into a cgroup v2 directory (``cgroup.procs``)."""
    (Path(path) / "cgroup.procs").write_text(f"{pid}\n")
