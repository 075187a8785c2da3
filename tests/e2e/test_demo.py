"""The README's first command: the embedded demo runs, serves /metrics while it runs, exits 0
and leaves Delta tables that DuckDB reads with non-zero visitors, the windows its end closed
early marked partial, checkpoints no larger than them, and a query hint that works; a second
demo into the same directory refuses to add to it."""

import re
import shlex
import subprocess
import sys
import time
import urllib.request

import duckdb
from conftest import STOREPULSE, free_port, storepulse, wait_for_port
from oracle import TABLES, data_files, table


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_demo_serves_metrics_while_running_and_leaves_readable_parquet(tmp_path):
    port = free_port()
    out = tmp_path / "data"
    proc = subprocess.Popen([STOREPULSE, "demo", "--duration", "60s", "--out", str(out), "--metrics-addr", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        visitors = paid = paid_latencies = 0
        deadline = time.time() + 50
        while time.time() < deadline and 0 in (visitors, paid, paid_latencies):
            status, body = get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200 and "storepulse_messages_consumed_total" in body
            paid_latencies = 0
            for line in body.splitlines():
                value = line.rsplit(" ", 1)[-1]
                if line.startswith('storepulse_funnel_visitors{channel="all",device="all",window="1m"}'):
                    visitors = float(value)
                elif line.startswith('storepulse_orders_paid{channel="all",window="1m"}'):
                    paid = float(value)
                elif line.startswith("storepulse_order_created_to_paid_seconds_count{"):
                    paid_latencies += float(value)
            time.sleep(1)
        assert visitors > 0, "the all-channel visitors gauge never moved"
        assert paid > 0, "the all-channel paid orders gauge never moved"
        assert paid_latencies > 0, "no created-to-paid latency was observed"
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "paid conversion" in output
    con = duckdb.connect()
    total = con.execute(f"""SELECT sum(visitors) FROM {table(out, 'funnel')}
                            WHERE window_size = '1m' AND channel = 'all' AND device = 'all'""").fetchone()[0]
    assert total and total > 0
    sessions = con.execute(f"SELECT count(*), count(*) FILTER (WHERE engaged) FROM {table(out, 'sessions')}").fetchone()
    assert sessions[0] > 0 and 0 < sessions[1] <= sessions[0]
    orders = con.execute(f"SELECT sum(orders_paid), sum(paying_buyers) FROM {table(out, 'orders')} WHERE window_size = '1m' AND channel = 'all'").fetchone()
    assert orders[0] > 0 and 0 < orders[1] <= orders[0]
    facts = con.execute(f"SELECT count(*), count(paid_at) FROM {table(out, 'order_facts')}").fetchone()
    assert facts[0] >= facts[1] > 0, "every order of the demo is in order_facts at the end"
    backlog = con.execute(f"""SELECT max(b) FROM (SELECT window_end, sum(backlog_orders) AS b FROM {table(out, 'fulfillment')}
                              WHERE window_size = '1m' AND carrier = 'all' AND warehouse = 'all' GROUP BY ALL)""").fetchone()[0]
    assert backlog > 0, "an hour into Double 11 no parcel has been picked up yet: the backlog shows it"

    # The demo's end drains the windows still open: those rows, and only those, are partial.
    early = con.execute(f"""SELECT count(*) FILTER (WHERE partial), count(*) FILTER (WHERE partial AND window_start <= (
                                SELECT max(window_start) FROM {table(out, 'funnel')} AS c
                                WHERE NOT c.partial AND c.window_size = f.window_size AND c.source_partition = f.source_partition))
                             FROM {table(out, 'funnel')} AS f""").fetchone()
    assert early[0] > 0 and early[1] == 0, f"{early[0]} partial funnel rows, {early[1]} before a complete window"

    tables = sum(f.stat().st_size for name in TABLES if (out / name).exists() for f in (out / name).rglob("*") if f.is_file())
    checkpoints = sum(f.stat().st_size for f in (out / "_checkpoints").rglob("*") if f.is_file())
    print(f"tables {tables} bytes, checkpoints {checkpoints} bytes")
    assert checkpoints <= tables, "superseded checkpoint state is removed as the demo goes"
    assert not (out / "_staging").exists(), "no staging directories are left behind"

    # The query the demo prints runs as printed (with this interpreter).
    hint = re.search(r"^query it: python3 (.*)$", output, re.M)[1]
    query = subprocess.run([sys.executable, *shlex.split(hint)[:2]], capture_output=True, text=True, timeout=120)
    assert query.returncode == 0 and "visitors" in query.stdout, query.stderr[-2000:]


def test_a_second_demo_into_the_same_directory_refuses_and_fresh_starts_over(tmp_path):
    out = tmp_path / "data"
    demo = ["demo", "--duration", "8s", "--out", out, "--metrics-addr", f"127.0.0.1:{free_port()}"]
    storepulse(*demo)
    funnel = duckdb.execute(f"SELECT count(*) FROM {table(out, 'funnel')}").fetchone()[0]
    again = storepulse(*demo, check=False)
    assert again.returncode != 0 and "--fresh" in again.stderr, again.stderr[-2000:]
    assert duckdb.execute(f"SELECT count(*) FROM {table(out, 'funnel')}").fetchone()[0] == funnel, "nothing was added"

    started = time.time()
    fresh = storepulse(*demo, "--fresh")
    assert "emptied" in fresh.stdout
    files = data_files(out, "funnel")
    assert files and all(f.stat().st_mtime >= started - 1 for f in files), "only the fresh run's rows"

    (out / "notes.txt").write_text("not storepulse's")
    refused = storepulse(*demo, "--fresh", check=False)
    assert refused.returncode != 0 and "notes.txt" in refused.stderr, refused.stderr[-2000:]
    assert (out / "notes.txt").exists() and (out / "funnel" / "_delta_log").exists(), "nothing was emptied"
