"""Under andon's default rules, ordinary work raises no alert.

The workload: compile and run a small C program with gcc, `git init` + commit + `git clone`
of a local repository, Python's http.server answering a few curl requests on 127.0.0.1, and
`apt-get check` / `dpkg -l` on the host (offline: nothing is fetched).

The agent sees the whole machine, and other tests may be running beside this one; so the
workload runs in a session of its own, and a rules file appended after the defaults adds
`and proc.sid = <that session>` to every default rule. A rule's alert for the workload is then
exactly what the default rule alone would have raised for it, and nothing else gets in.
The last step of the workload is one deliberate alert (grep reads /etc/shadow), proving the
agent was watching the session all along: it must be the only alert.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from agent import DEFAULT_RULES, AgentRun

if os.geteuid() != 0:
    pytest.skip("needs root (the live sensor)", allow_module_level=True)
try:
    import andon.rules.compiler  # noqa: F401
    import andon.rules.loader  # noqa: F401
except ImportError as e:
    pytest.skip(f"andon.rules.loader / andon.rules.compiler have not landed yet ({e})", allow_module_level=True)


WORKLOAD = r"""
set -eu
cd "$WORK"

# 1. compile and run a C program
cat > hello.c <<'EOF'
#include <stdio.h>
int main(void) { printf("hello %d\n", 6 * 7); return 0; }
EOF
gcc -O2 -Wall -o hello hello.c
./hello > hello.out

# 2. a git repository, a commit, a clone
git init -q repo
git -C repo -c user.name=andon -c user.email=andon@example.invalid -c commit.gpgsign=false \
    commit -q --allow-empty -m first
echo data > repo/file && git -C repo add file
git -C repo -c user.name=andon -c user.email=andon@example.invalid -c commit.gpgsign=false commit -q -m second
git clone -q "$WORK/repo" clone
test "$(cat clone/file)" = data

# 3. http.server on loopback, a few requests with curl
mkdir www && echo "<h1>$MARK</h1>" > www/index.html
"$PYTHON" -m http.server --bind 127.0.0.1 --directory www "$PORT" > http.log 2>&1 &
srv=$!
for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
for i in 1 2 3; do curl -sf "http://127.0.0.1:$PORT/" | grep -q "$MARK"; done
curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PORT/missing" > code.txt
kill $srv; wait $srv || true

# 4. the package tools, offline
apt-get check -qq
dpkg -l > dpkg.txt
dpkg-query -W -f '${Package}\n' coreutils > /dev/null

# 5. the one deliberate alert
grep -c "$MARK" /etc/shadow || true
echo done
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _only_this_session(sid: int) -> str:
    names = [d["rule"] for d in yaml.safe_load(DEFAULT_RULES.read_text()) if "rule" in d]
    return "".join(
        textwrap.dedent(
            f"""\
            - rule: {name}
              condition: and proc.sid = {sid}
              override:
                condition: append

            """
        )
        for name in names
    )


def test_benign_workload_raises_no_alert(tmp_path: Path) -> None:
    for tool in ("gcc", "git", "curl", "apt-get", "dpkg"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} not installed")
    mark = "andon" + secrets.token_hex(4)
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "workload.sh"
    script.write_text(WORKLOAD)
    env = dict(os.environ, WORK=str(work), MARK=mark, PORT=str(_free_port()), PYTHON=sys.executable, LC_ALL="C")

    # The session leader waits for a line on stdin, so its session id is known before the
    # agent starts (the agent reads it from /proc when it seeds its process table).
    leader = subprocess.Popen(
        ["bash", "-c", 'read -r go; exec bash "$0"', str(script)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        scoped = tmp_path / "only_this_session.yaml"
        scoped.write_text(_only_this_session(leader.pid))
        with AgentRun(["--rules", str(DEFAULT_RULES), "--rules", str(scoped)], ready_timeout=60) as agent:
            out, err = leader.communicate("go\n", timeout=120)
            assert leader.returncode == 0, err
            assert out.strip().endswith("done"), out
            assert (work / "hello.out").read_text() == "hello 42\n"
            assert (work / "code.txt").read_text().strip() == "404"

            expected = agent.wait_for(
                "Sensitive file read by untrusted program", lambda a: mark in str(a["output_fields"].get("proc.cmdline"))
            )
            alerts = agent.settle(2.0)
        assert expected["output_fields"]["fd.name"] == "/etc/shadow"
        unexpected = [(a["rule"], a["output"]) for a in alerts if a is not expected]
        assert unexpected == [], "the benign workload raised alerts:\n" + "\n".join(f"{r}: {o}" for r, o in unexpected)
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
