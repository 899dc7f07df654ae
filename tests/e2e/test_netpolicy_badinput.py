"""Bad policy input through ``andon policy apply`` (as root): malformed YAML, unknown fields, a
wrong kind, a file with one good and one bad document, a good file next to a bad one, a file
that cannot be read. Each exits 1 with the problem's code, and the kernel's policy is
byte-for-byte what it was (every pinned policy map dumped before and after) and traffic
behaves as before. Warnings do not stop an apply: a selector that selects nothing (Cilium
accepts such a policy too: it waits for matching endpoints), and an allow that a deny overrides
(deny wins, in the kernel too).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from corpus import CORPUS  # noqa: E402
from nplab import Lab  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TC, bpffs)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/policy.bpf.o").exists(), reason="make bpf first"),
]

RUNNING = CORPUS / "cilium-policies" / "l4__l3_l4_combined.yaml"  # backend takes frontend on 80/TCP
POLICY_MAPS = ("np_allow0", "np_allow1", "np_deny0", "np_deny1", "np_gen", "np_endpoints", "np_ipcache")

HEAD = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n"
OTHER_TO_BACKEND_80 = HEAD.format(name="other-80") + """\
spec:
  endpointSelector: {matchLabels: {role: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: other}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""
BAD = {
    # file name -> (text, error codes in order, a piece of the message)
    "malformed.yaml": (HEAD.format(name="m") + "spec:\n  endpointSelector: {matchLabels: {role: backend}\n  ingress: [\n",
                       ["NP_YAML_PARSE"], "malformed.yaml:"),
    "unknown.yaml": (OTHER_TO_BACKEND_80.replace("  ingress:", "  ingres:"), ["NP_UNKNOWN_FIELD"], "did you mean 'ingress'"),
    "kind.yaml": (OTHER_TO_BACKEND_80.replace("kind: CiliumNetworkPolicy", "kind: NetworkPolicy"),
                  ["NP_INVALID_VALUE"], "kind 'NetworkPolicy' is not a Cilium network policy"),
    "half.yaml": (OTHER_TO_BACKEND_80 + "---\n" + OTHER_TO_BACKEND_80.replace("other-80", "broken").replace('"80"', '"99999"'),
                  ["NP_INVALID_VALUE"], "port '99999' is not a number 0-65535"),
    "selector.yaml": (OTHER_TO_BACKEND_80.replace("{role: other}", "{role: other, tier: [x]}"), ["NP_SCHEMA"], "tier"),
    "binary.yaml": ("\udcff\udcfe not utf-8", ["NP_FILE_READ"], "cannot read the file"),
}


def snapshot(lab: Lab) -> dict[str, list]:
    """Every entry of every pinned policy map, keys and values as bytes (bpftool's dump)."""
    out = {}
    for name in POLICY_MAPS:
        r = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(lab.pin_dir / name)],
                           capture_output=True, text=True, timeout=30, check=True)
        out[name] = sorted((e["key"], e["value"]) for e in json.loads(r.stdout))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("npbad")
    lab = Lab(tmp / "state", Path("/sys/fs/bpf") / f"andon-bad-{os.getpid()}")
    try:
        for name, labels in (("A", "role=backend"), ("B", "role=frontend"), ("C", "role=other")):
            lab.add_v4(name, ports=[80, 81])
            lab.endpoint(name, [labels])
        lab.andon("policy", "apply", str(RUNNING))
        yield lab
    finally:
        lab.close()


def traffic(lab: Lab) -> tuple[bool, bool, bool]:
    return (lab.reach("B", "A", "TCP", 80, expect_pass=True), lab.reach("B", "A", "TCP", 81),
            lab.reach("C", "A", "TCP", 80))


def test_bad_files_change_nothing(lab, tmp_path):
    before = snapshot(lab)
    assert before["np_allow0"] or before["np_allow1"], "the running policy has entries"
    assert traffic(lab) == (True, False, False)
    for fname, (text, codes, piece) in BAD.items():
        path = tmp_path / fname
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        # TRIGGER
        r = lab.andon("policy", "apply", str(path), check=False)
        # ASSERT: exit 1, the codes, and nothing changed in the kernel or the state
        assert r.returncode == 1, f"{fname}: {r.stdout}"
        got = re.findall(r" error (NP_[A-Z_]+):", r.stdout)
        assert got == codes, f"{fname}: {r.stdout}"
        assert piece in r.stdout, f"{fname}: {r.stdout}"
        assert r.stdout.rstrip().endswith("andon: nothing applied, the running policy is unchanged")
        assert snapshot(lab) == before, f"{fname} changed the kernel's policy"
        assert [p["name"] for p in json.loads(lab.andon("policy", "list", "-o", "json").stdout)] == ["l4-rule"]
    # a good file with a bad one in one command: neither is applied
    good = tmp_path / "good.yaml"
    good.write_text(OTHER_TO_BACKEND_80)
    r = lab.andon("policy", "apply", str(good), str(tmp_path / "half.yaml"), check=False)
    assert r.returncode == 1 and snapshot(lab) == before
    r = lab.andon("policy", "apply", str(tmp_path / "missing.yaml"), check=False)
    assert r.returncode == 1 and "NP_FILE_READ" in r.stdout and snapshot(lab) == before
    # ASSERT: traffic as before
    assert traffic(lab) == (True, False, False)


def test_selector_that_selects_nothing_is_a_warning(lab, tmp_path):
    path = tmp_path / "nobody.yaml"
    path.write_text(OTHER_TO_BACKEND_80.replace("{role: backend}", "{role: nobody}").replace("other-80", "nobody"))
    r = lab.andon("policy", "apply", str(path))
    assert "warning NP_SELECTS_NOTHING: endpointSelector {any:role in (nobody)} of nobody rule 0 selects no endpoint" \
        in r.stdout
    assert traffic(lab) == (True, False, False)
    lab.andon("policy", "delete", "nobody")


def test_conflicting_allow_and_deny_deny_wins(lab, tmp_path):
    path = tmp_path / "conflict.yaml"
    path.write_text(OTHER_TO_BACKEND_80 + """\
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: other}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""")
    r = lab.andon("policy", "apply", str(path))
    assert "warning NP_CONFLICT" in r.stdout and "deny wins" in r.stdout
    assert traffic(lab) == (True, False, False)  # other -> backend:80 allowed and denied: dropped
    lab.andon("policy", "delete", "other-80")
    # without the deny the same allow lets it through: the deny was what dropped it
    path.write_text(OTHER_TO_BACKEND_80)
    lab.andon("policy", "apply", str(path))
    assert traffic(lab) == (True, False, True)
    lab.andon("policy", "delete", "other-80")
