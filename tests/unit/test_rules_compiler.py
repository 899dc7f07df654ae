"""The condition compiler: operators per type, <NA>, Multi, transformers, val(), macros/lists, evttypes."""

from __future__ import annotations

import ipaddress

import pytest

from andon.errors import FieldArgError, MacroCycleError, RuleError, UndefinedMacroError, UnknownFieldError
from andon.rules import ast
from andon.rules.compiler import compile_filter, default_event_types, resolve
from andon.rules.parser import parse_condition
from andon.rules.types import FieldType as T
from andon.rules.types import Multi

TYPES = {
    "proc.name": T.CHARBUF,
    "proc.pname": T.CHARBUF,
    "fd.name": T.CHARBUF,
    "fd.directory": T.CHARBUF,
    "evt.type": T.CHARBUF,
    "evt.buffer": T.BYTEBUF,
    "proc.pid": T.INT64,
    "proc.ppid": T.INT64,
    "user.uid": T.UINT32,
    "evt.num": T.UINT64,
    "evt.latency": T.RELTIME,
    "fd.sport": T.PORT,
    "fd.port": T.PORT,
    "evt.failed": T.BOOL,
    "fd.sip": T.IPADDR,
    "fd.ip": T.IPADDR,
    "fd.net": T.IPNET,
    "fd.snet": T.IPNET,
    "proc.aname": T.CHARBUF,
    "proc.args": T.CHARBUF,
    "evt.rate": T.DOUBLE,
}


class FakeExtractor:
    def __init__(self, key: str, type_: T) -> None:
        self.key = key
        self.type = type_

    def __call__(self, ev, ctx):
        return ev.get(self.key)


class FakeFields:
    """``lookup`` as the real registry: unknown names and bad args raise RuleErrors."""

    def lookup(self, name, arg):
        if name not in TYPES:
            raise UnknownFieldError(f"unknown field {name}")
        if arg is not None and name != "proc.aname":
            raise FieldArgError(f"{name} takes no argument")
        key = name if arg is None else f"{name}[{arg}]"
        return FakeExtractor(key, TYPES[name])


FIELDS = FakeFields()
ALL = frozenset({"open", "openat", "execve", "connect", "clone", "procexit"})


def comp(cond, macros=None, lists=None):
    node = parse_condition(cond)
    if macros is not None or lists is not None:
        node = resolve(node, {k: parse_condition(v) for k, v in (macros or {}).items()}, lists or {})
    return compile_filter(node, FIELDS, all_types=ALL)


def run(cond, ev, **kw):
    return comp(cond, **kw)(ev, None)


# -- strings -------------------------------------------------------------------------------------

STRING_CASES = [
    ("proc.name = bash", "bash", True),
    ("proc.name = bash", "bashx", False),
    ("proc.name == 'ba sh'", "ba sh", True),
    ("proc.name != bash", "zsh", True),
    ("proc.name != bash", "bash", False),
    ("proc.name < 5", "10", True),  # strcmp order, not numeric
    ("proc.name < 5", "5", False),
    ("proc.name <= 5", "5", True),
    ("proc.name > 5", "50", True),
    ("proc.name >= 6", "5", False),
    ("proc.name contains as", "bash", True),
    ("proc.name contains AS", "bash", False),
    ("proc.name icontains AS", "bAsh", True),
    ("proc.name icontains xy", "bash", False),
    ("proc.name startswith ba", "bash", True),
    ("proc.name startswith sh", "bash", False),
    ("proc.name endswith sh", "bash", True),
    ("proc.name endswith ba", "bash", False),
    ("proc.name glob 'b*h'", "bash", True),
    ("proc.name glob 'b*h'", "bashx", False),
    ("proc.name glob '/usr/*'", "/usr/bin/x", True),  # no FNM_PATHNAME: * crosses '/'
    ("proc.name glob 'b?sh'", "bash", True),
    ("proc.name glob 'b?sh'", "bsh", False),
    ("proc.name glob '[a-c]ash'", "bash", True),
    ("proc.name glob '[!a-c]ash'", "bash", False),
    ("proc.name glob '[!a-c]ash'", "dash", True),
    ("proc.name glob 'B*'", "bash", False),
    ("proc.name iglob 'B*'", "bash", True),
    ("proc.name glob a\\*", "a*", True),  # backslash escapes '*'
    ("proc.name glob a\\*", "ab", False),
    ("proc.name regex 'ba.h'", "bash", True),
    ("proc.name regex 'as'", "bash", False),  # full match, not search
    ("proc.name regex '.*as.*'", "bash", True),
    ("proc.name in (sh, bash)", "bash", True),
    ("proc.name in (sh, bash)", "zsh", False),
    ("proc.name in ()", "zsh", False),
    ("proc.name intersects (sh, bash)", "sh", True),
    ("proc.name pmatch (/usr/bin, /etc)", "/usr/bin/ls", True),
    ("proc.name pmatch (/usr/bin, /etc)", "/usr/bin", True),
    ("proc.name pmatch (/usr/bin, /etc)", "/usr/binx", False),  # whole components only
    ("proc.name pmatch (/usr/bin, /etc)", "/usr", False),
    ("proc.name pmatch (/var/*/log)", "/var/a/log/x", True),  # glob inside a component
    ("proc.name pmatch (/var/*/log)", "/var/a/b/log", False),
    ("proc.name pmatch (/)", "/anything", True),
]


