"""Value types of Falco fields, shared by fields, compiler and outputs.

Names follow libsinsp's ``ppm_param_type`` (``PT_CHARBUF`` -> ``FieldType.CHARBUF``...), so a
reader can hold them against Falco's field tables.
"""

from __future__ import annotations

import enum


class FieldType(enum.Enum):
    CHARBUF = "string"  # PT_CHARBUF, PT_FSPATH, PT_FSRELPATH
    BYTEBUF = "bytes"  # PT_BYTEBUF
    INT64 = "int64"  # PT_INT64, PT_ERRNO, PT_FD, PT_PID
    UINT64 = "uint64"  # PT_UINT64
    INT32 = "int32"
    UINT32 = "uint32"  # PT_UINT32, PT_UID, PT_GID
    UINT16 = "uint16"
    PORT = "port"  # PT_PORT
    BOOL = "bool"  # PT_BOOL
    IPADDR = "ipaddr"  # PT_IPADDR, PT_IPV4ADDR, PT_IPV6ADDR
    IPNET = "ipnet"  # PT_IPNET: a field compared against CIDRs
    ABSTIME = "abstime"  # PT_ABSTIME: ns since the epoch
    RELTIME = "reltime"  # PT_RELTIME: ns
    DOUBLE = "double"

    @property
    def numeric(self) -> bool:
        return self in _NUMERIC


_NUMERIC = frozenset(
    {
        FieldType.INT64,
        FieldType.UINT64,
        FieldType.INT32,
        FieldType.UINT32,
        FieldType.UINT16,
        FieldType.PORT,
        FieldType.ABSTIME,
        FieldType.RELTIME,
        FieldType.DOUBLE,
    }
)


class Multi(tuple):
    """A field with several values at once (``fd.ip`` is both ends of a socket).

    A comparison is true when it is true for any element; an empty ``Multi`` is ``<NA>``.
    """

    __slots__ = ()
