"""andon.yaml: what the agent reads, and the errors a wrong file gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from andon.app.channels import build_channels
from andon.app.config import PACKAGE_RULES, AgentConfig, config_from_dict, find_config, load_config
from andon.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_example_is_the_defaults():
    cfg = load_config(ROOT / "config" / "andon.yaml")
    d = AgentConfig()
    assert cfg.rules_files == d.rules_files == (PACKAGE_RULES,)
    assert (cfg.rule_matching, cfg.priority, cfg.watch_config_files, cfg.ring_buffer_mb) == ("first", "debug", True, 64)
    assert cfg.observe == d.observe
    from andon.store.settings import StoreSettings

    assert cfg.store == StoreSettings()
    ch = build_channels(cfg.outputs)  # every output key in the example is valid
    try:
        assert list(ch.stats()["channels"]) == ["stdout"]
    finally:
        ch.close()


def test_rules_paths_are_relative_to_the_config_and_dirs_expand(tmp_path):
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "b.yaml").write_text("[]")
    (d / "a.yml").write_text("[]")
    (d / "notes.txt").write_text("")
    (tmp_path / "main.yaml").write_text("[]")
    cfg_file = tmp_path / "andon.yaml"
    cfg_file.write_text("rules_files: [main.yaml, rules.d, default]\nrule_matching: all\n")
    cfg = load_config(cfg_file)
    assert cfg.rule_paths() == [tmp_path / "main.yaml", d / "a.yml", d / "b.yaml", PACKAGE_RULES]
    assert cfg.rule_matching == "all"


def test_falcos_singular_rules_file_key_is_accepted(tmp_path):
    cfg = config_from_dict({"rules_file": "/x/y.yaml"}, tmp_path / "c.yaml")
    assert cfg.rules_files == (Path("/x/y.yaml"),)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rule_matching": "most"}, "rule_matching"),
        ({"priority": "loud"}, "priority"),
        ({"rules_files": [1, 2]}, "rules_files"),
        ({"watch_config_files": "yes"}, "watch_config_files"),
        ({"sensor": {"ring_buffer_mb": 0}}, "ring_buffer_mb"),
        ({"sensor": {"ringbuf": 8}}, "unknown key"),
        ({"observe": {"protocols": ["ftp"]}}, "observe.protocols: unknown ftp"),
        ({"observe": {"protocols": "http"}}, "observe.protocols must be a list"),
        ({"observe": {"max_copy_bytes": 20000}}, "observe.max_copy_bytes"),
        ({"observe": {"enabled": "yes"}}, "observe.enabled"),
        ({"observe": {"unix_sockets": 1}}, "observe.unix_sockets must be true or false"),
        ({"observe": {"idle_timeout": "soon"}}, "observe.idle_timeout"),
        ({"observe": {"sample": 1}}, "unknown key.*observe"),
        ({"observe": {"trace_roles": ["server"]}}, "observe.trace_roles must map protocol names"),
        ({"observe": {"trace_roles": {"kafka": "server"}}}, "trace_roles: unknown protocol 'kafka'"),
        ({"observe": {"trace_roles": {"pgsql": []}}}, r"trace_roles.pgsql must be client, server or \[client, server\]"),
        ({"observe": {"trace_roles": {"pgsql": ["both"]}}}, r"trace_roles.pgsql must be .*not \['both'\]"),
        ({"store": {"retention": {"max_age": "forever"}}}, "not a duration"),
        ({"store": {"path": "/x"}}, "store: unknown key"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(UsageError, match=message):
        config_from_dict(data)


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("rules_files: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="mapping"):
        load_config(p)


def test_find_config_order(tmp_path, monkeypatch):
    a = tmp_path / "a.yaml"
    a.write_text("{}")
    monkeypatch.setenv("ANDON_CONFIG", str(a))
    assert find_config(None) == a
    with pytest.raises(UsageError, match="does not exist"):
        find_config(str(tmp_path / "missing.yaml"))
    monkeypatch.setenv("ANDON_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(UsageError, match="ANDON_CONFIG"):
        find_config(None)


def test_append_output_entries():
    from andon.rules.engine import AppendOutput

    cfg = config_from_dict({"append_output": [
        {"suggested_output": True},
        {"match": {"rule": "R", "tags": ["net"]}, "extra_output": "pid=%proc.pid", "extra_fields": ["evt.hostname"]},
    ]})
    assert cfg.append_output == (
        AppendOutput(suggested_output=True),
        AppendOutput(rule="R", tags=("net",), extra_output="pid=%proc.pid", extra_fields=("evt.hostname",)),
    )
    assert config_from_dict({"append_output": []}).append_output == ()
    assert config_from_dict({}).append_output is None  # the engine's default: Falco's suggested_output
    with pytest.raises(UsageError, match="match has only"):
        config_from_dict({"append_output": [{"match": {"priority": "x"}}]})


def test_observe_and_store_sections(tmp_path):
    cfg = config_from_dict({"observe": {"protocols": ["HTTP", "dns"], "idle_timeout": "30s", "max_copy_bytes": 16384},
                            "store": {"data_dir": str(tmp_path), "retention": {"max_age": "2h", "max_bytes": "1GiB"}}})
    assert cfg.observe.protocols == ("http", "dns") and cfg.observe.idle_timeout_ns == 30 * 10**9
    assert cfg.observe.max_copy_bytes == 16384 and cfg.observe.enabled and cfg.observe.unix_sockets
    assert not config_from_dict({"observe": {"unix_sockets": False}}).observe.unix_sockets
    assert cfg.store.data_dir == tmp_path and cfg.store.retention.max_age_ns == 7200 * 10**9
    assert cfg.store.retention.max_bytes == 2**30
    assert "observe" not in cfg.outputs and "store" not in cfg.outputs


def test_observe_trace_roles():
    cfg = config_from_dict({"observe": {"trace_roles": {"PGSQL": ["server"], "redis": "client",
                                                        "http": ["server", "client"]}}})
    assert cfg.observe.trace_roles == (("http", ("client", "server")), ("pgsql", ("server",)), ("redis", ("client",)))
    assert cfg.observe.protocols_text() == "http, http2, pgsql (server end), mysql, redis (client end), dns"
    assert config_from_dict({}).observe.protocols_text() == "http, http2, pgsql, mysql, redis, dns"