@pytest.mark.parametrize("cond,value,expect", STRING_CASES, ids=[f"{c}|{v}" for c, v, _ in STRING_CASES])
def test_string_ops(cond, value, expect):
    assert run(cond, {"proc.name": value}) is expect


def test_icontains_folds_ascii_only():
    assert run("proc.name icontains 'É'", {"proc.name": "é"}) is False
    assert run("proc.name icontains 'aÉ'", {"proc.name": "AÉ"}) is True


# -- <NA> ---------------------------------------------------------------------------------------

NA_CONDS = [
    "proc.name = x", "proc.name != x", "proc.name contains x", "proc.name in (x)", "proc.name exists",
    "proc.name glob '*'", "proc.name regex '.*'", "proc.name pmatch (/)", "proc.pid < 5", "proc.pid != 5",
    "tolower(proc.name) != x", "len(proc.name) = 0", "proc.name = val(proc.pname)", "proc.name != oneof (a, b)",
    "fd.net != 10.0.0.0/8",
]  # fmt: skip


@pytest.mark.parametrize("cond", NA_CONDS)
def test_na_is_false_for_every_operator(cond):
    f = comp(cond)
    assert f({}, None) is False
    assert f({"proc.name": None, "proc.pid": None, "fd.net": Multi()}, None) is False


def test_not_of_na_is_true():
    assert run("not proc.name = x", {}) is True
    assert run("not proc.name exists", {}) is True
    assert run("proc.name exists", {"proc.name": ""}) is True


# -- numbers, bools, ports ------------------------------------------------------------------------

NUM_CASES = [
    ("proc.pid = 10", 10, True),
    ("proc.pid = 10", 11, False),
    ("proc.pid != 10", 11, True),
    ("proc.pid < 10", 9, True),
    ("proc.pid < 10", 10, False),
    ("proc.pid <= 10", 10, True),
    ("proc.pid > -1", 0, True),
    ("proc.pid >= 10", 9, False),
    ("proc.pid in (1, 2, 3)", 2, True),
    ("proc.pid in (1, 2, 3)", 4, False),
    ("proc.pid intersects (1, 2)", 1, True),
    ("proc.pid = ' 7'", 7, True),  # sscanf skips leading blanks
]


@pytest.mark.parametrize("cond,value,expect", NUM_CASES, ids=[f"{c}|{v}" for c, v, _ in NUM_CASES])
def test_numeric_ops(cond, value, expect):
    assert run(cond, {"proc.pid": value}) is expect


def test_unsigned_wraps_negative_values():
    assert run("user.uid = -1", {"user.uid": 2**32 - 1}) is True
    assert run("evt.num = -1", {"evt.num": 2**64 - 1}) is True


def test_reltime_and_double_take_integers():
    assert run("evt.latency > 1000000", {"evt.latency": 1_000_001}) is True
    assert run("evt.rate >= 2", {"evt.rate": 1.5}) is False
    with pytest.raises(RuleError, match="evt.rate"):
        comp("evt.rate > 1.5")


def test_bool_values():
    assert run("evt.failed = true", {"evt.failed": True}) is True
    assert run("evt.failed = true", {"evt.failed": False}) is False
    assert run("evt.failed != false", {"evt.failed": True}) is True
    assert run("evt.failed in (false)", {"evt.failed": False}) is True


def test_ports_numbers_and_service_names():
    assert run("fd.sport = 22", {"fd.sport": 22}) is True
    assert run("fd.sport = ssh", {"fd.sport": 22}) is True
    assert run("fd.sport in (80, https)", {"fd.sport": 443}) is True
    assert run("fd.sport > 1024", {"fd.sport": 80}) is False


