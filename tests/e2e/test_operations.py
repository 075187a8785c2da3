"""What an operator sees when things are wrong: an unreachable broker and an invalid config."""

import signal
import subprocess
import time
import urllib.error
import urllib.request

from conftest import STOREPULSE, free_port, storepulse, wait_for_port


def test_unreachable_broker_warns_repeatedly_is_not_ready_and_stops_cleanly(tmp_path):
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


def test_invalid_config_stops_startup_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[time]\nwindow_secs = 7\n")
    result = storepulse("run", "--config", config, check=False, timeout=30)
    assert result.returncode == 2
    assert "time.window_secs" in result.stderr
    config.write_text("[kafka]\nbrokerz = 'x'\n")
    result = storepulse("run", "--config", config, check=False, timeout=30)
    assert result.returncode == 2 and "brokerz" in result.stderr
