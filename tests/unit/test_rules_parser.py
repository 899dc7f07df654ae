"""The condition parser against libsinsp's own accept/reject cases, AST shapes, offsets and a round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from andon.errors import RuleSyntaxError
from andon.rules import ast
from andon.rules.ast import (
    And, Compare, Exists, FieldRef, Identifier, ListValue, Not, Or, Transformer, TransformerList, Value,
)  # fmt: skip
from andon.rules.parser import parse_condition, parse_operand

from corpus import PARSER_CASES as CORPUS  # noqa: E402
CASES = json.loads(CORPUS.read_text())["cases"]
ACCEPT = [c["condition"] for c in CASES if c["expect"] == "accept"]
REJECT = [c["condition"] for c in CASES if c["expect"] == "reject"]


def test_corpus_is_complete():
    assert len(CASES) == 516
    assert len(ACCEPT) + len(REJECT) == 516


@pytest.mark.parametrize("cond", ACCEPT)
def test_accept(cond):
    tree = parse_condition(cond)
    # blanks may be any of space, newline or tab; outside quotes the tree does not change
    # (pos is not compared)
    for blank in ("\n", "\t"):
        other = parse_condition(cond.replace(" ", blank))
        if "'" not in cond and '"' not in cond:
            assert other == tree


@pytest.mark.parametrize("cond", REJECT)
def test_reject(cond):
    with pytest.raises(RuleSyntaxError) as ei:
        parse_condition(cond)
    assert ei.value.pos is not None and 0 <= ei.value.pos <= len(cond)


# -- shapes ------------------------------------------------------------------------------------


def F(name, arg=None):
    return FieldRef(name, arg)


def V(text, quoted=False):
    return Value(text, quoted)


SHAPES = [
    # and binds tighter than or
    ("a.a=1 or b.b=2 and c", Or((Compare(F("a.a"), "=", V("1")), And((Compare(F("b.b"), "=", V("2")), Identifier("c")))))),
    # not binds tighter than and; 'not not' cancels
    ("not a and b", And((Not(Identifier("a")), Identifier("b")))),
    ("not not a", Identifier("a")),
    ("not (a or b)", Not(Or((Identifier("a"), Identifier("b"))))),
    ("not a.b=1", Not(Compare(F("a.b"), "=", V("1")))),
    # keywords glued to words are names, not keywords
    ("a and notb", And((Identifier("a"), Identifier("notb")))),
    ("macro and or_macro", And((Identifier("macro"), Identifier("or_macro")))),
    # == is stored as =
    ("test.op == value", Compare(F("test.op"), "=", V("value"))),
    ("a.b = not", Compare(F("a.b"), "=", V("not"))),
    # field args, bare and quoted
    ("evt.arg[0] contains /bin", Compare(F("evt.arg", "0"), "contains", V("/bin"))),
    ("test.str['a aa'] = a", Compare(F("test.str", "a aa"), "=", V("a"))),
    ('test.str["test \\"with\\"escaping"] = a', Compare(F("test.str", 'test "with"escaping'), "=", V("a"))),
    # lists keep quoted-ness; a right-hand field name is just a string
    ("a.g in (1, 'a', b.c)", Compare(F("a.g"), "in", ListValue((V("1"), V("a", True), V("b.c"))))),
    ("a.b = a.a", Compare(F("a.b"), "=", V("a.a"))),
    ("test.list in ()", Compare(F("test.list"), "in", ListValue(()))),
    ("x.y in mylist", Compare(F("x.y"), "in", V("mylist"))),
    ("x.y pmatch (/a, /b)", Compare(F("x.y"), "pmatch", ListValue((V("/a"), V("/b"))))),
    # escapes
    ("test.str = 'escape single quote \\' '", Compare(F("test.str"), "=", V("escape single quote ' ", True))),
    ("test.str = \"a\\x41\\n\"", Compare(F("test.str"), "=", V("aA\n", True))),
    # transformers, val()
    ("tolower(proc.name) = bash", Compare(Transformer("tolower", (F("proc.name"),)), "=", V("bash"))),
    ("b64(toupper(x.y)) exists", Exists(Transformer("b64", (Transformer("toupper", (F("x.y"),)),)))),
    ("some.field = val(test.field)", Compare(F("some.field"), "=", F("test.field"))),
    ("some.field = b64(test.field)", Compare(F("some.field"), "=", Transformer("b64", (F("test.field"),)))),
    ('join("-", (fd.name, "lit", 12)) = x', Compare(
        Transformer("join", (V("-", True), TransformerList((F("fd.name"), V("lit", True), V("12"))))), "=", V("x"))),
    # modifiers, and their fallbacks to plain values
    ("proc.name startswith anyof (/proc/, /sys/)", Compare(F("proc.name"), "startswith", ListValue((V("/proc/"), V("/sys/"))), "anyof")),
    ("proc.name != allof my_list", Compare(F("proc.name"), "!=", V("my_list"), "allof")),
    ("proc.name == oneof and fd.name exists", And((Compare(F("proc.name"), "=", V("oneof")), Exists(F("fd.name"))))),
    # 'exists' needs no blank after it
    ("test.op existsand macro", And((Exists(F("test.op")), Identifier("macro")))),
    # numbers
    ("test.num <= 0XaB00AB", Compare(F("test.num"), "<=", V("0XaB00AB"))),
    ("test.num > -0.1222e+10", Compare(F("test.num"), ">", V("-0.1222e+10"))),
]  # fmt: skip


@pytest.mark.parametrize("cond,tree", SHAPES, ids=[s[0] for s in SHAPES])
def test_shape(cond, tree):
    assert parse_condition(cond) == tree


def test_positions():
    t = parse_condition("a and  proc.name in (x, 'y')")
    assert isinstance(t, And)
    cmp = t.children[1]
    assert cmp.pos == 7 and cmp.left.pos == 7
    assert cmp.right.pos == 20
    assert [i.pos for i in cmp.right.items] == [21, 24]


ERRORS = [
    ("a andb", 5, "after 'and'"),
    ("a and b and", 11, "condition after 'and'"),
    ("test.list in (value,)", 20, "list item after ','"),
    ("test.op in", 10, "after 'in'"),
    ("test.num < 0aaaaa", 12, "unexpected 'aaaaa'"),
    ("test.num > !0.1222e+10", 11, "expected a number"),
    ("(a.b = 1", 8, "expected ')'"),
    ("test.str = 'missing end quote", 11, "value after '='"),
    ('test.str = "mixed \\\'"', 18, "invalid \\' escape"),
    ("test.str[   test   ] = testval", 9, "field argument"),
    ("b64 (test.field) exists", 4, "unexpected '(test.field)'"),
    ("a.a invalidoperator xxx", 20, "read as the operator 'in'"),
    ("", 0, "empty"),
]


@pytest.mark.parametrize("cond,pos,msg", ERRORS, ids=[e[0] or "empty" for e in ERRORS])
def test_error_offsets(cond, pos, msg):
    with pytest.raises(RuleSyntaxError) as ei:
        parse_condition(cond)
    assert ei.value.pos == pos, str(ei.value)
    assert msg in str(ei.value)


def test_depth_limit():
    deep = "(" * 300 + "a" + ")" * 300
    with pytest.raises(RuleSyntaxError, match="nest"):
        parse_condition(deep)
    assert parse_condition("(" * 150 + "a" + ")" * 150) == Identifier("a")
    with pytest.raises(RuleSyntaxError):
        parse_condition("(" * 30 + "a" + ")" * 30, max_depth=100)


def test_parse_operand():
    assert parse_operand(" tolower(proc.name) ") == Transformer("tolower", (F("proc.name"),))
    assert parse_operand("proc.aname[2]") == F("proc.aname", "2")
    with pytest.raises(RuleSyntaxError):
        parse_operand("proc.name = x")


# -- round trip ----------------------------------------------------------------------------

_ident = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in ("and", "or", "not", "exists") and not s.startswith("not")
)
_field_name = st.builds(lambda a, b: f"{a}.{b}", _ident, _ident)
_arg = st.none() | st.text(min_size=1, max_size=6)
_field = st.builds(FieldRef, _field_name, _arg)
_bare = st.from_regex(r"[a-zA-Z0-9/_.*:+-]{1,8}", fullmatch=True)
_any_text = st.text(max_size=8)
_value = st.builds(Value, _any_text, st.just(True)) | st.builds(Value, _bare, st.just(False))
_number = st.builds(Value, st.from_regex(r"-?[0-9]{1,5}(\.[0-9]{1,3})?", fullmatch=True), st.just(False))
_operand = st.recursive(
    _field,
    lambda inner: st.builds(
        lambda n, a: Transformer(n, (a,)), st.sampled_from(["tolower", "toupper", "b64", "basename", "len"]), inner
    ),
    max_leaves=3,
)
_list = st.builds(lambda xs: ListValue(tuple(xs)), st.lists(_value, max_size=4))
_str_ops = st.sampled_from(["=", "!=", "contains", "icontains", "startswith", "endswith", "glob", "iglob", "regex"])


def _check():
    return st.one_of(
        st.builds(Exists, _operand),
        st.builds(Compare, _operand, _str_ops, _value | _field | _operand),
        st.builds(Compare, _operand, st.sampled_from(["<", "<=", ">", ">="]), _number | _field),
        st.builds(Compare, _operand, st.sampled_from(ast.LIST_OPERATORS), _list),
        st.builds(Compare, _operand, st.sampled_from(["=", "!=", "contains"]), _list, st.sampled_from(ast.MODIFIERS)),
        st.builds(Identifier, _ident),
    )


_tree = st.recursive(
    _check(),
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(lambda xs: And(tuple(xs)), st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda xs: Or(tuple(xs)), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(_tree)
def test_round_trip(tree):
    text = ast.to_text(tree)
    assert parse_condition(text) == tree, text
