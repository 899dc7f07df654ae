"""ctypes binding to the system's libbpf (Debian's libbpf1, 1.x ABI).

Only the calls andon uses are declared. Every pointer-returning call is checked by the
caller through :func:`check_ptr`; libbpf 1.x returns NULL and sets errno on failure.
libbpf's own messages (including verifier logs when no log buffer was set) go to the
``andon.libbpf`` logger instead of stderr.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

from ..errors import BpfError, NotSupported

log = logging.getLogger("andon.libbpf")

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_size_t = ctypes.c_size_t
c_bool = ctypes.c_bool
c_uint32 = ctypes.c_uint32
c_uint64 = ctypes.c_uint64


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf") or "", "libbpf.so.0"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise NotSupported("libbpf", "install the libbpf1 package (make setup does it)")


_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


class bpf_tc_hook(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint32),
        ("_pad", c_uint32 * 1),
    ]


class bpf_tc_opts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
        ("_pad", c_uint32 * 1),
    ]


class bpf_xdp_attach_opts(ctypes.Structure):
    """libbpf.h struct bpf_xdp_attach_opts (sz, old_prog_fd, padded to 8)."""

    _fields_ = [
        ("sz", c_size_t),
        ("old_prog_fd", c_int),
        ("_pad", c_uint32 * 1),
    ]


class bpf_uprobe_opts(ctypes.Structure):
    """libbpf.h struct bpf_uprobe_opts (1.0+: func_name is its last field)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


# int (*)(enum libbpf_print_level, const char *fmt, va_list ap): on x86_64 and arm64 a
# va_list argument arrives as a pointer, which vsnprintf accepts as it is.
PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int


_captured: list[list[str]] = []


class capture_messages:
    """Collect libbpf's messages while a load runs, to find the verifier log in them."""

    def __enter__(self) -> list[str]:
        self.lines: list[str] = []
        _captured.append(self.lines)
        return self.lines

    def __exit__(self, *exc: object) -> None:
        _captured.remove(self.lines)


@PRINT_FN
def _print(level: int, fmt: bytes, ap: int) -> int:
    buf = ctypes.create_string_buffer(1 << 16)
    _libc.vsnprintf(buf, len(buf), fmt, ap)
    msg = buf.value.decode(errors="replace").rstrip()
    for sink in _captured:
        sink.append(msg)
    # libbpf levels: 0 warn, 1 info, 2 debug
    log.log({0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG), "%s", msg)
    return 0


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_get_error": (ctypes.c_long, [c_void_p]),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_raw_tracepoint": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__attach_tracepoint": (c_void_p, [c_void_p, c_char_p, c_char_p]),
    "bpf_program__attach_uprobe": (c_void_p, [c_void_p, c_bool, c_int, c_char_p, c_size_t]),
    "bpf_program__attach_perf_event": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_xdp": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_trace": (c_void_p, [c_void_p]),
    "bpf_program__attach_lsm": (c_void_p, [c_void_p]),
    "bpf_program__attach_kprobe": (c_void_p, [c_void_p, c_bool, c_char_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_xdp_attach": (c_int, [c_int, c_int, c_uint32, c_void_p]),
    "bpf_xdp_detach": (c_int, [c_int, c_uint32, c_void_p]),
    "bpf_tc_hook_create": (c_int, [ctypes.POINTER(bpf_tc_hook)]),
    "bpf_tc_hook_destroy": (c_int, [ctypes.POINTER(bpf_tc_hook)]),
    "bpf_tc_attach": (c_int, [ctypes.POINTER(bpf_tc_hook), ctypes.POINTER(bpf_tc_opts)]),
    "bpf_tc_detach": (c_int, [ctypes.POINTER(bpf_tc_hook), ctypes.POINTER(bpf_tc_opts)]),
    "bpf_map__set_autocreate": (c_int, [c_void_p, c_bool]),
    "bpf_program__set_attach_target": (c_int, [c_void_p, c_int, c_char_p]),
    "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t, c_void_p]),
}


def lib() -> ctypes.CDLL:
    """The loaded libbpf, with signatures declared and messages routed to logging."""
    global _lib
    with _lock:
        if _lib is None:
            cdll = _load()
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(cdll, name, None)
                if fn is None:
                    continue  # an older libbpf: the feature using it reports NotSupported
                fn.restype = restype
                fn.argtypes = argtypes
            cdll.libbpf_set_print(_print)
            _lib = cdll
    return _lib


def has(name: str) -> bool:
    return hasattr(lib(), name)


def check_ptr(ptr: int | None, what: str) -> int:
    """Raise BpfError with errno when a libbpf call returned NULL."""
    if not ptr:
        err = ctypes.get_errno() or 22
        raise BpfError(what, err)
    return ptr


def check_rc(rc: int, what: str) -> int:
    if rc < 0:
        raise BpfError(what, -rc if rc != -1 else (ctypes.get_errno() or 1))
    return rc


def close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