def test_multi_any_for_positive_all_for_not_equal():
    both = {"fd.port": Multi((5555, 22))}
    assert run("fd.port = 22", both) is True
    assert run("fd.port != 22", both) is False  # one end is 22
    assert run("fd.port != 80", both) is True
    assert run("fd.port < 100", both) is True
    assert run("fd.port in (1, 5555)", both) is True
    assert run("fd.port exists", {"fd.port": Multi()}) is False


@pytest.mark.parametrize(
    "cond,bad",
    [
        ("proc.pid = abc", "'abc'"),
        ("proc.pid = 0x10", "'0x10'"),  # the parser takes hex; libsinsp's value parser does not
        ("proc.pid < 1.5", "'1.5'"),
        ("evt.failed = yes", "true or false"),
        ("fd.sport = nosuchservice", "service"),
        ("fd.sip = 10.0.0.0/8", "fd.snet"),
        ("fd.sip = 1.2.3", "not an IP address"),
        ("fd.net = 10.0.0.1", "network"),
        ("fd.net = 10.0.0.0/40", "'10.0.0.0/40'"),
        ("evt.buffer bcontains 4g", "hex"),
        ("evt.buffer bcontains 123", "hex"),
        ("proc.name regex '('", "regex"),
    ],
)
def test_conversion_errors_name_field_and_value(cond, bad):
    with pytest.raises(RuleError) as ei:
        comp(cond)
    field = cond.split()[0]
    assert field in str(ei.value) and bad in str(ei.value)
    assert ei.value.pos == cond.index(cond.split()[2])


@pytest.mark.parametrize(
    "cond",
    [
        "proc.pid contains 1", "proc.pid glob 1", "evt.failed < 1", "fd.sip contains 1", "fd.net startswith 1",
        "proc.name bcontains 41", "evt.buffer glob x", "evt.buffer < 1", "proc.pid pmatch (/x)",
    ],
)  # fmt: skip
def test_operator_not_allowed_for_type(cond):
    with pytest.raises(RuleError, match="not supported for"):
        comp(cond)


def test_unknown_field_gets_position():
    with pytest.raises(UnknownFieldError) as ei:
        comp("proc.name = x and nope.x = 1")
    assert ei.value.pos == 18
    with pytest.raises(FieldArgError):
        comp("proc.name[1] = x")


# -- bytes ---------------------------------------------------------------------------------------


def test_byte_buffers():
    ev = {"evt.buffer": b"GET /x HTTP"}
    assert run("evt.buffer bcontains 48545450", ev) is True  # "HTTP"
    assert run("evt.buffer bcontains 48545451", ev) is False
    assert run("evt.buffer bstartswith 474554", ev) is True  # "GET"
    assert run("evt.buffer bstartswith 4854", ev) is False
    assert run("evt.buffer contains HTTP", ev) is True
    assert run("evt.buffer startswith GET", ev) is True
    assert run("evt.buffer endswith HTTP", ev) is True
    assert run("evt.buffer = 'GET /x HTTP'", ev) is True


# -- IPs -----------------------------------------------------------------------------------------


def test_ip_addresses_from_strings_or_objects():
    assert run("fd.sip = 10.0.0.1", {"fd.sip": "10.0.0.1"}) is True
    assert run("fd.sip = 10.0.0.1", {"fd.sip": ipaddress.ip_address("10.0.0.1")}) is True
    assert run("fd.sip = 10.0.0.1", {"fd.sip": "10.0.0.2"}) is False
    assert run("fd.sip != 10.0.0.1", {"fd.sip": "::1"}) is True  # v4 vs v6: only != holds
    assert run("fd.sip = ::1", {"fd.sip": "::1"}) is True
    assert run("fd.sip in (1.1.1.1, 10.0.0.1)", {"fd.sip": "10.0.0.1"}) is True
    assert run("fd.ip = 10.0.0.1", {"fd.ip": Multi(("192.168.0.1", "10.0.0.1"))}) is True
    assert run("fd.ip != 10.0.0.1", {"fd.ip": Multi(("192.168.0.1", "10.0.0.1"))}) is False


