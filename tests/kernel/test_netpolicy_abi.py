"""The network policy wire ABI: the BTF of enforce/policy.bpf.o and enforce/xdp_fw.bpf.o
against the struct formats of andon.netpolicy, member by member (name, offset, size), and
the header's #defines against the Python constants. Needs bpftool and the built objects,
not root."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

import btf as btf_reader
from andon.events.live import default_bpf_dir
from andon.netpolicy import datapath as dp
from andon.netpolicy import kernel_firewall as fw

HEADER = Path(__file__).resolve().parents[2] / "bpf/abi/netpolicy.h"


def _btf(obj: Path) -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    btf_reader.need(obj)
    return btf_reader.structs(obj, lambda name: name.startswith("np_"))


@pytest.fixture(scope="module")
def policy_btf():
    return _btf(default_bpf_dir() / "enforce/policy.bpf.o")


@pytest.fixture(scope="module")
def fw_btf():
    return _btf(default_bpf_dir() / "enforce/xdp_fw.bpf.o")


def _layout(fmt: struct.Struct, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    items = re.findall(r"(\d*)([xcbBhHiIqQs])", fmt.format[1:])
    assert len(items) == len(names), (fmt.format, names)
    out, off = [], 0
    for (count, code), name in zip(items, names):
        size = struct.calcsize("<" + count + code)
        out.append((name, off, size))
        off += size
    return out


@pytest.mark.parametrize("cname,fmt,fields", [
    ("np_ip_key", dp.IP_KEY, dp.IP_KEY_FIELDS),
    ("np_ip_val", dp.IP_VAL, dp.IP_VAL_FIELDS),
    ("np_endpoint", dp.ENDPOINT, dp.ENDPOINT_FIELDS),
    ("np_pol_key", dp.POL_KEY, dp.POL_KEY_FIELDS),
    ("np_pol_val", dp.POL_VAL, dp.POL_VAL_FIELDS),
    ("np_ct_key", dp.CT_KEY, dp.CT_KEY_FIELDS),
    ("np_ct_val", dp.CT_VAL, dp.CT_VAL_FIELDS),
    ("np_cnt_key", dp.CNT_KEY, dp.CNT_KEY_FIELDS),
    ("np_cnt_val", dp.CNT_VAL, dp.CNT_VAL_FIELDS),
    ("np_flow", dp.FLOW, dp.FLOW_FIELDS),
])
def test_policy_structs(policy_btf, cname, fmt, fields):
    assert policy_btf[cname][0] == fmt.size
    assert policy_btf[cname][1] == _layout(fmt, fields)


@pytest.mark.parametrize("cname,fmt,fields", [
    ("np_fw_rule", fw.FW_RULE, fw.FW_RULE_FIELDS),
    ("np_fw_cnt", fw.FW_CNT, fw.FW_CNT_FIELDS),
])
def test_firewall_structs(fw_btf, cname, fmt, fields):
    assert fw_btf[cname][0] == fmt.size
    assert fw_btf[cname][1] == _layout(fmt, fields)
    assert fw_btf["np_fw_set"][0] == fw.FW_RULE.size * fw.FW_RULES


def _defines(prefix: str) -> dict[str, int]:
    text = HEADER.read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(rf"#define ({prefix}\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text)}


def test_constants():
    assert _defines("NP_DIR_") == {"NP_DIR_INGRESS": dp.DIR_INGRESS, "NP_DIR_EGRESS": dp.DIR_EGRESS}
    assert {v: k.removeprefix("NP_VERDICT_") for k, v in _defines("NP_VERDICT_").items()} == {
        k: v for k, v in dp.VERDICTS.items() if k}
    assert {v for v in _defines("NP_DROP_").values()} == set(dp.DROP_REASONS)
    assert {v: k.removeprefix("NP_MATCH_") for k, v in _defines("NP_MATCH_").items()} == dp.MATCH_TYPES
    assert _defines("NP_POL_PREFIX_") == {"NP_POL_PREFIX_PEER": dp.POL_PREFIX_PEER,
                                         "NP_POL_PREFIX_PROTO": dp.POL_PREFIX_PROTO,
                                         "NP_POL_PREFIX_FULL": dp.POL_PREFIX_FULL}
    assert _defines("NP_EP_") == {"NP_EP_DENY_INGRESS": dp.EP_DENY_INGRESS, "NP_EP_DENY_EGRESS": dp.EP_DENY_EGRESS,
                                  "NP_EP_AUDIT": dp.EP_AUDIT, "NP_EP_AUDIT_DD_INGRESS": dp.EP_AUDIT_DD_INGRESS,
                                  "NP_EP_AUDIT_DD_EGRESS": dp.EP_AUDIT_DD_EGRESS}
    assert _defines("NP_FLOW_F_") == {"NP_FLOW_F_CT_NEW": dp.FLOW_F_CT_NEW, "NP_FLOW_F_EP_AUDIT": dp.FLOW_F_EP_AUDIT}
    fw_defines = _defines("NP_FW_")
    assert (fw_defines["NP_FW_RULES"], fw_defines["NP_FW_MAX_RULES"]) == (fw.FW_RULES, fw.FW_MAX_RULES)


def test_stat_names_follow_enum_np_stat():
    body = HEADER.read_text().split("enum np_stat {", 1)[1].split("};", 1)[0]
    entries = [(m[1], int(m[2])) for m in re.finditer(r"NP_STAT_(\w+) = (\d+)", body)]
    assert entries[-1] == ("MAX", len(dp.STAT_NAMES))
    assert [v for _, v in entries] == list(range(len(entries)))
    assert tuple(n.lower() for n, _ in entries[:-1]) == dp.STAT_NAMES
