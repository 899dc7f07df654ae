"""BPF objects, programs, maps and links, each with one owner and an explicit close().

:class:`BpfObject` wraps one compiled ``*.bpf.o``: choose which programs load, size maps,
share maps with an object loaded earlier, write load-time settings, load, attach. Closing
it destroys its links and closes the object, which releases every program and map fd we
made; nothing of ours stays in the kernel afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import BpfError, NotSupported, PermissionDenied, VerifierError
from . import libbpf as lb


class Map:
    """A map of a loaded object. Keys and values are bytes of the map's exact sizes."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = lb.lib().bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        return lb.lib().bpf_map__fd(self._ptr)

    @property
    def value_size(self) -> int:
        return lb.lib().bpf_map__value_size(self._ptr)

    @property
    def max_entries(self) -> int:
        return lb.lib().bpf_map__max_entries(self._ptr)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        rc = lb.lib().bpf_map_update_elem(self.fd, k, v, flags)
        if rc < 0:
            raise BpfError(f"update of map {self.name}", -rc if rc != -1 else ctypes.get_errno())

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value_size)
        rc = lb.lib().bpf_map_lookup_elem(self.fd, k, v)
        if rc < 0:
            err = -rc if rc != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(f"lookup in map {self.name}", err)
        return v.raw

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False when it was not there."""
        k = ctypes.create_string_buffer(key, len(key))
        rc = lb.lib().bpf_map_delete_elem(self.fd, k)
        if rc < 0:
            err = -rc if rc != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise BpfError(f"delete from map {self.name}", err)
        return True

    def keys(self, key_size: int) -> Iterator[bytes]:
        """Every key, in the kernel's order (a snapshot-free walk: concurrent changes may
        show or hide a key)."""
        nxt = ctypes.create_string_buffer(key_size)
        rc = lb.lib().bpf_map_get_next_key(self.fd, None, nxt)
        while rc == 0:
            cur = nxt.raw
            yield cur
            prev = ctypes.create_string_buffer(cur, key_size)
            rc = lb.lib().bpf_map_get_next_key(self.fd, prev, nxt)


class Program:
    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = lb.lib().bpf_program__name(ptr).decode()
        self.section: str = lb.lib().bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return lb.lib().bpf_program__fd(self._ptr)

    @property
    def autoload(self) -> bool:
        return bool(lb.lib().bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, on: bool) -> None:
        lb.check_rc(lb.lib().bpf_program__set_autoload(self._ptr, on), f"autoload of {self.name}")

    def attach(self) -> Link:
        """Attach as the section name says (tracepoint, raw_tp, tp_btf, ...)."""
        ptr = lb.lib().bpf_program__attach(self._ptr)
        return self._obj._own_link(ptr, f"attach {self.name} ({self.section})")

    def attach_uprobe(self, binary: str, func_name: str | None, retprobe: bool = False, pid: int = -1,
                      offset: int = 0, cookie: int = 0) -> Link:
        """Attach at the entry (or return) of ``func_name`` in the ELF file ``binary``; libbpf
        finds the symbol's file offset. With ``func_name`` None, at the file offset ``offset``
        (a function the file does not name, or an instruction inside one). pid -1: every
        process that maps the file, now or later (the probe is on the file's inode).
        ``cookie``: what bpf_get_attach_cookie() gives the program at this probe."""
        opts = lb.bpf_uprobe_opts(sz=ctypes.sizeof(lb.bpf_uprobe_opts), retprobe=retprobe, bpf_cookie=cookie,
                                  func_name=func_name.encode() if func_name else None)
        where = func_name or hex(offset)
        ptr = lb.lib().bpf_program__attach_uprobe_opts(self._ptr, pid, binary.encode(), 0 if func_name else offset,
                                                        ctypes.byref(opts))
        return self._obj._own_link(ptr, f"uprobe {self.name} on {binary}:{where}")

    def attach_with(self, fn: str, *args: object) -> Link:
        """Attach with a specific libbpf call, e.g. ``attach_with('bpf_program__attach_xdp', ifindex)``."""
        ptr = getattr(lb.lib(), fn)(self._ptr, *args)
        return self._obj._own_link(ptr, f"{fn} {self.name}")


class Link:
    def __init__(self, ptr: int, what: str) -> None:
        self._ptr: int | None = ptr
        self.what = what

    def destroy(self) -> None:
        if self._ptr:
            lb.lib().bpf_link__destroy(self._ptr)
            self._ptr = None


_FAILED_PROG = re.compile(r"prog '([^']+)': failed to load")


class BpfObject:
    """One compiled BPF object file, opened on construction, loaded by :meth:`load`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"BPF object {self.path} not found: run `make bpf` first")
        self._links: list[Link] = []
        self._loaded = False
        lib = lb.lib()
        ptr = lib.bpf_object__open_file(str(self.path).encode(), None)
        self._ptr: int | None = lb.check_ptr(ptr, f"open {self.path}")

    # -- inspection ------------------------------------------------------------------
    def programs(self) -> Iterator[Program]:
        lib = lb.lib()
        p = lib.bpf_object__next_program(self._ptr, None)
        while p:
            yield Program(self, p)
            p = lib.bpf_object__next_program(self._ptr, p)

    def maps(self) -> Iterator[Map]:
        lib = lb.lib()
        m = lib.bpf_object__next_map(self._ptr, None)
        while m:
            yield Map(self, m)
            m = lib.bpf_object__next_map(self._ptr, m)

    def program(self, name: str) -> Program:
        ptr = lb.lib().bpf_object__find_program_by_name(self._ptr, name.encode())
        if not ptr:
            raise KeyError(f"no program {name!r} in {self.path.name}")
        return Program(self, ptr)

    def map(self, name: str) -> Map:
        ptr = lb.lib().bpf_object__find_map_by_name(self._ptr, name.encode())
        if not ptr:
            raise KeyError(f"no map {name!r} in {self.path.name}")
        return Map(self, ptr)

    # -- before load -----------------------------------------------------------------
    def set_max_entries(self, name: str, n: int) -> None:
        lb.check_rc(lb.lib().bpf_map__set_max_entries(self.map(name)._ptr, n), f"resize map {name}")

    def reuse_map(self, name: str, fd: int) -> None:
        """Use an existing map (from an object loaded earlier) instead of creating one."""
        lb.check_rc(lb.lib().bpf_map__reuse_fd(self.map(name)._ptr, fd), f"reuse map {name}")

    def set_rodata(self, data: bytes, offset: int = 0) -> None:
        """Write load-time settings (``const volatile`` globals) into .rodata."""
        rodata = next((m for m in self.maps() if m.name.endswith(".rodata")), None)
        if rodata is None:
            raise KeyError(f"{self.path.name} has no .rodata")
        size = lb.c_size_t()
        ptr = lb.lib().bpf_map__initial_value(rodata._ptr, ctypes.byref(size))
        lb.check_ptr(ptr, "initial value of .rodata")
        if offset + len(data) > size.value:
            raise ValueError(f".rodata is {size.value} bytes; cannot write {len(data)} at {offset}")
        ctypes.memmove(ptr + offset, data, len(data))

    # -- load and attach -------------------------------------------------------------
    def load(self) -> None:
        with lb.capture_messages() as lines:
            rc = lb.lib().bpf_object__load(self._ptr)
        if rc == 0:
            self._loaded = True
            return
        err = -rc if rc < -1 else (ctypes.get_errno() or errno.EINVAL)
        text = "\n".join(lines)
        if err == errno.EPERM and os.geteuid() != 0:
            raise PermissionDenied(f"loading {self.path.name} needs root (or CAP_BPF and CAP_PERFMON)")
        failed = _FAILED_PROG.search(text)
        if "-- BEGIN PROG LOAD LOG --" in text and failed:
            body = text.split("-- BEGIN PROG LOAD LOG --", 1)[1].split("-- END PROG LOAD LOG --", 1)[0]
            raise VerifierError(failed.group(1), err, body)
        if err in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524, 524):
            raise NotSupported(f"loading {self.path.name}", text.strip().splitlines()[-1] if text.strip() else os.strerror(err))
        raise BpfError(f"load {self.path.name}" + (f" ({text.strip().splitlines()[-1]})" if text.strip() else ""), err)

    def attach_all(self) -> list[Link]:
        """Attach every loaded program by its section name."""
        return [p.attach() for p in self.programs() if p.autoload]

    def _own_link(self, ptr: int | None, what: str) -> Link:
        if not ptr:
            err = ctypes.get_errno() or errno.EINVAL
            if err in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL, 524):
                raise NotSupported(what, os.strerror(err))
            raise BpfError(what, err)
        link = Link(ptr, what)
        self._links.append(link)
        return link

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        for link in reversed(self._links):
            link.destroy()
        self._links.clear()
        if self._ptr:
            lb.lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