def test_cidrs():
    ev = {"fd.net": Multi(("192.168.1.5", "8.8.8.8"))}
    assert run("fd.net = 192.168.0.0/16", ev) is True
    assert run("fd.net = 10.0.0.0/8", ev) is False
    assert run("fd.net != 10.0.0.0/8", ev) is True
    assert run("fd.net != 192.168.0.0/16", ev) is False  # needs both ends outside
    assert run("fd.net in (10.0.0.0/8, 8.8.8.0/24)", ev) is True
    assert run("fd.net in (10.0.0.0/8, 172.16.0.0/12)", ev) is False
    assert run("fd.snet = 10.1.2.3/8", {"fd.snet": "10.200.0.1"}) is True  # host bits ignored
    assert run("fd.snet = fd00::/8", {"fd.snet": "fd12::1"}) is True
    assert run("fd.snet = 10.0.0.0/8", {"fd.snet": "fd12::1"}) is False
    assert run("fd.snet = anyof (10.0.0.0/8, 11.0.0.0/8)", {"fd.snet": "11.0.0.1"}) is True


# -- modifiers ------------------------------------------------------------------------------------


def test_modifiers():
    assert run("proc.name = oneof (a, b)", {"proc.name": "a"}) is True
    assert run("proc.name = oneof (a, a)", {"proc.name": "a"}) is False  # two matches
    assert run("proc.name startswith oneof (ba, bas)", {"proc.name": "bash"}) is False
    assert run("proc.name startswith oneof (ba, zz)", {"proc.name": "bash"}) is True
    assert run("proc.name startswith anyof (zz, ba)", {"proc.name": "bash"}) is True
    assert run("proc.name startswith anyof (zz, yy)", {"proc.name": "bash"}) is False
    assert run("proc.name contains allof (ba, sh)", {"proc.name": "bash"}) is True
    assert run("proc.name contains allof (ba, zz)", {"proc.name": "bash"}) is False
    assert run("proc.name != allof (a, b)", {"proc.name": "c"}) is True
    assert run("proc.name != allof (a, b)", {"proc.name": "a"}) is False
    assert run("proc.name glob anyof ('*sh', 'x*')", {"proc.name": "bash"}) is True
    assert run("proc.name = anyof ()", {"proc.name": "a"}) is False
    assert run("proc.name = allof ()", {"proc.name": "a"}) is False  # empty list never matches


# -- transformers --------------------------------------------------------------------------------


def test_transformers():
    ev = {"proc.name": "BaSh", "fd.name": "/etc/passwd", "fd.directory": "/etc", "proc.args": "aGVsbG8=",
          "proc.pid": 42}  # fmt: skip
    assert run("tolower(proc.name) = bash", ev) is True
    assert run("toupper(proc.name) = BASH", ev) is True
    assert run("proc.name = bash", ev) is False
    assert run("basename(fd.name) = passwd", ev) is True
    assert run("basename(fd.directory) = etc", ev) is True
    assert run("basename(proc.name) = BaSh", ev) is True
    assert run("b64(proc.args) = hello", ev) is True
    assert run("b64(proc.args) exists", {"proc.args": "!!notbase64"}) is False  # undecodable = <NA>
    assert run("b64(proc.args) = hello", {"proc.args": "aGVsbG8"}) is True  # padding optional
    assert run("len(fd.name) = 11", ev) is True
    assert run("len(fd.name) > 11", ev) is False
    assert run("len(proc.aname) = 3", {"proc.aname": Multi(("a", "b", "c"))}) is True
    assert run("toupper(tolower(proc.name)) = BASH", ev) is True
    assert run("tolower(proc.name) in (bash, zsh)", ev) is True
    assert run('join("-", (fd.directory, proc.name)) = /etc-BaSh', ev) is True
    assert run('join(":", (fd.directory, "lit", proc.pid, 7)) = /etc:lit:42:7', ev) is True
    assert run('join("-", ()) = ""', ev) is True
    assert run('join("-", (fd.directory, proc.ppid)) exists', ev) is False  # a <NA> part
    assert run('len(join("-", (fd.directory, proc.name))) = 9', ev) is True
    assert run('concat(fd.directory, "/", proc.name) = /etc/BaSh', ev) is True
    assert run("tolower(proc.name) = tolower(proc.pname)", {"proc.name": "A", "proc.pname": "a"}) is True


def test_transformer_type_errors():
    with pytest.raises(RuleError, match="tolower"):
        comp("tolower(proc.pid) = 1")
    with pytest.raises(RuleError, match="field argument"):
        comp("tolower(proc.name)[1] = 1")
    with pytest.raises(RuleError, match="getopt"):
        comp('getopt(proc.name, "ab") exists')
    with pytest.raises(RuleError, match="separator"):
        comp('join("-", "x") exists')


