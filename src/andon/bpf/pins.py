"""bpffs pins and object info: what every pinned datapath (network policy, XDP firewall,
their flow readers) does alike.

``obj_get``/``obj_pin`` open and make pins; ``obj_info`` reads the head of a program's,
map's or link's ``bpf_*_info``; ``reuse_pinned_maps``/``pin_maps`` let a loaded
:class:`~andon.bpf.object.BpfObject` take over the maps an earlier process pinned (libbpf
reuses their fds before load) and pin the ones it created itself.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BpfError, NotSupported
from . import libbpf as lb


def lib_fn(name: str, restype: Any, argtypes: list[Any]) -> Any:
    """libbpf's ``name`` with its types set; NotSupported when this libbpf lacks it."""
    fn = getattr(lb.lib(), name, None)
    if fn is None:
        raise NotSupported(name, "this libbpf lacks it (1.0 or newer has it)")
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def errno_of(rc: int) -> int:
    """The errno of a failed libbpf call: -1 and errno, or a negative errno returned."""
    return ctypes.get_errno() if rc == -1 else -rc


def obj_get(path: str | Path) -> int:
    """A new fd on the object pinned at ``path`` (BpfError, an OSError, when it is not there)."""
    fd = lib_fn("bpf_obj_get", ctypes.c_int, [ctypes.c_char_p])(str(path).encode())
    if fd < 0:
        raise BpfError(f"open pin {path}", errno_of(fd))
    return fd


def obj_pin(fd: int, path: str | Path) -> None:
    rc = lib_fn("bpf_obj_pin", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p])(fd, str(path).encode())
    if rc < 0:
        raise BpfError(f"pin at {path}", errno_of(rc))


def obj_info(fd: int, size: int = 256, what: str = "object") -> bytes:
    """The first ``size`` bytes of the ``bpf_prog_info``/``bpf_map_info``/``bpf_link_info`` of
    ``fd`` (the kernel fills what it has, the rest stays zero)."""
    buf = ctypes.create_string_buffer(size)
    n = ctypes.c_uint32(size)
    rc = lib_fn("bpf_obj_get_info_by_fd", ctypes.c_int,
             [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)])(fd, buf, ctypes.byref(n))
    if rc < 0:
        raise BpfError(f"bpf_obj_get_info_by_fd({what})", errno_of(rc))
    return buf.raw


def reuse_pinned_maps(obj: Any, pin_dir: Path, names: Iterable[str]) -> set[str]:
    """Before load: every map of ``names`` pinned in ``pin_dir`` is reused by ``obj``; returns
    the names reused."""
    reused = set()
    for name in names:
        path = pin_dir / name
        if path.exists():
            fd = obj_get(path)
            try:
                obj.reuse_map(name, fd)  # libbpf dups the fd
            finally:
                os.close(fd)
            reused.add(name)
    return reused


def pin_maps(obj: Any, pin_dir: Path, names: Iterable[str], reused: set[str]) -> None:
    """After load: pin every map of ``names`` that was not reused."""
    pin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name not in reused:
            obj_pin(obj.map(name).fd, pin_dir / name)
