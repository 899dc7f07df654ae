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


@pytest.fixture()
def wide_dir(tmp_path):
    now = time.time_ns()
    head = '{"Content-Length":"3","Content-Type":"text/html","Date":"Sun, 22 Nov 2026 19:29:08 GMT",' \
           '"Server":"SimpleHTTP/0.6 Python/3.11.7"}'
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        st.append("http_events", [{"time_": now - i * S, "trace_role": 2, "remote_addr": "10.0.0.9",
                                   "req_method": "GET", "req_path": f"/p{i}", "resp_status": 200,
                                   "resp_headers": head, "resp_body": "line one\nline two\n",
                                   "latency": 5_068_120, "comm": "nginx"} for i in range(1, 3)])
    return tmp_path, head


def test_a_table_too_wide_for_the_console_prints_one_record_per_block_with_whole_values(capsys, wide_dir):
    data_dir, head = wide_dir
    rc, out, _ = run(capsys, "px/http_data", "--data-dir", str(data_dir), "--arg", "start_time=-1m")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("http_data (2 rows, one record each: a table would be ")
    assert sum(line.startswith("-[ RECORD ") for line in lines) == 2
    assert all(len(line) <= 160 for line in lines)
    rec = lines[lines.index("-[ RECORD 1 ]---") + 1:lines.index("-[ RECORD 2 ]---")]
    fields = {}
    for line in rec:  # a folded value goes on under itself, past the names' column
        if line[0] != " ":
            name, _, value = line.partition(" ")
            fields[name] = value.strip()
        else:
            fields[name] += line.strip()
    assert fields["req_path"] == "/p1" and fields["latency"] == "5.07 ms" and fields["resp_status"] == "200"
    assert fields["resp_headers"].replace(" ", "") == head.replace(" ", "")  # whole, not cut
    assert fields["resp_body"] == r"line one\nline two\n"  # one line: the newlines as escapes
    assert fields["req_body"] == ""


def test_a_table_that_fits_keeps_a_line_per_row_and_says_what_it_cut(capsys, wide_dir):
    data_dir, head = wide_dir
    rc, out, _ = run(capsys, "--data-dir", str(data_dir), "--sql",
                     "SELECT req_path, resp_headers, resp_body FROM http_events ORDER BY req_path")
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 2  # each row on one line
    cells = [c.strip() for c in rows[0].strip("│").split("│")]
    assert cells[0] == "/p1" and cells[1] == head[:39] + "…" and cells[2] == r"line one\nline two\n"
    assert out.splitlines()[-1] == "2 values longer than 40 characters cut (…): -o records, -o json or -o csv show them whole"
    rc, out, _ = run(capsys, "--data-dir", str(data_dir), "-o", "records", "--sql",
                     "SELECT req_path, resp_body FROM http_events ORDER BY req_path")
    assert rc == 0 and out.splitlines() == [
        "output (2 rows)", "-[ RECORD 1 ]---", r"req_path   /p1", r"resp_body  line one\nline two\n",
        "-[ RECORD 2 ]---", r"req_path   /p2", r"resp_body  line one\nline two\n"]