# -- val() ---------------------------------------------------------------------------------------


def test_val_compares_fields_at_runtime():
    assert run("proc.name = val(proc.pname)", {"proc.name": "a", "proc.pname": "a"}) is True
    assert run("proc.name = val(proc.pname)", {"proc.name": "a", "proc.pname": "b"}) is False
    assert run("proc.name != val(proc.pname)", {"proc.name": "a", "proc.pname": "b"}) is True
    assert run("proc.name != val(proc.pname)", {"proc.name": "a"}) is False  # rhs <NA>
    assert run("proc.pid > val(proc.ppid)", {"proc.pid": 5, "proc.ppid": 4}) is True
    assert run("proc.pid < val(proc.ppid)", {"proc.pid": 5, "proc.ppid": 4}) is False
    assert run("proc.name startswith val(proc.pname)", {"proc.name": "abc", "proc.pname": "ab"}) is True
    assert run("proc.name glob val(proc.pname)", {"proc.name": "abc", "proc.pname": "a*"}) is True
    assert run("proc.name in val(proc.aname)", {"proc.name": "b", "proc.aname": Multi(("a", "b"))}) is True
    assert run("proc.name in val(proc.aname)", {"proc.name": "c", "proc.aname": Multi(("a", "b"))}) is False
    assert comp("proc.name = val(proc.pname)").fields == {"proc.name", "proc.pname"}


@pytest.mark.parametrize(
    "cond,msg",
    [
        ("proc.name = val(proc.pid)", "same type"),
        ("proc.name regex val(proc.pname)", "right-hand side"),
        ("proc.name pmatch val(proc.pname)", "right-hand side"),
        ("fd.net = val(fd.snet)", "network"),
    ],
)
def test_val_errors(cond, msg):
    with pytest.raises(RuleError, match=msg):
        comp(cond)


# -- boolean structure ---------------------------------------------------------------------------


def test_and_or_not_short_circuit():
    calls = []

    class Counting(FakeFields):
        def lookup(self, name, arg):
            ext = super().lookup(name, arg)

            def get(ev, ctx):
                calls.append(name)
                return ev.get(name)

            get.type = ext.type
            return get

    f = compile_filter(parse_condition("proc.name = a and proc.pid = 1 or fd.name = x"), Counting(), all_types=ALL)
    assert f({"proc.name": "b", "fd.name": "x"}, None) is True
    assert calls == ["proc.name", "fd.name"]  # proc.pid never read
    calls.clear()
    assert f({"proc.name": "a", "proc.pid": 1}, None) is True
    assert calls == ["proc.name", "proc.pid"]
    f4 = comp("proc.name = a and proc.pid = 1 and fd.name = x and not evt.failed = true")
    assert f4({"proc.name": "a", "proc.pid": 1, "fd.name": "x", "evt.failed": False}, None) is True
    assert f4({"proc.name": "a", "proc.pid": 1, "fd.name": "x", "evt.failed": True}, None) is False


def test_fields_used():
    f = comp("tolower(proc.name) = a or (fd.name exists and not proc.pid in (1))")
    assert f.fields == {"proc.name", "fd.name", "proc.pid"}


# -- resolve: macros and lists --------------------------------------------------------------------


def test_macros_expand_recursively():
    macros = {"m_shell": "proc.name in (shells)", "m_spawn": "m_shell and proc.pid > 1"}
    lists = {"shells": ["bash", "sh"]}
    f = comp("m_spawn and not fd.name = x", macros, lists)
    assert f({"proc.name": "sh", "proc.pid": 5}, None) is True
    assert f({"proc.name": "zsh", "proc.pid": 5}, None) is False


def test_undefined_macro_has_position():
    with pytest.raises(UndefinedMacroError) as ei:
        resolve(parse_condition("proc.name = a and nope"), {}, {})
    assert ei.value.pos == 18 and "nope" in str(ei.value)
    with pytest.raises(UndefinedMacroError):
        compile_filter(parse_condition("nope"), FIELDS, all_types=ALL)


def test_macro_cycles():
    macros = {"a": parse_condition("b"), "b": parse_condition("proc.name = x or a")}
    with pytest.raises(MacroCycleError, match="a -> b -> a"):
        resolve(parse_condition("a"), macros, {})
    with pytest.raises(MacroCycleError):
        resolve(parse_condition("self"), {"self": parse_condition("not self")}, {})
    # the same macro twice side by side is not a loop
    t = resolve(parse_condition("c and c"), {"c": parse_condition("proc.pid = 1")}, {})
    assert t == ast.And((parse_condition("proc.pid = 1"),) * 2)


