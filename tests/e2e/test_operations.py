"""What an operator sees when things are wrong: an unreachable broker and an invalid config."""

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

from conftest import STOREPULSE, free_port, storepulse, wait_for_port


def test_unreachable_broker_warns_every_10s_is_not_ready_and_stops_cleanly(tmp_path):
    dead_port, metrics_port = free_port(), free_port()
    config = tmp_path / "c.toml"
    config.write_text(f'[kafka]\nbrokers = "127.0.0.1:{dead_port}"\n[output]\ndir = "{tmp_path / "out"}"\n'
                      f'[metrics]\nlisten_addr = "127.0.0.1:{metrics_port}"\n')
    proc = subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(metrics_port)
        time.sleep(17)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5)
            raise AssertionError("/readyz must not answer 200 without a broker")
        except urllib.error.HTTPError as error:
            assert error.code == 503
            assert "no Kafka broker connection" in error.read().decode()
        assert proc.poll() is None, "an unreachable broker must not crash the process"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert output.count("cannot reach any Kafka broker") >= 1 and "all Kafka brokers are down" in output, output[-3000:]
    # librdkafka reports the outage at every reconnect (about 40 a second): one line per kind
    # every 10 s, saying how many it held back.
    warnings = [line for line in output.splitlines() if " WARN " in line]
    assert len(warnings) <= 15, f"{len(warnings)} warnings in about 20 s:\n" + "\n".join(warnings[:40])
    assert any("suppressed=" in line and "suppressed=0" not in line for line in warnings), output[-3000:]
    assert "\x1b[" not in output, "no colour codes when stderr is not a terminal"


def test_json_log_format_writes_one_object_per_line(tmp_path):
    dead_port, metrics_port = free_port(), free_port()
    config = tmp_path / "c.toml"
    config.write_text(f'[kafka]\nbrokers = "127.0.0.1:{dead_port}"\n[output]\ndir = "{tmp_path / "out"}"\n'
                      f'[metrics]\nlisten_addr = "127.0.0.1:{metrics_port}"\n')
    proc = subprocess.Popen([STOREPULSE, "--log-format", "json", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(metrics_port)
        time.sleep(6)
        proc.send_signal(signal.SIGTERM)
        _, logs = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert all({"timestamp", "level", "message", "target"} <= line.keys() for line in lines), logs[-2000:]
    starting = next(line for line in lines if line["message"] == "storepulse starting")
    assert starting["brokers"] == f"127.0.0.1:{dead_port}", starting
    assert any(line["level"] == "WARN" and line["message"].startswith("cannot reach any Kafka broker") for line in lines)


def test_invalid_config_stops_startup_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[time]\nwindow_secs = 7\n")
    result = storepulse("run", "--config", config, check=False, timeout=30)
    assert result.returncode == 2
    assert "time.window_secs" in result.stderr
    config.write_text("[kafka]\nbrokerz = 'x'\n")
    result = storepulse("run", "--config", config, check=False, timeout=30)
    assert result.returncode == 2 and "brokerz" in result.stderr
