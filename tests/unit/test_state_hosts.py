"""fd.*ip.name answers from /etc/hosts: parsing, many names per address, changes seen."""

from __future__ import annotations

import os

from andon.state.hosts import HostNames, parse_hosts


def test_parse_hosts_lines_comments_and_aliases():
    text = (
        "127.0.0.1 localhost\n"
        "# a comment line\n"
        "10.96.0.1   kubernetes.default.svc.cluster.local kubernetes.default  # k8s\n"
        "10.96.0.1 kubernetes\n"
        "::1 localhost ip6-localhost\n"
        "bogus\n"
    )
    h = parse_hosts(text)
    assert h["10.96.0.1"] == ("kubernetes.default.svc.cluster.local", "kubernetes.default", "kubernetes")
    assert h["::1"] == ("localhost", "ip6-localhost")
    assert "bogus" not in h and len(h) == 3


def test_changes_to_the_file_are_seen(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("192.0.2.7 old.example\n")
    names = HostNames(str(f), recheck_s=0.0)
    assert names.get("192.0.2.7") == ("old.example",)
    f.write_text("192.0.2.7 new.example\n")
    os.utime(f, ns=(1, 2_000_000_000_000_000_000))  # a different mtime, whatever the clock
    assert names.get("192.0.2.7") == ("new.example",)
    assert names.get("192.0.2.8") is None
    names.learn("192.0.2.8", "seen.example")
    assert names.get("192.0.2.8") == ("seen.example",)


def test_sip_name_in_a_rule_matches_any_name_of_the_address(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("192.0.2.7 api.internal kubernetes.default\n")

    class Ctx:
        pass

    ctx = Ctx()
    ctx.tracker = type("T", (), {"dns_names": HostNames(str(f), recheck_s=0.0)})()
    # the extractor needs an fd; drive the name lookup it ends in directly (the e2e test
    # of "Contact K8S API Server From Container" runs the whole path)
    from andon.rules.fields import _dns_name

    assert _dns_name(ctx, "192.0.2.7") == ("api.internal", "kubernetes.default")
    assert _dns_name(ctx, "192.0.2.9") is None
