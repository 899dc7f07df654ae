"""Bad policy files: every problem collected, each with code, file:line:col, snippet and hint."""

from __future__ import annotations

from andon.netpolicy.policy import load_text, load_texts

HEAD = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad\n"


def errs(text):
    r = load_text(text, "bad.yaml")
    return r, [(e.code, e.line, e.col) for e in r.errors]


def test_malformed_yaml_located():
    r, got = errs(HEAD + "spec:\n  endpointSelector: {matchLabels: {app: web}\n  ingress: []\n")
    assert got and got[0][0] == "NP_YAML_PARSE" and got[0][1] >= 6
    assert r.policies == [] and "not valid YAML" in r.errors[0].hint


def test_unknown_fields_all_reported_with_did_you_mean():
    r, got = errs(HEAD + """spec:
  endpointSelecter: {}
  ingress:
  - fromEndpoint: [{}]
    toPort: [{ports: [{port: "80"}]}]
""")
    # the misspelt selector also leaves the rule without one: reported once more, at the rule
    assert got == [("NP_UNKNOWN_FIELD", 6, 3), ("NP_SCHEMA", 6, 3), ("NP_UNKNOWN_FIELD", 8, 5), ("NP_UNKNOWN_FIELD", 9, 5)]
    hints = [e.hint for e in r.errors if e.code == "NP_UNKNOWN_FIELD"]
    assert hints == ["did you mean 'endpointSelector'?", "did you mean 'fromEndpoints'?", "did you mean 'toPorts'?"]
    assert r.errors[0].snippet == "  endpointSelecter: {}"
    assert "^" in r.errors[0].render()
    assert r.policies == []


def test_invalid_values():
    r, got = errs(HEAD + """spec:
  endpointSelector: {}
  ingress:
  - fromCIDR: [10.0.0.0/33]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]
  - fromEntities: [wrld]
  - toPorts: [{ports: [{port: "70000", protocol: TCP}, {port: "90", endPort: 80}, {port: "1", protocol: TPC}]}]
  - fromEndpoints: [{matchExpressions: [{key: a, operator: Has}]}]
""")
    assert [c for c, _l, _c in got] == ["NP_INVALID_VALUE"] * 7
    msgs = " | ".join(e.message for e in r.errors)
    for part in ("10.0.0.0/33", "192.168.0.0/16 is not inside 10.0.0.0/8", "unknown entity 'wrld'", "70000",
                 "endPort 80 is below port 90", "protocol 'TPC'", "operator 'Has'"):  # fmt: skip
        assert part in msgs
    assert [e.hint for e in r.errors if "wrld" in e.message] == ["did you mean 'world'?"]


def test_unsupported_combinations():
    r, got = errs(HEAD + """spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    fromCIDR: [10.0.0.0/8]
  - icmps: [{fields: [{type: 8}]}]
    toPorts: [{ports: [{port: "80"}]}]
  - toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "*"}]}}]
  egress:
  - toPorts: [{ports: [{port: "80", protocol: UDP}], rules: {http: [{}]}}]
""")
    assert [c for c, _l, _c in got] == ["NP_UNSUPPORTED_COMBINATION"] * 3 + ["NP_INVALID_VALUE"]
    assert "fromEndpoints and fromCIDR" in r.errors[0].message
    assert "DNS rules are not allowed on ingress" in r.errors[2].message
    assert "TCP only" in r.errors[3].message


def test_missing_pieces_and_wrong_kind():
    r = load_texts([("a.yaml", "apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {}\nspec: {endpointSelector: {}}\n")])
    assert [(e.code, e.line) for e in r.errors] == [("NP_INVALID_VALUE", 2), ("NP_SCHEMA", 3)]
    assert "did you mean 'CiliumNetworkPolicy'" in r.errors[0].hint
    r = load_text(HEAD + "spec:\n  ingress: []\n")
    assert r.codes("error") == ["NP_SCHEMA"] and "endpointSelector" in r.errors[0].message


def test_two_documents_and_spec_with_specs():
    text = HEAD + "spec:\n  endpointSelector: {}\n  egress: [{}]\nspecs:\n- endpointSelector: {}\n  ingress: [{}]\n---\n" + HEAD.replace("bad", "second") + "spec:\n  endpointSelector: {}\n"
    r = load_text(text)
    assert r.ok, r.render()
    assert [(p.name, len(p.rules), p.line) for p in r.policies] == [("bad", 2, 1), ("second", 1, 12)]
    first = r.policies[0]
    assert (first.rules[0].default_deny_egress, first.rules[0].default_deny_ingress) == (True, False)
    assert (first.rules[1].default_deny_egress, first.rules[1].default_deny_ingress) == (False, True)


def test_errors_in_one_file_do_not_drop_another():
    good = HEAD.replace("bad", "good") + "spec:\n  endpointSelector: {}\n"
    r = load_texts([("bad.yaml", HEAD + "spec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [nope]}]\n"), ("good.yaml", good)])
    assert not r.ok
    assert [p.name for p in r.policies] == ["good"]
    assert r.errors[0].file == "bad.yaml" and r.errors[0].location == "bad.yaml:7:29"
    d = r.to_json()
    assert d["errors"][0]["codedesc"] == "Invalid value" and d["policies"][0]["name"] == "good"
