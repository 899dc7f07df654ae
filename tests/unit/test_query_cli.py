"""``andon query`` end to end in-process: scripts and SQL, json and csv output, errors."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from andon.cli.main import main
from andon.store import Store, StoreSettings

S = 10**9


@pytest.fixture()
def data_dir(tmp_path):
    now = time.time_ns()
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        st.append("http_events", [{"time_": now - i * S, "trace_role": 2, "remote_addr": "10.0.0.9",
                                   "req_method": "GET", "req_path": "/x" if i % 2 else "/y",
                                   "resp_status": 200, "latency": 1000 * i, "comm": "nginx"} for i in range(1, 11)])
    return tmp_path


def run(capsys, *argv):
    rc = main(["query", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sql_json(capsys, data_dir):
    rc, out, _ = run(capsys, "--data-dir", str(data_dir), "-o", "json", "--sql",
                     "SELECT req_path, count(*) AS n, sum(latency) AS total FROM http_events GROUP BY 1 ORDER BY 1")
    assert rc == 0
    doc = json.loads(out)
    assert doc == [{"table": "output", "columns": ["req_path", "n", "total"],
                    "rows": [{"req_path": "/x", "n": 5, "total": 25000}, {"req_path": "/y", "n": 5, "total": 30000}]}]


def test_script_csv_with_args(capsys, data_dir):
    rc, out, _ = run(capsys, "px/http_data", "--data-dir", str(data_dir), "-o", "csv", "--arg", "num_head=3",
                     "--arg", "start_time=-1m")
    assert rc == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:4] == ["time_", "source", "destination", "latency"]
    assert len(rows) == 4 and all(r[1:3] == ["10.0.0.9", "nginx"] for r in rows[1:])
    assert rows[1][0].endswith("Z") and rows[1][0][4] == "-"  # times printed as RFC 3339


def test_table_pick_and_stdin(capsys, data_dir, monkeypatch):
    script = ("import px\ndf = px.DataFrame(table='http_events', start_time='-1m')\n"
              "px.display(df.groupby('req_path').agg(n=('latency', px.count)), 'paths')\n"
              "px.display(df.agg(mx=('latency', px.max)), 'max')\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    rc, out, _ = run(capsys, "-", "--data-dir", str(data_dir), "-o", "json", "--table", "max")
    assert rc == 0 and json.loads(out) == [{"table": "max", "columns": ["mx"], "rows": [{"mx": 10000}]}]
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    rc, out, _ = run(capsys, "-", "--data-dir", str(data_dir), "-o", "csv")
    assert out == "# paths\nreq_path,n\n/x,5\n/y,5\n\n# max\nmx\n10000\n"


def test_table_output_and_errors(capsys, data_dir, tmp_path):
    rc, out, _ = run(capsys, "--data-dir", str(data_dir), "--sql", "SELECT 41 + 1 AS answer")
    assert rc == 0 and "answer" in out and "42" in out
    bad = tmp_path / "bad.pxl"
    bad.write_text("import px\ndf = px.DataFrame(table='http_events')\nx = df.nope\n")
    rc, _, err = run(capsys, str(bad), "--data-dir", str(data_dir))
    assert rc == 1 and "bad.pxl:3:5: unknown column 'nope'" in err and "Traceback" not in err
    rc, _, err = run(capsys, "--data-dir", str(data_dir), "--sql", "SELECT * FROM nope_events")
    assert rc == 1 and "SQL error" in err
    rc, _, err = run(capsys, "px/http_data", "--data-dir", str(tmp_path / "missing"))
    assert rc == 2 and "no data directory" in err
    rc, _, err = run(capsys, "--data-dir", str(data_dir))
    assert rc == 2