def test_nested_lists_and_quoting():
    lists = {
        "inner": ["a", "'b c'"],
        "outer": ["inner", "d", '"inner"'],  # a quoted item is text, not a list name
        "loop": ["loop", "z"],
    }
    t = resolve(parse_condition("proc.name in (outer, 'inner', loop, e)"), {}, lists)
    assert [(i.text, i.quoted) for i in t.right.items] == [
        ("a", False), ("b c", True), ("d", False), ("inner", True), ("inner", True), ("loop", False), ("z", False),
        ("e", False),
    ]  # fmt: skip


def test_list_names_outside_parentheses():
    lists = {"one": ["bash"], "two": ["bash", "sh"], "none": []}
    assert run("proc.name in two", {"proc.name": "sh"}, lists=lists) is True
    assert run("proc.name = one", {"proc.name": "bash"}, lists=lists) is True  # Falco's text substitution
    assert run("proc.name in none", {"proc.name": "bash"}, lists=lists) is False
    assert run("proc.name in (none, sh)", {"proc.name": "sh"}, lists=lists) is True
    assert run("proc.name = anyof two", {"proc.name": "bash"}, lists=lists) is True
    assert run("proc.name = 'one'", {"proc.name": "one"}, lists=lists) is True  # quoted: not a list
    with pytest.raises(RuleError, match="2 items"):
        resolve(parse_condition("proc.name = two"), {}, lists)
    # YAML numbers and booleans in lists are the text Falco reads
    assert run("fd.sport in (ports)", {"fd.sport": 80}, lists={"ports": [22, 80]}) is True
    assert run("evt.failed in (flags)", {"evt.failed": True}, lists={"flags": [True]}) is True
    # an unresolved name after 'in' is a one-item list of itself, as in libsinsp
    assert run("proc.name in unknown", {"proc.name": "unknown"}) is True


# -- evttypes -----------------------------------------------------------------------------------

EVT_CASES = [
    ("evt.type = open", {"open"}),
    ("evt.type = nosuchtype", set()),
    ("evt.type in (open, openat)", {"open", "openat"}),
    ("evt.type != open", ALL - {"open"}),
    ("not evt.type = open", ALL - {"open"}),
    ("not evt.type != open", {"open"}),
    ("not evt.type in (open, execve)", ALL - {"open", "execve"}),
    ("evt.type in (open, openat) and evt.type != openat", {"open"}),
    ("evt.type = open or evt.type = execve", {"open", "execve"}),
    ("evt.type = open and proc.name = x", {"open"}),
    ("evt.type = open or proc.name = x", None),
    ("not (evt.type = open and proc.name = x)", None),  # not open, or any type
    ("not (evt.type = open or evt.type = execve)", ALL - {"open", "execve"}),
    ("not (evt.type = open or proc.name = x)", ALL - {"open"}),
    ("not proc.name = x", None),
    ("proc.name = x", None),
    ("evt.type exists", None),
    ("not evt.type exists", set()),
    ("evt.type startswith open", None),  # not an evttype operator
    ("evt.type = anyof (open)", None),
    ("evt.num = 0", set()),
    ("evt.num > 0 and evt.type = open", {"open"}),
    ("not evt.num = 0", None),
    ("evt.type = open and evt.type = execve", set()),
]


@pytest.mark.parametrize("cond,expect", EVT_CASES, ids=[c for c, _ in EVT_CASES])
def test_evttypes(cond, expect):
    f = comp(cond)
    assert f.evttypes == (None if expect is None else frozenset(expect))


def test_evttypes_through_macros_and_lists():
    f = comp("spawned and proc.name = x", {"spawned": "evt.type in (kinds)"}, {"kinds": ["execve", "clone"]})
    assert f.evttypes == {"execve", "clone"}


def test_evttype_with_field_or_transformer_is_an_error():
    with pytest.raises(RuleError, match="evt.type"):
        comp("evt.type = val(proc.name)")
    with pytest.raises(RuleError, match="transformer"):
        comp("tolower(evt.type) = open")


def test_default_event_types():
    types = default_event_types()
    assert {"openat", "connect", "execve", "clone", "procexit"} <= types
    f = compile_filter(parse_condition("evt.type = openat"), FIELDS)
    assert f.evttypes == {"openat"}
    assert compile_filter(parse_condition("proc.name = x"), FIELDS).evttypes is None
