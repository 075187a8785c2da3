"""What an operator sees when things are wrong: an unreachable broker, an invalid config, a
wedged processing loop."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from conftest import STOREPULSE, free_port, storepulse, wait_for_port, write_config


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


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_liveness_fails_while_the_loop_is_stalled_and_recovers(broker, tmp_path):
    """The loop hangs for 25 s at a checkpoint (as on a storage call that does not return):
    /healthz answers 503 once it has been silent for metrics.liveness_timeout_secs (10), and
    200 again when it comes round."""
    broker.create_topics()
    storepulse("generate", "--brokers", broker.address, "--count", 2_000, "--seed", 3)
    config = write_config(tmp_path / "c.toml", broker, tmp_path / "out", "liveness", extra="liveness_timeout_secs = 10\n")
    port = int(re.search(r'listen_addr = "127.0.0.1:(\d+)"', config.read_text()).group(1))
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "STOREPULSE_STALL_AT": "checkpoint-committed:25"})
    try:
        wait_for_port(port)
        timeline, stall_started = [], None
        deadline = time.time() + 90
        while time.time() < deadline:
            now = time.time()
            if stall_started is None and "stalling 25 s" in log.read_text():
                stall_started = now
            timeline.append((now, healthz(port)))
            if stall_started and now > stall_started + 30 and timeline[-1][1] == 200:
                break
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert stall_started is not None, log.read_text()[-3000:]
    before = [status for at, status in timeline if at < stall_started]
    failing = [at for at, status in timeline if status == 503]
    assert before and set(before) == {200}, timeline
    assert failing, "/healthz never failed while the loop was stalled"
    assert stall_started + 9 <= failing[0] <= stall_started + 14, (failing[0] - stall_started, timeline)
    assert failing[-1] <= stall_started + 27, (failing[-1] - stall_started, timeline)
    assert timeline[-1][1] == 200, timeline
    print(f"/healthz failed {failing[0] - stall_started:.1f} s into a 25 s stall, recovered after {failing[-1] - stall_started:.1f} s")


def is_closed(sock) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def drip(sockets, seconds: float) -> None:
    """Sends one more header byte to every socket each second, as a slow client would."""
    for _ in range(int(seconds)):
        for sock in sockets:
            try:
                sock.send(b"X")
            except OSError:
                pass
        time.sleep(1)


def test_slow_clients_are_cut_off_and_cannot_exhaust_the_endpoint(tmp_path):
    """200 clients that never finish their headers: at most 64 connections are kept, each at most
    10 s without complete headers; /metrics answers again once they are cut off."""
    dead_port, metrics_port = free_port(), free_port()
    config = tmp_path / "c.toml"
    config.write_text(f'[kafka]\nbrokers = "127.0.0.1:{dead_port}"\n[output]\ndir = "{tmp_path / "out"}"\n'
                      f'[metrics]\nlisten_addr = "127.0.0.1:{metrics_port}"\n')
    proc = subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow = []
    try:
        wait_for_port(metrics_port)
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", metrics_port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        drip(slow, 2)
        kept = sum(not is_closed(sock) for sock in slow)
        assert kept <= 64, f"{kept} slow connections kept open"
        drip(slow, 10)
        still_open = sum(not is_closed(sock) for sock in slow)
        assert still_open == 0, f"{still_open} slow connections still open after the header timeout"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert response.status == 200 and b"storepulse_build_info" in response.read()
        assert proc.poll() is None
        print(f"200 slow clients: {kept} kept at most, none left after 12 s")
    finally:
        for sock in slow:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
