"""``andon events`` (live or ``-r CAPTURE``) and ``andon capture -w FILE``."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Any, TextIO

from ..app.stream import Counts, EventFilter, iter_types, make_state, run_capture, run_live, run_replay
from ..errors import UsageError
from ..events.format import event_args, result
from ..events.schema import Event, EventType
from ..events.syscalls import ALL_TYPES, expand_types


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "events",
        help="stream decoded kernel events (live, or from a capture with -r)",
        description="Stream this machine's process, file and network events, decoded, one per line.",
    )
    _filters(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text lines or JSON lines")
    p.add_argument("-r", "--read", metavar="FILE", help="read events from a capture file instead of the kernel")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events shown")
    p.add_argument("--ring-mb", type=int, default=64, help="ring buffer size in MiB (default 64)")
    p.add_argument("--no-state", action="store_true", help="skip process/fd tracking (no parent or fd names)")
    p.set_defaults(func=cmd_events)

    c = sub.add_parser(
        "capture",
        help="write the live event stream to a capture file",
        description="Record kernel events to FILE; read them back with `andon events -r FILE`.",
    )
    c.add_argument("-w", "--write", metavar="FILE", required=True, help="capture file to write")
    c.add_argument("-t", "--type", action="append", default=[], metavar="TYPES",
                   help="event types to record (comma separated; default: all)")
    c.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    c.add_argument("--count", type=int, metavar="N", help="stop after N events")
    c.add_argument("--ring-mb", type=int, default=64, help="ring buffer size in MiB (default 64)")
    c.set_defaults(func=cmd_capture)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--type", action="append", default=[], metavar="TYPES",
                   help="event types, comma separated: syscall names (openat, connect...), "
                        "or exec, open, fork, exit, file, net, process, fd, all (default: all)")
    p.add_argument("-p", "--pid", action="append", default=[], metavar="PID", help="only these pids (comma separated)")
    p.add_argument("-c", "--comm", action="append", default=[], metavar="NAME", help="only these process names")
    p.add_argument("--container", action="append", default=[], metavar="ID",
                   help="only this container (id prefix or name), or 'host'")


def make_filter(args: argparse.Namespace) -> EventFilter:
    words = list(iter_types(args.type))
    types = frozenset(expand_types(words)) if words else frozenset(ALL_TYPES)
    try:
        pids = frozenset(int(x) for x in iter_types(args.pid))
    except ValueError as e:
        raise UsageError(f"--pid takes numbers: {e}") from None
    return EventFilter(
        types=types,
        pids=pids,
        comms=frozenset(iter_types(args.comm)),
        containers=frozenset(iter_types(args.container)),
    )


# -- rendering -----------------------------------------------------------------------------


def _iso(ts: int) -> str:
    sec, ns = divmod(ts, 1_000_000_000)
    return _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def _clock(ts: int) -> str:
    sec, ns = divmod(ts, 1_000_000_000)
    return _dt.datetime.fromtimestamp(sec).strftime("%H:%M:%S") + f".{ns // 1000:06d}"


def _container(ctx: Any) -> str:
    cid = getattr(ctx, "container_id", None)
    if not cid or cid == "host":
        return "host"
    name = getattr(ctx, "container_name", None)
    return f"{cid[:12]}({name})" if name else cid[:12]


def event_json(ev: Event, proc: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "time": _iso(ev.ts),
        "ts": ev.ts,
        "type": ev.name,
        "pid": ev.pid,
        "tid": ev.tid,
        "comm": ev.comm,
        "uid": ev.uid,
        "gid": ev.gid,
    }
    if ev.type == EventType.SYSCALL:
        d["ret"] = ev.ret
    d["res"] = result(ev)
    d["args"] = event_args(ev)
    if ev.sock is not None:
        d["sock"] = ev.sock.to_dict()
    if proc is not None:
        d["proc"] = _proc_json(proc)
    if ev.truncated:
        d["truncated"] = True
    return d


def _proc_json(proc: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("ppid", "exepath", "cmdline", "cwd", "user", "container_id", "container_name", "container_image",
                "fd_name"):
        v = getattr(proc, key, None)
        if callable(v):
            v = v()
        if v is not None and v != "":
            out[key] = v
    return out


def _fmt_val(v: Any) -> str:
    if isinstance(v, list):
        return "[" + " ".join(str(x) for x in v) + "]"
    if isinstance(v, str) and (" " in v or not v):
        return json.dumps(v)
    return str(v)


def event_text(ev: Event, proc: Any) -> str:
    args = event_args(ev)
    fd = getattr(proc, "fd", None)
    if fd is not None and fd.name:
        # sysdig's habit: fd=3(<f>/etc/passwd), the fd's type char then its name
        for key in ("fd", "oldfd"):
            if key in args:
                args[key] = f"{args[key]}(<{fd.typechar}>{fd.name})"
                break
    parts = [f"{k}={_fmt_val(v)}" for k, v in args.items()]
    res = ""
    if ev.type == EventType.SYSCALL:
        res = f" res={ev.ret}" if ev.ret >= 0 else f" res={result(ev)}"
    who = f"{ev.comm}[{ev.pid}" + (f":{ev.tid}" if ev.tid != ev.pid else "") + "]"
    extra = ""
    trunc = " (truncated)" if ev.truncated else ""
    return f"{_clock(ev.ts)} {ev.name:<12} {who:<24} uid={ev.uid} {_container(proc)}{res}{extra} {' '.join(parts)}{trunc}"


class Printer:
    def __init__(self, output: str, out: TextIO = sys.stdout) -> None:
        self.output = output
        self.out = out

    def __call__(self, ev: Event, proc: Any) -> None:
        if self.output == "json":
            self.out.write(json.dumps(event_json(ev, proc), default=str) + "\n")
        else:
            self.out.write(event_text(ev, proc) + "\n")


def closing_line(c: Counts, written_to: str | None = None) -> str:
    rate = c.seen / c.elapsed if c.elapsed > 0 else 0.0
    if written_to:
        line = f"andon: {c.seen} events written to {written_to}, {c.lost} lost"
    else:
        line = f"andon: {c.shown} events shown, {c.seen} seen, {c.lost} lost"
    if c.truncated:
        line += f", {c.truncated} truncated"
    if c.read_errors:
        line += f", {c.read_errors} unreadable arguments"
    return line + f" in {c.elapsed:.1f}s ({rate:,.0f}/s)"


def cmd_events(args: argparse.Namespace) -> int:
    flt = make_filter(args)
    printer = Printer(args.output)
    if args.read:
        factory = None if args.no_state else (lambda snap: make_state(snapshot=snap, offline=True))
        counts, reader = run_replay(args.read, flt, printer, count=args.count, state_factory=factory)
        sys.stdout.flush()
        print(closing_line(counts), file=sys.stderr)
        if reader.truncated:
            print(f"andon: {args.read} ends inside a record (cut short); {reader.records} whole records read",
                  file=sys.stderr)
        return 0
    state = None if args.no_state else make_state()
    try:
        counts = run_live(flt, printer, duration=args.duration, count=args.count, ring_bytes=args.ring_mb << 20,
                          state=state)
    finally:
        if state is not None:
            state.close()
    sys.stdout.flush()
    print(closing_line(counts), file=sys.stderr)
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    words = list(iter_types(args.type))
    types = expand_types(words) if words else set(ALL_TYPES)
    tty = sys.stderr.isatty()

    def progress(c: Counts) -> None:
        if tty:
            print(f"\randon: capturing to {args.write}: {c.seen:,} events, {c.lost} lost, {c.elapsed:.0f}s",
                  end="", file=sys.stderr, flush=True)

    counts = run_capture(args.write, types, duration=args.duration, count=args.count,
                         ring_bytes=args.ring_mb << 20, progress=progress)
    if tty:
        print(file=sys.stderr)
    print(closing_line(counts, args.write), file=sys.stderr)
    return 0
