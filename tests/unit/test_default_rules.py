"""andon's default rules file: it loads cleanly, every rule is complete, and each rule is
indexed under exactly the event types it was written for (a rule indexed under fewer types
silently misses events; under more, or under every type, it costs CPU on every event)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = ROOT / "src" / "andon" / "rules" / "data" / "andon_rules.yaml"
from corpus import STABLE_RULES  # noqa: E402

loader = pytest.importorskip("andon.rules.loader", reason="andon.rules.loader has not landed yet")
pytest.importorskip("andon.rules.compiler", reason="andon.rules.compiler (the loader needs it) has not landed yet")

EXEC = {"execve", "execveat"}
OPEN = {"open", "openat", "openat2"}
RENAME = {"rename", "renameat", "renameat2"}

# In file order: most severe first, because with Falco's default `rule_matching: first`
# only the first matching rule alerts for an event.
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "Crypto miner executed": ("CRITICAL", EXEC),
    "Reverse shell": ("CRITICAL", {"dup", "dup2", "dup3"}),
    "Write below binary directory": ("ERROR", OPEN | {"creat"} | RENAME),
    "Write below etc directory": ("WARNING", OPEN | {"creat"}),
    "Privileged container started": ("WARNING", EXEC),
    "Sensitive file read by untrusted program": ("WARNING", OPEN),
    "Log file truncated": ("WARNING", OPEN),
    "Log file deleted": ("WARNING", {"unlink", "unlinkat"} | RENAME),
    "Log clearing command executed": ("WARNING", EXEC),
    "Package manager run in container": ("WARNING", EXEC),
    "Ptrace attach to process": ("WARNING", {"ptrace"}),
    "Kernel module load attempt": ("WARNING", {"init_module", "finit_module"}),
    "Kernel module tool executed": ("NOTICE", EXEC),
    "Unexpected outbound connection from container": ("NOTICE", {"connect"}),
    "Shell spawned in container": ("NOTICE", EXEC),
}


def load(*extra: tuple[str, str], with_stable: bool = False):
    sources = []
    if with_stable:
        sources.append((str(STABLE_RULES), STABLE_RULES.read_text()))
    sources.append((str(DEFAULT_RULES), DEFAULT_RULES.read_text()))
    sources.extend(extra)
    return loader.load_rules(sources)


@pytest.fixture(scope="module")
def result():
    return load()


def test_loads_with_no_errors_and_no_warnings(result) -> None:
    assert [p.render() for p in result.errors] == []
    assert [p.render() for p in result.warnings] == []
    assert result.ruleset is not None


def test_the_rules_are_the_ones_documented(result) -> None:
    assert [r.name for r in result.ruleset.rules] == list(EXPECTED)
    doc = (ROOT / "docs" / "default-rules.md").read_text()
    for name in EXPECTED:
        assert f"### {name}" in doc, f"docs/default-rules.md has no section for {name!r}"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rule_is_complete(result, name: str) -> None:
    rule = next(r for r in result.ruleset.rules if r.name == name)
    priority, _ = EXPECTED[name]
    assert rule.priority.name == priority
    assert rule.enabled
    assert rule.source == "syscall"
    assert len(rule.desc.split()) >= 15
    tags = set(rule.tags)
    assert tags & {"host", "container"}, "where the rule applies"
    assert any(t.startswith("mitre_") for t in tags), "a MITRE tactic"
    assert any(re.fullmatch(r"T\d{4}(\.\d{3})?|TA\d{4}", t) for t in tags), "a MITRE technique id"
    # every alert says who did it and where
    for f in ("%proc.name", "%proc.cmdline", "%container.id", "%container.name", "%container.image.repository"):
        assert f in rule.output, f"{name}: output lacks {f}"
    assert "%user.name" in rule.output
    assert rule.output_fmt is not None


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rule_event_types_are_exactly_the_intended_ones(result, name: str) -> None:
    rule = next(r for r in result.ruleset.rules if r.name == name)
    assert rule.evttypes == frozenset(EXPECTED[name][1])


def test_most_severe_rules_come_first(result) -> None:
    prios = [r.priority for r in result.ruleset.rules]
    assert prios == sorted(prios)  # loader.Priority: a lower value is more severe


def test_ruleset_needs_only_these_event_types(result) -> None:
    want = frozenset().union(*(t for _, t in EXPECTED.values()))
    assert result.ruleset.evttypes() == want


def test_loads_beside_falcos_stable_rules_without_changing_either() -> None:
    if not STABLE_RULES.exists():
        pytest.skip(f"{STABLE_RULES} not present")
    alone = {r.name: r.full_condition for r in load().ruleset.rules}
    both = load(with_stable=True)
    assert [p.render() for p in both.errors] == []
    mine = {r.name: r.full_condition for r in both.ruleset.rules if r.name in EXPECTED}
    assert mine == alone
    stable_alone = loader.load_rules([(str(STABLE_RULES), STABLE_RULES.read_text())])
    theirs = {r.name: r.full_condition for r in both.ruleset.rules if r.name not in EXPECTED}
    assert theirs == {r.name: r.full_condition for r in stable_alone.ruleset.rules}


def test_tuning_by_appending_lists_and_exceptions() -> None:
    """The tuning recipes in docs/default-rules.md load and change what they say."""
    local = textwrap.dedent(
        """\
        - list: andon_allowed_outbound_networks
          items: ['"10.0.0.0/8"']
          override:
            items: append

        - macro: user_known_andon_container_shell_activities
          condition: (container.image.repository = my/debug-image)
          override:
            condition: replace

        - rule: Reverse shell
          exceptions:
            - name: socat_bridge
              fields: [proc.name, fd.sport]
              comps: [=, =]
              values:
                - [socat, 2222]
          override:
            exceptions: append

        - rule: Package manager run in container
          enabled: false
          override:
            enabled: replace
        """
    )
    res = load(("local.yaml", local))
    assert [p.render() for p in res.errors] == []
    assert [p.render() for p in res.warnings] == []
    rules = {r.name: r for r in res.ruleset.rules}
    assert res.ruleset.lists["andon_allowed_outbound_networks"].items[-1] == '"10.0.0.0/8"'
    assert "my/debug-image" in res.ruleset.macros["user_known_andon_container_shell_activities"].condition
    assert "socat" in rules["Reverse shell"].full_condition
    assert not rules["Package manager run in container"].enabled
    assert res.ruleset.evttypes() == load().ruleset.evttypes()  # exec is still needed by others


# --- runc's own execs are not the container's entrypoint ----------------------------------------

CID = "96791fd7685d" + "ab" * 26  # 64 hex
ALL_CAPS = 0x1FFFFFFFFFF
PODMAN_CAPS = 0x800425FB  # podman's default set: CHOWN ... SETFCAP, no SYS_ADMIN
CAP_SYS_ADMIN = 1 << 21


def _exec(ts: int, pid: int, comm: str, filename: str, exepath: str, ppid: int, cgroup: str, caps: int):
    from andon.events.schema import Event, EventType, ExecInfo

    x = ExecInfo(caps, caps, pid * 1000, 0, 0, ppid, 0, 0, 0xFFFFFFFF, 0, pid, 4026531836, 1, 1, 1, 0,
                 exepath=exepath, filename=filename, cwd="/", cgroup=cgroup, cgroup2=cgroup, argv=[filename])
    return Event(ts=ts, type=EventType.EXEC, nr=59, pid=pid, tid=pid, uid=0, gid=0, cgroup_id=1, ret=0,
                 args=(0,) * 6, comm=comm, exec=x)


def _runc_start(entry_caps: int, exe_in_container: bool) -> list:
    """What the event sensor saw of `podman run --runtime runc ... sh` (pids from a real run):
    conmon starts `runc create`, which execs itself as `/proc/self/exe init` (comm `exe`),
    which re-execs from a sealed memfd copy (comm `runc`, no path); then runc's init execs
    the entrypoint. runc moves its init into the container's cgroup while it execs, so the
    `exe` exec is seen in either cgroup, depending on who wins."""
    host, ctr = "/", f"libpod-{CID}"
    ts = 10**18
    return [
        _exec(ts + 1, 889, "conmon", "/usr/bin/conmon", "/usr/bin/conmon", 1, host, ALL_CAPS),
        _exec(ts + 2, 890, "runc", "/usr/sbin/runc", "/usr/sbin/runc", 889, host, ALL_CAPS),
        _exec(ts + 3, 897, "exe", "/proc/self/exe", "/usr/sbin/runc", 890, ctr if exe_in_container else host,
              ALL_CAPS),
        _exec(ts + 4, 897, "runc", "", "/", 890, ctr, ALL_CAPS),
        _exec(ts + 5, 899, "sh", "/usr/bin/sh", "/usr/bin/dash", 889, ctr, entry_caps),
    ]


def _replay_default_rules(tmp_path: Path, evs: list) -> list[tuple[str, dict]]:
    from andon.app.agent import Agent
    from andon.app.config import AgentConfig
    from andon.events.capture import CaptureHeader, CaptureWriter
    from andon.events.schema import encode_record

    cap = tmp_path / "runc.andoncap"
    with CaptureWriter(cap, CaptureHeader(boot_offset=0, types=["all"])) as w:
        for e in evs:
            w.write_record(encode_record(e))
    alerts: list[tuple[str, dict]] = []

    class Collect:
        def emit(self, a) -> None:
            alerts.append((a.rule, dict(a.output_fields)))

        def close(self) -> None:
            pass

    cfg = AgentConfig(rules_files=(DEFAULT_RULES,), watch_config_files=False, rule_matching="all")
    agent = Agent(cfg, Collect(), rules_paths=[DEFAULT_RULES], status=open("/dev/null", "w"))
    agent.run_replay(cap)
    return alerts


@pytest.mark.parametrize("exe_in_container", [False, True], ids=["exe-on-host", "exe-in-container"])
def test_runc_init_is_not_a_privileged_entrypoint(tmp_path: Path, exe_in_container: bool) -> None:
    # runc's init has every capability until it execs the entrypoint: were its `exe` exec taken
    # for the entrypoint, every container would be "privileged" (this flaked in CI once)
    alerts = _replay_default_rules(tmp_path, _runc_start(PODMAN_CAPS, exe_in_container))
    assert [(r, f["proc.name"]) for r, f in alerts if r == "Privileged container started"] == []
    assert [(r, f["proc.name"], f["container.id"]) for r, f in alerts if r == "Shell spawned in container"] == [
        ("Shell spawned in container", "sh", CID[:12])]


def test_a_privileged_entrypoint_still_alerts_after_runc_init(tmp_path: Path) -> None:
    alerts = _replay_default_rules(tmp_path, _runc_start(PODMAN_CAPS | CAP_SYS_ADMIN, True))
    fired = [(f["proc.name"], f["proc.pname"], f["container.id"]) for r, f in alerts
             if r == "Privileged container started"]
    assert fired == [("sh", "conmon", CID[:12])]
