"""andon doctor's table, JSON and exit status, on fabricated rows (no root, no kernel)."""

from __future__ import annotations

import argparse
import json

import pytest

from andon.bpf.features import CORE, Feature, privileged
from andon.cli import doctor


def rows(**not_ok: str) -> list[Feature]:
    """Every core row plus two optional ones, all ok except those named (name=detail)."""
    names = [*CORE, "kprobe", "xdp"]
    out = []
    for n in names:
        key = n.replace("/", "_")
        if key in not_ok:
            out.append(Feature(n, False, not_ok[key], f"{n}: what is lost"))
        else:
            out.append(Feature(n, True, f"{n} works", ""))
    return out


def test_all_core_ok_exits_0() -> None:
    assert doctor.exit_code(rows()) == 0
    assert doctor.core_missing(rows()) == []


@pytest.mark.parametrize("name", CORE)
def test_any_core_feature_missing_exits_1(name: str) -> None:
    features = rows(**{name: "EPERM at load"})
    assert doctor.exit_code(features) == 1
    assert doctor.core_missing(features) == [name]
    assert f"NOT ready, missing {name}" in doctor.summary(features)


def test_a_core_row_absent_from_the_report_counts_as_missing() -> None:
    features = [f for f in rows() if f.name != "ringbuf"]
    assert doctor.exit_code(features) == 1
    assert doctor.core_missing(features) == ["ringbuf"]


def test_optional_features_missing_still_exit_0() -> None:
    features = rows(kprobe="ENOENT at attach", xdp="EOPNOTSUPP at attach")
    assert doctor.exit_code(features) == 0
    assert doctor.summary(features).startswith("sensor core: ready")
    assert f"{len(features) - 2} of {len(features)} rows ok" in doctor.summary(features)


def test_table_shows_marks_findings_and_consequences() -> None:
    features = rows(kprobe="ENOENT at attach; no kprobe PMU", ringbuf="EINVAL at load")
    text = doctor.render_table(features, width=200)
    lines = text.splitlines()
    header = next(ln for ln in lines if "feature" in ln)
    for col in ("feature", "status", "what we found", "consequence"):
        assert col in header
    kprobe = next(ln for ln in lines if " kprobe " in ln)
    assert doctor.FAIL_MARK in kprobe and "ENOENT at attach; no kprobe PMU" in kprobe and "kprobe: what is lost" in kprobe
    raw_tp = next(ln for ln in lines if " raw_tp " in ln)
    assert doctor.OK_MARK in raw_tp and doctor.FAIL_MARK not in raw_tp and "raw_tp works" in raw_tp
    assert text.count(doctor.OK_MARK) == len(features) - 2
    assert text.count(doctor.FAIL_MARK) == 2
    assert "sensor core: NOT ready, missing ringbuf" in text


def test_json_is_a_list_of_rows_with_core_marked() -> None:
    features = rows(kprobe="ENOENT at attach ✘ not here")
    data = json.loads(doctor.to_json(features))
    assert [d["name"] for d in data] == [f.name for f in features]
    for d in data:
        assert set(d) == {"name", "ok", "core", "detail", "consequence"}
    by = {d["name"]: d for d in data}
    assert by["btf"] == {"name": "btf", "ok": True, "core": True, "detail": "btf works", "consequence": ""}
    assert by["kprobe"]["ok"] is False and by["kprobe"]["core"] is False
    assert by["kprobe"]["detail"] == "ENOENT at attach ✘ not here"  # unicode kept as is
    assert "✘" in doctor.to_json(features)


def test_add_parser_registers_doctor_with_output_choices() -> None:
    ap = argparse.ArgumentParser(prog="andon")
    sub = ap.add_subparsers(dest="command")
    doctor.add_parser(sub)
    args = ap.parse_args(["doctor", "-o", "json"])
    assert args.command == "doctor" and args.output == "json" and args.func is doctor.run
    assert ap.parse_args(["doctor"]).output == "table"
    assert ap.parse_args(["doctor", "--output", "table", "--no-mount"]).no_mount is True
    with pytest.raises(SystemExit):
        ap.parse_args(["doctor", "-o", "yaml"])


def test_run_prints_and_returns_the_exit_status(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}

    def fake_probe_all(*, mount: bool = True) -> list[Feature]:
        seen["mount"] = mount
        return rows(ringbuf="EINVAL at load")

    monkeypatch.setattr("andon.bpf.features.probe_all", fake_probe_all)
    rc = doctor.run(argparse.Namespace(output="json", no_mount=True))
    assert rc == 1 and seen["mount"] is False
    assert {d["name"]: d["ok"] for d in json.loads(capsys.readouterr().out)}["ringbuf"] is False


@pytest.mark.parametrize(
    "cap_eff, expected",
    [
        (0, False),
        (1 << 21, True),                  # CAP_SYS_ADMIN alone (kernels before CAP_BPF)
        ((1 << 39) | (1 << 38), True),    # CAP_BPF + CAP_PERFMON
        (1 << 39, False),                 # CAP_BPF without CAP_PERFMON cannot attach tracing programs
        (1 << 12, False),                 # CAP_NET_ADMIN alone
    ],
)
def test_privileged_decides_by_capabilities(cap_eff: int, expected: bool) -> None:
    assert privileged(cap_eff) is expected
