"""How often a container's entrypoint exec already has its runtime metadata.

Runs ``podman run --privileged --name <unique> IMAGE true`` N times under the live sensor
and, at each container's first exec with vpid 1 (the entrypoint), asks the registry
whether it knows the container's name, image and privileged flag:

- ``inspect on first sight``: the lookup starts when the kernel shows the container's cgroup;
- ``+ runtime events``: the registry also follows ``podman events`` and inspects on create;
- ``+ wait``: as the agent does for an alert that needs them, waits up to 0.5 s for a
  lookup under way.

Run as root: ``.venv/bin/python bench/container_first_exec.py [N]``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time

from andon.app.enrich import CONTAINER_WAIT, Tracker
from andon.events.live import LiveSource, SensorSettings
from andon.events.schema import EventType

IMAGE = os.environ.get("ANDON_TEST_IMAGE", "localhost/andon-test:bookworm")
RUN = ["podman", "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
       "--network", "none", "--privileged"]  # fmt: skip


def full(info, name: str) -> bool:
    return info is not None and info.resolved and info.name == name and info.privileged is True


def trial(n: int, watch: bool, rm: bool) -> tuple[int, int, int]:
    src = LiveSource(SensorSettings(types=frozenset({"execve", "clone", "procexit"})))
    src.start()
    tr = Tracker(boot_offset=src.boot_offset)
    if not watch:
        tr.containers.settings = type(tr.containers.settings)(watch_events=False)
    tr.seed()
    time.sleep(0.5)
    names = [f"andon-b-{secrets.token_hex(4)}" for _ in range(n)]
    at_exec = after_wait = seen = 0
    stop = threading.Event()

    def starter() -> None:
        for name in names:
            argv = RUN if rm else [a for a in RUN if a != "--rm"]
            subprocess.run([*argv, "--name", name, IMAGE, "true"], capture_output=True)
            time.sleep(0.3)
        time.sleep(1)
        stop.set()

    th = threading.Thread(target=starter)
    th.start()
    want = set(names)
    while not stop.is_set():
        for ev in src.read(0.05):
            ctx = tr(ev)
            p = ctx.proc
            if ev.type != EventType.EXEC or p is None or not p.container or p.vpid != 1 or ev.exec.argv != ["true"]:
                continue
            seen += 1
            info = tr.containers.get(p.container)
            # the name is not known when it is not resolved: match on the event stream's
            name = info.name if info is not None and info.resolved else None
            ok_now = name in want and full(info, name)
            at_exec += ok_now
            if not ok_now:
                tr.await_container(p.container, CONTAINER_WAIT)
                info = tr.containers.get(p.container)
            after_wait += info is not None and info.resolved and info.name in want and info.privileged is True
    th.join()
    st = dict(tr.containers.stats)
    tr.close()
    src.close()
    if not rm:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *names], capture_output=True)
    print(f"    stats {st}", file=sys.stderr)
    return seen, at_exec, after_wait


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for rm in (False, True):
        for watch in (False, True):
            seen, now, waited = trial(n, watch, rm)
            label = ("+ runtime events" if watch else "inspect on first sight") + (" (--rm)" if rm else "")
            print(f"{label:34} entrypoint execs {seen:3}  full metadata at the exec {now:3}/{n}"
                  f"  after <= {CONTAINER_WAIT}s wait {waited:3}/{n}")


if __name__ == "__main__":
    main()
