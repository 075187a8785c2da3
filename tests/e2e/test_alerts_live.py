"""Live proof of the conversion and consumer-lag alerts: a real Prometheus server (Debian's
package) scrapes storepulse while the generator runs. With a conversion drop injected for
live_stream, the paid-conversion alert for live_stream reaches `firing` and no conversion alert
fires for any other channel (one may turn `pending` on noise; `for:` keeps it from firing); in
a run over the same traffic without the injection, no conversion alert fires. The lag alert
stays silent on a healthy run and fires when the processing loop stops.

Event time runs 30 times faster than wall time (the generator's --speed 30), so every
duration in the shipped rules (ranges, offsets, `for:`) is divided by 30 in the copy loaded
here; thresholds and guards are unchanged. One one-minute window then closes every two wall
seconds, and Prometheus scrapes every second, so each window's gauges are scraped even when
the pipeline runs a second behind on a busy machine. (At 60 times, a window per scrape, a
pipeline slowed by a parallel build published windows in bursts; the gauges of the skipped
ones were never scraped and the 15-minute averages of a small channel swung enough to fire.)"""

import os
import re
import subprocess
import time

import yaml
from conftest import STOREPULSE, storepulse, wait_for_port, write_config
from test_prometheus import query, ready, wait_until
from test_rules import PROMTOOL, RULES

SPEED = 30
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CONVERSION_ALERTS = "StorepulsePaidConversionDropWeekOverWeek|StorepulsePaidConversionDropShortTerm|StorepulseCheckoutConversionDrop"


def scaled(duration: str) -> str:
    value, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", duration).groups()
    seconds = int(value) * UNITS[unit] / SPEED
    return f"{round(seconds)}s" if seconds >= 1 else f"{max(1, round(seconds * 1000))}ms"


def scale_rules(text: str) -> str:
    """The shipped rules with every duration divided by SPEED and evaluation every second."""
    text = re.sub(r"\[(\d+(?:ms|[smhdw]))(?::(\d+(?:ms|[smhdw])))?\]",
                  lambda m: f"[{scaled(m[1])}" + (f":{scaled(m[2])}]" if m[2] else "]"), text)
    text = re.sub(r"offset (\d+(?:ms|[smhdw]))", lambda m: f"offset {scaled(m[1])}", text)
    text = re.sub(r"for: (\d+(?:ms|[smhdw]))", lambda m: f"for: {scaled(m[1])}", text)
    return re.sub(r"interval: \d+[smh]", "interval: 1s", text)


def diagnose(url: str) -> dict:
    """What the drop alert looks at, for the log of a failing run."""
    exprs = {
        "window_end": 'max(storepulse_window_end_timestamp_seconds{window="1m"})',
        "ratio_15m": 'storepulse:paid_conversion_15m:ratio{channel="live_stream"}',
        "baseline": f'avg_over_time(storepulse:paid_conversion_15m:ratio{{channel="live_stream"}}[{scaled("2h")}] offset {scaled("30m")})',
        "visitors_15m": 'storepulse:funnel_visitors_15m:sum{channel="live_stream"}',
        "purchasers_baseline": f'avg_over_time(storepulse:purchasers_15m:sum{{channel="live_stream"}}[{scaled("2h")}] offset {scaled("30m")})',
        "alerts": 'ALERTS{channel="live_stream"}',
    }
    result = {}
    for name, expr in exprs.items():
        samples = query(url, expr)
        result[name] = [s["value"][1] if name != "alerts" else s["metric"]["alertname"] + ":" + s["metric"]["alertstate"]
                        for s in samples]
    return result


def start_prometheus(tmp_path, name: str, target: str, rules) -> tuple[subprocess.Popen, str]:
    from conftest import free_port

    directory = tmp_path / f"prometheus-{name}"
    directory.mkdir()
    (directory / "storepulse.rules.yml").write_text(rules)
    config = directory / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [storepulse.rules.yml]
scrape_configs:
  - job_name: storepulse
    static_configs:
      - targets: ["{target}"]
