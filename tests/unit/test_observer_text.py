"""The agent's start line on TLS capture (andon.app.observer.tls_text)."""

from __future__ import annotations

from types import SimpleNamespace as NS

from andon.app.observer import tls_text


def _src(tls, files=(), tls_error="", go_tls_error="", on=True):
    attacher = None if tls is None else NS(files={i: NS(go=g) for i, g in enumerate(files)})
    return NS(settings=NS(tls=on), tls=attacher, tls_error=tls_error, go_tls_error=go_tls_error)


def test_the_start_line_says_which_files_are_probed_or_why_tls_is_off():
    assert tls_text(_src(True, files=["", "", "go1.19.8"])) == "TLS on: 2 OpenSSL file(s), 1 Go program(s)"
    assert tls_text(_src(True, files=[""])) == "TLS on: 1 OpenSSL file(s)"
    assert tls_text(_src(True, files=[""], go_tls_error="tp_btf with Go's and OpenSSL's TLS uprobes: EINVAL")) == (
        "TLS on: 1 OpenSSL file(s); Go's crypto/tls off (tp_btf with Go's and OpenSSL's TLS uprobes: EINVAL)")
    assert tls_text(_src(None, tls_error="uprobes: not supported")) == "TLS off (uprobes: not supported)"
    assert tls_text(_src(None, on=False)) == "TLS off"
    assert tls_text(None) == "TLS off"
