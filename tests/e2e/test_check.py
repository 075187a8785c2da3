"""`run --check` refuses everything `run` refuses, with exit code 2 and a message naming the key:
a suite of bad configurations, each given to both. `run` must stop at once on each (a broker is
never reached: the configurations name none that answers)."""

import socket

from conftest import free_port, storepulse

SECRET = "s3cr3t-do-not-print"


def bad_configs(tmp_path) -> list[tuple[str, str, str, dict]]:
    """(name, TOML, key the error must name, extra environment)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return [
        ("window size not dividing a day", "[time]\nwindow_secs = 7\n", "time.window_secs", {}),
        ("no window size", "[time]\nwindow_secs = []\n", "time.window_secs", {}),
        ("unknown key", "[kafka]\nbrokerz = 'x'\n", "brokerz", {}),
        ("malformed broker list", "[kafka]\nbrokers = '::::,,,'\n", "kafka.brokers", {}),
        ("empty broker list", "[kafka]\nbrokers = ''\n", "kafka.brokers", {}),
        ("broker port out of range", "[kafka]\nbrokers = 'kafka:99999'\n", "kafka.brokers", {}),
        ("empty group", "[kafka]\ngroup_id = ' '\n", "kafka.group_id", {}),
        ("unknown librdkafka property", "[kafka.client]\n'no.such.property' = '1'\n", "kafka.client", {}),
        ("bad librdkafka value", "[kafka.client]\n'session.timeout.ms' = 'soon'\n", "kafka.client", {}),
        ("bad librdkafka enum", "[kafka.client]\n'security.protocol' = 'carrier-pigeon'\n", "kafka.client", {}),
        ("reserved librdkafka key", "[kafka.client]\n'enable.auto.commit' = 'true'\n", "enable.auto.commit", {}),
        ("missing secret", "[kafka.client]\n'sasl.password' = 'env:STOREPULSE_TEST_UNSET_SECRET'\n", "sasl.password", {}),
        ("empty topic", "[topics]\nclickstream = ''\n", "topics.clickstream", {}),
        ("same topic twice", "[topics]\norders = 'clickstream'\n", "topics", {}),
        ("dead-letter topic is an input", "[topics]\ndead_letter = 'orders'\n", "topics.dead_letter", {}),
        ("registry not http", "[codec]\nschema_registry_url = 'ftp://registry'\n", "codec.schema_registry_url", {}),
        ("schema directory missing", "[codec]\nwriter_schemas_dir = '/nonexistent/schemas'\n", "codec.writer_schemas_dir", {}),
        ("unknown wire format", "[codec]\nformat = 'xml'\n", "format", {}),
        ("bad accepted record name", "[codec.accepted_record_names]\norders = ['not a name']\n",
         "codec.accepted_record_names.orders", {}),
        ("zero amount bound", "[validation]\nmax_amount_minor = 0\n", "validation.max_amount_minor", {}),
        ("unit sum overflows", "[validation]\nmax_line_quantity = 10000000\nmax_order_lines = 1000\n",
         "validation.max_order_lines", {}),
        ("bad min event time", "[validation]\nmin_event_time = 'yesterday'\n", "validation.min_event_time", {}),
        ("zero session gap", "[time]\nsession_gap_secs = 0\n", "time.session_gap_secs", {}),
        ("session guard below gap", "[time]\nsession_gap_secs = 600\nsession_max_length_secs = 60\n",
         "time.session_max_length_secs", {}),
        ("no dedupe memory", "[time]\ndedupe_max_ids_per_partition = 0\n", "time.dedupe_max_ids_per_partition", {}),
        ("jump guard of one event", "[time]\nwatermark_corroborating_events = 1\n", "time.watermark_corroborating_events", {}),
        ("order TTL below a window", "[orders]\nterminal_ttl_secs = 60\n", "orders.terminal_ttl_secs", {}),
        ("output under a file", f"[output]\ndir = '{a_file}/out'\n", "output.dir", {}),
        ("output not writable", "[output]\ndir = '/proc/storepulse-out'\n", "output.dir", {}),
        ("unknown table format", "[output]\nformat = 'csv'\n", "format", {}),
        ("zero checkpoint interval", "[checkpoint]\ninterval_secs = 0\n", "checkpoint.interval_secs", {}),
        ("buffer below 1 MiB", "[checkpoint]\nmax_buffered_bytes = 1000\n", "checkpoint.max_buffered_bytes", {}),
        ("listen address not host:port", "[metrics]\nlisten_addr = 'everywhere'\n", "metrics.listen_addr", {}),
        ("listen address not on this host", "[metrics]\nlisten_addr = '192.0.2.1:9464'\n", "metrics.listen_addr", {}),
        ("listen address in use", "[metrics]\nlisten_addr = '127.0.0.1:{busy}'\n", "metrics.listen_addr", {}),
        ("zero label budget", "[metrics]\nmax_values_per_label = 0\n", "metrics.max_values_per_label", {}),
        ("liveness timeout too short", "[metrics]\nliveness_timeout_secs = 1\n", "metrics.liveness_timeout_secs", {}),
        ("syntax error holding a secret", f"[kafka.client]\n'sasl.password' = \"{SECRET}\n", "line 4, column", {}),
        ("bad value from the environment", "", "time.window_secs", {"STOREPULSE_TIME__WINDOW_SECS": "7"}),
        ("unknown key from the environment", "", "STOREPULSE_KAFKA__BROKERZ", {"STOREPULSE_KAFKA__BROKERZ": "x"}),
    ]


def test_check_refuses_every_configuration_run_refuses(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    rows = []
    try:
        for name, body, key, env in bad_configs(tmp_path):
            body = body.replace("{busy}", str(busy.getsockname()[1]))
            # A broker nothing listens on: `run` would wait for it forever if it started.
            base = f"[kafka]\nbrokers = '127.0.0.1:{free_port()}'\n" if "[kafka]" not in body else ""
            if "[metrics]" not in body:
                body += f"\n[metrics]\nlisten_addr = '127.0.0.1:{free_port()}'\n"
            if "[output]" not in body:
                body += f"\n[output]\ndir = '{tmp_path / 'out'}'\n"
            config = tmp_path / f"{len(rows)}.toml"
            config.write_text(base + body)
            check = storepulse("run", "--check", "--config", config, check=False, timeout=30, env=env)
            run = storepulse("run", "--config", config, check=False, timeout=30, env=env)
            rows.append((name, check.returncode, run.returncode))
            for mode, result in (("--check", check), ("run", run)):
                assert result.returncode == 2, f"{name}: {mode} exited {result.returncode}\n{result.stderr[-2000:]}"
                assert key in result.stderr, f"{name}: {mode} does not name {key}\n{result.stderr[-2000:]}"
                assert SECRET not in result.stderr + result.stdout, f"{name}: {mode} printed the secret"
    finally:
        busy.close()
    assert len(rows) >= 30
    print("\n| configuration | --check | run |\n|---|---|---|")
    for name, check, run in rows:
        print(f"| {name} | {check} | {run} |")
