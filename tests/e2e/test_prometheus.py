"""The /metrics endpoint as a real Prometheus server sees it (Debian's prometheus package),
checked by `promtool check metrics` for naming problems."""

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from conftest import STOREPULSE, free_port, storepulse, wait_for_port, write_config
from test_rules import queried_metrics

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def query(prometheus: str, expr: str) -> list[dict]:
    body = json.loads(get(f"{prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


def ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def wait_until(what: str, check, timeout: float = 90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prometheus_server(tmp_path):
    """Starts Prometheus scraping the given target every second; yields its base URL."""
    procs = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: storepulse
    static_configs:
      - targets: ["{target}"]
""")
        subprocess.run([PROMTOOL, "check", "config", str(config)], check=True, capture_output=True)
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        wait_until("Prometheus to be ready", lambda: ready(f"{url}/-/ready"), timeout=60)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def test_prometheus_scrapes_every_family_and_promtool_finds_no_problem(broker, prometheus_server, tmp_path):
    broker.create_topics()
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", broker, out, "e2e-prometheus", extra="max_values_per_label = 3\n")
    metrics_addr = config.read_text().split('listen_addr = "')[1].split('"')[0]
    proc = subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(int(metrics_addr.rsplit(":", 1)[1]))
        prometheus = prometheus_server(metrics_addr)
        wait_until("the target to be up", lambda: query(prometheus, 'up{job="storepulse"} == 1'))

        # Before the first message: lag of every partition of every topic, from 0.
        lag = wait_until("lag for all 12 partitions",
                         lambda: (r := query(prometheus, "storepulse_consumer_lag_messages")) and len(r) == 12 and r)
        assert {s["metric"]["topic"] for s in lag} == {"clickstream", "orders", "logistics"}
        assert all(float(s["value"][1]) == 0 for s in lag)

        storepulse("generate", "--brokers", broker.address, "--count", 20_000, "--seed", 21, "--profile", "steady",
                   "--visitors-per-sec", "0.05")
        wait_until("events decoded", lambda: query(prometheus, "sum(storepulse_events_decoded_total) >= 19000"))
        wait_until("a checkpoint", lambda: query(prometheus, "storepulse_checkpoint_duration_seconds_count > 0"))
        wait_until("watermarks", lambda: len(query(prometheus, "storepulse_watermark_timestamp_seconds")) == 12)
        assert len(query(prometheus, "storepulse_event_time_lag_seconds > 0")) == 12
        wait_until("files committed", lambda: query(prometheus, "sum(storepulse_parquet_files_committed_total) > 0"))
        wait_until("the orders gauge", lambda: query(prometheus, 'storepulse_orders_paid{channel="all",window="1h"} > 0'))

        # The series budget: the generator's warehouses exceed 3, so some fold into "other".
        wait_until("fulfillment series", lambda: query(prometheus, "storepulse_fulfillment_backlog_orders"))
        warehouses = {s["metric"]["warehouse"] for s in query(prometheus, "storepulse_fulfillment_backlog_orders")}
        assert warehouses - {"all", "other"} and len(warehouses - {"all", "other"}) <= 3, warehouses
        assert "other" in warehouses
        assert query(prometheus, 'storepulse_label_values_folded_total{label="warehouse"} > 0')

        exposition = get(f"http://{metrics_addr}/metrics")
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr
        exported = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}
        missing = {name for name in queried_metrics()
                   if name not in exported and re.sub(r"_(bucket|sum|count)$", "", name) not in exported}
        assert not missing, f"the alert rules query metrics storepulse does not export: {missing}"
        assert get(f"http://{metrics_addr}/healthz") == "ok\n"
        assert get(f"http://{metrics_addr}/readyz") == "ready\n"

        # A second instance joins the group: each exports series only for the partitions it
        # owns, and the first drops those it gave away; when the second leaves, they return.
        second_config = write_config(tmp_path / "c2.toml", broker, tmp_path / "out2", "e2e-prometheus")
        second_addr = second_config.read_text().split('listen_addr = "')[1].split('"')[0]
        second = subprocess.Popen([STOREPULSE, "run", "--config", str(second_config)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_for_port(int(second_addr.rsplit(":", 1)[1]))

            def shared():
                first, other = owned(metrics_addr), owned(second_addr)
                return first and other and not first & other and len(first | other) == 12 and (first, other)

            first, _ = wait_until("the partitions to be shared", shared, timeout=120)
            assert owned(metrics_addr, "storepulse_watermark_timestamp_seconds") <= first
        finally:
            second.terminate()
            second.wait(timeout=60)
        wait_until("the partitions to return", lambda: len(owned(metrics_addr)) == 12, timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def owned(addr: str, family: str = "storepulse_consumer_lag_messages") -> set[tuple[str, str]]:
    """(topic, partition) of every series of `family` an instance exports."""
    series = set()
    for line in get(f"http://{addr}/metrics").splitlines():
        if line.startswith(family + "{"):
            labels = dict(part.split("=", 1) for part in line[len(family) + 1:line.index("}")].split(","))
            series.add((labels["topic"].strip('"'), labels["partition"].strip('"')))
    return series