""")
    check = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(directory / "prometheus.log", "wb")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until("Prometheus to be ready", lambda: ready(f"{url}/-/ready"), timeout=60)
    return proc, url


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Stops the processes, the last started first, killing any that outlast a minute."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_conversion_drop_fires_for_its_channel_only_and_not_without_injection(broker, tmp_path):
    rules = scale_rules(RULES.read_text())
    assert "[240s] offset 60s" in rules and "for: 20s" in rules
    procs = []
    servers = {}
    try:
        for scenario in ["drop", "steady"]:
            topics = tuple(f"{scenario}-{stream}" for stream in ("clickstream", "orders", "logistics"))
            broker.create_topics(names=topics)
            # The idle timeout scaled like the rules' durations (30 s / 30): the
            # logistics partitions stay empty for the first event-hour, two wall minutes here.
            config = write_config(tmp_path / f"{scenario}.toml", broker, tmp_path / scenario, f"alerts-{scenario}",
                                  topics=topics, extra="[time]\nidle_timeout_secs = 1\n")
            address = config.read_text().split('listen_addr = "')[1].split('"')[0]
            procs.append(subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            wait_for_port(int(address.rsplit(":", 1)[1]))
            proc, url = start_prometheus(tmp_path, scenario, address, rules)
            procs.append(proc)
            servers[scenario] = (url, topics)

        # Both generators send the same seeded traffic at the same pace (about 65 live_stream
        # purchasers per 15 minutes, over the alert's guard of 30); only the first one makes
        # live_stream payments fail 90 % of the time from 1 h 40 min of event time on. The
        # baseline then has 1 h 10 min of history instead of 2 h, which avg_over_time takes.
        for scenario, (_, topics) in servers.items():
            injection = ["--drop-channel", "live_stream", "--drop-after", "100m", "--drop-for", "2h",
                         "--drop-factor", "0.1"] if scenario == "drop" else []
            procs.append(subprocess.Popen(
                [STOREPULSE, "generate", "--brokers", broker.address, "--clickstream-topic", topics[0],
                 "--orders-topic", topics[1], "--logistics-topic", topics[2], "--count", "260000", "--seed", "8",
                 "--profile", "steady", "--visitors-per-sec", "6", "--speed", str(SPEED), *injection],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        drop_url, steady_url = servers["drop"][0], servers["steady"][0]
        started = time.time()
        last_report = [started]

        def fired():
            if time.time() - last_report[0] >= 20:
                last_report[0] = time.time()
                print(f"{time.time() - started:4.0f}s", diagnose(drop_url))
            return query(drop_url, 'ALERTS{alertname="StorepulsePaidConversionDropShortTerm", '
                                   'channel="live_stream", alertstate="firing"}')

        firing = wait_until("the live_stream paid-conversion alert to fire", fired, timeout=840)
        elapsed = time.time() - started
        print(f"firing after {elapsed:.0f}s wall (~{elapsed * SPEED / 60:.0f} event-minutes): {firing[0]['metric']}")
        span = query(drop_url, 'max(storepulse_window_end_timestamp_seconds{window="1m"}) '
                               '- min(min_over_time(storepulse_window_end_timestamp_seconds{window="1m"}[10m]))')
        assert float(span[0]["value"][1]) / 60 > 100, "it cannot fire before the injected drop starts"

        whole_run = f"[{int(elapsed) + 30}s]"
        # Pending (the condition held briefly) is allowed: `for:` exists to absorb that noise.
        others = query(drop_url, f'count_over_time(ALERTS{{alertname=~"{CONVERSION_ALERTS}", channel!="live_stream", '
                                 f'alertstate="firing"}}{whole_run})')
        assert others == [], f"conversion alerts firing for other channels: {[o['metric'] for o in others]}"
        pending = query(drop_url, f'count_over_time(ALERTS{{alertname=~"{CONVERSION_ALERTS}", channel!="live_stream"}}{whole_run})')
        print("pending, never firing, for other channels:", sorted({p["metric"]["channel"] for p in pending}))
        # The steady run saw the same traffic up to the same event time without a drop.
        assert query(steady_url, 'storepulse:paid_conversion_15m:ratio{channel="live_stream"} > 0.03')
        steady_span = query(steady_url, 'max(storepulse_window_end_timestamp_seconds{window="1m"}) '
                                        '- min(min_over_time(storepulse_window_end_timestamp_seconds{window="1m"}[10m]))')
        assert float(steady_span[0]["value"][1]) / 60 > 100, "the steady run covered the same event time"
        quiet = query(steady_url, f'count_over_time(ALERTS{{alertname=~"{CONVERSION_ALERTS}", alertstate="firing"}}{whole_run})')
        assert quiet == [], f"conversion alerts firing without an injected drop: {[q['metric'] for q in quiet]}"
        # The baseline had the traffic the guards ask for, so silence is the rules' judgement.
        assert query(steady_url, 'storepulse:purchasers_15m:sum{channel="live_stream"} >= 30')
    finally:
        stop_all(procs)


def with_committed_lag_control(rules: str) -> str:
    """The rules plus a control: the consumer-lag alert over the lag from committed offsets, the
    measure it used before, which saws up and down with every checkpoint."""
    document = yaml.safe_load(rules)
    lag_rule = next(rule for group in document["groups"] for rule in group["rules"]
                    if rule.get("alert") == "StorepulseConsumerLagGrowing")
    control = {**lag_rule, "alert": "CommittedLagGrowing",
               "expr": lag_rule["expr"].replace("storepulse_consumer_lag_messages",
                                                "storepulse_consumer_lag_committed_messages")}
    document["groups"].append({"name": "control", "interval": "1s", "rules": [control]})
    return yaml.safe_dump(document, sort_keys=False)


def test_consumer_lag_alert_stays_quiet_while_healthy_and_fires_when_consumption_stops(broker, tmp_path):
    """3,000 events/s with the default 60 s checkpoint interval; the processing loop wedges for
    70 s at its second checkpoint (STOREPULSE_STALL_AT) while the generator goes on. Rule
    durations are divided by 30 as above, which makes the alert quicker to fire on a sawtooth
    than the shipped one, while the checkpoint interval is not."""
    rules = with_committed_lag_control(scale_rules(RULES.read_text()))
    assert "[20s:2s]" in rules and "storepulse_consumer_lag_committed_messages" in rules
    broker.create_topics()
    config = write_config(tmp_path / "lag.toml", broker, tmp_path / "out", "alerts-lag")
    address = config.read_text().split('listen_addr = "')[1].split('"')[0]
    stderr = tmp_path / "storepulse.stderr"
    environment = {**os.environ, "STOREPULSE_CHECKPOINT__INTERVAL_SECS": "60",
                   "STOREPULSE_STALL_AT": "checkpoint-committed:70:2"}
    procs = []
    try:
        with open(stderr, "wb") as err:
            procs.append(subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                          stderr=err, env=environment))
        wait_for_port(int(address.rsplit(":", 1)[1]))
        prometheus, url = start_prometheus(tmp_path, "lag", address, rules)
        procs.append(prometheus)
        procs.append(subprocess.Popen(
            [STOREPULSE, "generate", "--brokers", broker.address, "--count", "900000", "--seed", "3",
             "--profile", "steady", "--rate", "3000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        started = time.time()

        wait_until("the loop to stall at its second checkpoint", lambda: b"stalling" in stderr.read_bytes(),
                   timeout=240)
        stalled = time.time()
        seconds = int(stalled - started)
        healthy = f"[{seconds}s]"
        lag, committed = (query(url, f"max(max_over_time((sum by (topic) ({series}))[{seconds}s:1s]))")
                          for series in ["storepulse_consumer_lag_messages", "storepulse_consumer_lag_committed_messages"])
        print(f"healthy for {stalled - started:.0f}s: peak lag {lag[0]['value'][1]}, "
              f"peak committed lag {committed[0]['value'][1]}")
        consumed = query(url, "sum(storepulse_messages_consumed_total)")
        assert float(consumed[0]["value"][1]) > 100_000, "the healthy phase carried traffic"
        # The control proves the traffic is enough for the rule's threshold and `for:`.
        assert query(url, f'count_over_time(ALERTS{{alertname="CommittedLagGrowing", alertstate="firing"}}{healthy})'), \
            "the committed-offset lag should saw past the rule at a 60 s checkpoint interval"
        quiet = query(url, f'count_over_time(ALERTS{{alertname="StorepulseConsumerLagGrowing"}}{healthy})')
        assert quiet == [], f"the lag alert went {[q['metric']['alertstate'] for q in quiet]} on a healthy run"

        firing = wait_until("the lag alert to fire while the loop is stalled", lambda: query(
            url, 'ALERTS{alertname="StorepulseConsumerLagGrowing", alertstate="firing"}'), timeout=65)
        print(f"firing {time.time() - stalled:.0f}s into the stall: {firing[0]['metric']['topic']}")

        wait_until("the alert to resolve once the loop resumes", lambda: not query(
            url, 'ALERTS{alertname="StorepulseConsumerLagGrowing"}'), timeout=120)
        print(f"resolved {time.time() - stalled:.0f}s after the stall began (it lasts 70s)")
    finally:
        stop_all(procs)
