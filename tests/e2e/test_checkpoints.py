"""Checkpoints and exactly-once output against a real broker: kill -9 at random points and
restart, SIGTERM and restart, and two instances of one consumer group where one leaves or is
killed. Each run's
Parquet must equal, row for row, a single uninterrupted run over the same events, and the SQL
oracle over the generator's events file.

Dead letters are compared without `rejected_at` (and its dt/hour partition): it is the wall
clock of the rejection, which a replay after a crash repeats at a later time."""

import contextlib
import json
import pathlib
import random
import re
import signal
import subprocess
import time
import urllib.request

import duckdb
import pytest
from conftest import STOREPULSE, TANSU, Broker, free_port, storepulse, wait_for_port, write_config
from oracle import (TABLES, facts_from_events, facts_from_parquet, funnel_from_events, funnel_from_parquet,
                    load_commerce, load_events, orders_from_events, orders_from_parquet, rows, sessions_from_events,
                    sessions_from_parquet, snapshot)

# Traffic with duplicates, out-of-order and malformed messages; no deliberately late events (a
# late logistics event makes a window's backlog depend on how two partitions interleaved).
TRAFFIC = ["--profile", "steady", "--visitors-per-sec", "0.5", "--duplicate-fraction", "0.01",
           "--out-of-order-fraction", "0.02", "--out-of-order-max", "3s", "--malformed-fraction", "0.002"]
CONSUMED = re.compile(r"consumed (\d+) messages")


def produce(broker, tmp_path: pathlib.Path, count: int, seed: int) -> pathlib.Path:
    broker.create_topics()
    events = tmp_path / "events.jsonl"
    storepulse("generate", "--brokers", broker.address, "--count", count, "--seed", seed, *TRAFFIC,
               "--events-file", events)
    return events


def config(tmp_path: pathlib.Path, broker, out: pathlib.Path, group: str, interval: int = 1, extra: str = "",
           name: str = "") -> pathlib.Path:
    path = write_config(tmp_path / f"{name or group}.toml", broker, out, group, extra)
    path.write_text(path.read_text().replace("interval_secs = 5", f"interval_secs = {interval}"))
    return path


def reference(broker, tmp_path: pathlib.Path) -> tuple[pathlib.Path, int]:
    """An uninterrupted bounded run: its output and how many messages it consumed."""
    out = tmp_path / "reference"
    result = storepulse("run", "--config", config(tmp_path, broker, out, "reference", interval=5), "--bounded")
    return out, consumed(result.stderr)


def consumed(stderr: str) -> int:
    return int(CONSUMED.findall(stderr)[-1])


def committed_messages(out: pathlib.Path) -> int:
    """Messages covered by the newest checkpoint of every task (sum of their offsets)."""
    newest: dict[str, dict] = {}
    for path in (out / "_checkpoints" / "manifests").glob("*/*.json"):
        try:
            manifest = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        for name, task in manifest["tasks"].items():
            if name not in newest or task["epoch"] >= newest[name]["epoch"]:
                newest[name] = task
    return sum(sum(task["offsets"].values()) for task in newest.values())


def checkpoints_of(out: pathlib.Path, pid: int) -> int:
    """Manifests written by the process `pid` (each process writes under `<start>-<pid>`)."""
    return sum(len(list(d.glob("*.json"))) for d in (out / "_checkpoints" / "manifests").glob(f"*-{pid}"))


def assert_same_output(actual: pathlib.Path, expected: pathlib.Path) -> None:
    want, got = snapshot(expected), snapshot(actual)
    for name in TABLES:
        # Only the rows that differ: pytest's diff of two whole tables would bury them (CI prints it all).
        if got[name] != want[name]:
            pytest.fail(f"{name}: {len(got[name])} rows, uninterrupted run has {len(want[name])}; "
                        f"{differing_rows(got[name], want[name])}")
    assert sum(len(v) for v in want.values()) > 1_000


def differing_rows(got: list[tuple], want: list[tuple], limit: int = 10) -> str:
    extra = sorted(set(got) - set(want), key=repr)
    missing = sorted(set(want) - set(got), key=repr)
    return (f"{len(extra)} rows only in this run, first {extra[:limit]}; "
            f"{len(missing)} only in the uninterrupted run, first {missing[:limit]}")


def assert_matches_oracle(out: pathlib.Path, events: pathlib.Path) -> None:
    con = duckdb.connect()
    load_events(con, events)
    assert funnel_from_parquet(con, out) == rows(funnel_from_events(con))
    assert sessions_from_parquet(con, out) == rows(sessions_from_events(con))
    load_commerce(con, out)
    assert orders_from_parquet(con, out) == rows(orders_from_events(con))
    assert facts_from_parquet(con, out) == rows(facts_from_events(con))


@contextlib.contextmanager
def running(config_path: pathlib.Path, log_path: pathlib.Path):
    """`storepulse run` in the background, its log in `log_path`; killed if still running on exit."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([STOREPULSE, "run", "--config", str(config_path)], stdout=subprocess.DEVNULL,
                                stderr=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def metrics_port(path: pathlib.Path) -> int:
    return int(re.search(r'listen_addr = "127\.0\.0\.1:(\d+)"', path.read_text()).group(1))


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


def consumed_so_far(port: int) -> int:
    return int(sum(float(v) for v in re.findall(r"^storepulse_messages_consumed_total\{[^}]*\} (\S+)$", scrape(port), re.M)))


def test_kill_9_ten_times_then_restart_equals_an_uninterrupted_run(broker, tmp_path):
    events = produce(broker, tmp_path, 200_000, seed=21)
    expected, total = reference(broker, tmp_path)
    out = tmp_path / "crashing"
    rng = random.Random(8)
    killed_mid_run, run = 0, 0
    progress = []
    # A new consumer group per start: tansu keeps a SIGKILLed member in its group for minutes,
    # and the state and offsets come from the checkpoints on storage, not from the group.
    # Each run is killed at a random point of the input, not of the clock, so a faster machine
    # or build cannot finish the input before the tenth kill. A run restarts from the checkpoint
    # and is killed once it has read up to the next point (points too close to the checkpoint
    # kill it in start-up or before its first checkpoint).
    points = sorted(int(rng.uniform(0.02, 0.95) * total) for _ in range(10))
    while killed_mid_run < 10 and run < 30:
        path = config(tmp_path, broker, out, f"crash-{run}")
        proc = subprocess.Popen([STOREPULSE, "run", "--config", str(path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        start, deadline = committed_messages(out), time.time() + 120
        while start + consumed_so_far(metrics_port(path)) < points[killed_mid_run]:
            assert proc.poll() is None, f"run {run} exited by itself ({proc.returncode})"
            assert time.time() < deadline, f"run {run} did not reach message {points[killed_mid_run]} in 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        covered = committed_messages(out)
        killed_mid_run += covered < total
        progress.append(covered)
        run += 1
    final = storepulse("run", "--config", config(tmp_path, broker, out, "crash-final"), "--bounded")
    print(f"{total} messages; killed {run} times ({killed_mid_run} before the end); messages covered by the "
          f"checkpoint after each kill: {progress}; the final run consumed {consumed(final.stderr)}")
    assert killed_mid_run >= 10
    assert progress[-1] > progress[0], "checkpoints advance between kills"
    assert "partition tasks restored" in final.stderr and " 0 partition tasks restored" not in final.stderr
    assert_same_output(out, expected)
    assert_matches_oracle(out, events)
    assert not list(out.glob("*/*/*/*.tmp")), "no temporary files among the tables"


def test_sigterm_takes_a_final_checkpoint_and_the_restart_reprocesses_nothing(broker, tmp_path):
    produce(broker, tmp_path, 60_000, seed=22)
    expected, total = reference(broker, tmp_path)
    out = tmp_path / "stopped"
    # A long interval: only the checkpoint taken on SIGTERM can cover what the first run consumed.
    path = config(tmp_path, broker, out, "sigterm", interval=300)
    port = metrics_port(path)
    proc = subprocess.Popen([STOREPULSE, "run", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: proc.poll() is not None or consumed_so_far(port) >= total // 4, 120, "consumption")
    proc.send_signal(signal.SIGTERM)
    stopped_at = time.time()
    _, stderr = proc.communicate(timeout=60)
    took = time.time() - stopped_at
    assert proc.returncode == 0, stderr[-3000:]
    first = consumed(stderr)
    assert 0 < first < total, f"stopped mid-run: {first} of {total}"
    second = consumed(storepulse("run", "--config", path, "--bounded").stderr)
    reprocessed = first + second - total
    print(f"SIGTERM after {first} of {total} messages, exit 0 after {took:.2f}s; the restart consumed {second}; "
          f"reprocessed {reprocessed}")
    assert reprocessed == 0
    assert took < 25
    assert_same_output(out, expected)


def assigned(port: int) -> set[tuple[str, str]]:
    """Partitions an instance reports lag for: exactly those assigned to it."""
    family = "storepulse_consumer_lag_messages{"
    series = set()
    for line in scrape(port).splitlines():
        if line.startswith(family):
            labels = dict(part.split("=", 1) for part in line[len(family):line.index("}")].split(","))
            series.add((labels["topic"].strip('"'), labels["partition"].strip('"')))
    return series


def wait_until(condition, timeout: float, what: str) -> float:
    started = time.time()
    while not condition():
        assert time.time() - started < timeout, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)
    return time.time() - started


def test_two_instances_share_the_partitions_and_the_survivor_resumes_the_others_from_checkpoints(broker, tmp_path):
    """One instance leaves mid-run by SIGTERM: it checkpoints and leaves the group at once."""
    scale_out(broker, tmp_path, signal.SIGTERM)


@pytest.mark.parametrize("broker_fixture", ["broker", "mock_broker"])
def test_two_instances_and_one_killed_9_the_survivor_takes_over_from_checkpoints(broker_fixture, request, tmp_path):
    """One instance is SIGKILLed mid-run, against tansu and against librdkafka's mock cluster
    (`storepulse broker`, its own process). Only the broker can tell that the dead member is gone,
    when its session times out: 6 s here. With librdkafka's default of 45 s, tansu 0.6 did
    rebalance 45 s after the kill, but the survivor got only its own 6 partitions back (seen once)."""
    scale_out(request.getfixturevalue(broker_fixture), tmp_path, signal.SIGKILL,
              extra='[kafka.client]\n"session.timeout.ms" = "6000"\n')


def scale_out(broker, tmp_path: pathlib.Path, leave: signal.Signals, extra: str = "") -> None:
    """Two instances of one group share the partitions; one leaves by `leave` while the input is
    still being written; the survivor must take every partition, restore the other's tasks from
    their checkpoints and end with the output of a single uninterrupted run.

    The instances start on empty topics and the generator writes while they run: with the input
    written first, one instance could consume all of it before the group gives the other any."""
    broker.create_topics()
    out = tmp_path / "scaled"
    paths = [config(tmp_path, broker, out, "scale-out", name=f"instance-{i}", extra=extra) for i in range(2)]
    ports = [metrics_port(p) for p in paths]
    logs = [open(tmp_path / f"instance-{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen([STOREPULSE, "run", "--config", str(p)], stdout=subprocess.DEVNULL, stderr=log)
             for p, log in zip(paths, logs)]
    generator = None
    try:
        wait_until(lambda: all(assigned(p) for p in ports) and len(assigned(ports[0]) | assigned(ports[1])) == 12,
                   120, "both instances to share the 12 partitions")
        shared = [len(assigned(p)) for p in ports]
        generator = subprocess.Popen([STOREPULSE, "generate", "--brokers", broker.address, "--count", "150000",
                                      "--seed", "23", *TRAFFIC], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: all(consumed_so_far(p) > 3_000 for p in ports), 120, "both instances to consume")
        # Killed before its first checkpoint, an instance leaves nothing to restore: its partitions
        # would start over from the beginning, which tests less.
        wait_until(lambda: checkpoints_of(out, procs[1].pid) > 0, 60, "the instance that leaves to checkpoint")
        assert generator.poll() is None, "the input is still being written when an instance leaves"
        procs[1].send_signal(leave)
        assert procs[1].wait(timeout=60) == (0 if leave == signal.SIGTERM else -leave)
        covered_at_stop = committed_messages(out)
        takeover = wait_until(lambda: len(assigned(ports[0])) == 12, 120, "the survivor to take every partition")
        assert generator.wait(timeout=300) == 0
        expected, total = reference(broker, tmp_path)
        assert covered_at_stop < total, "stopped mid-run"
        wait_until(lambda: committed_messages(out) >= total, 300, "the survivor to catch up")
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=60) == 0
    finally:
        for proc in [*procs, generator]:
            if proc is not None and proc.poll() is None:
                proc.kill()
        for log in logs:
            log.close()
    survivor = (tmp_path / "instance-0.log").read_text()
    restored = int(re.findall(r"(\d+) partition tasks restored", survivor)[-1])
    # A last bounded run closes the windows still open, as the reference run did at its end.
    storepulse("run", "--config", paths[0], "--bounded")
    print(f"partitions shared {shared}; one left by {leave.name} with {covered_at_stop} of {total} messages "
          f"checkpointed; the survivor owned all 12 after {takeover:.1f}s and restored {restored} tasks")
    assert min(shared) >= 1
    assert restored >= 1
    assert_same_output(out, expected)


class DurableBroker(Broker):
    """A tansu broker keeping its log in SQLite, so it can be stopped and started again."""

    def __init__(self, directory: pathlib.Path):
        super().__init__(free_port(), directory / "tansu.log")
        self.directory = directory
        self.proc = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [TANSU, "broker", "--listener-url", self.url, "--advertised-listener-url", self.url,
                 "--storage-engine", "sqlite://tansu.db"],
                cwd=self.directory, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_a_broker_restart_mid_run_loses_and_duplicates_nothing(tmp_path):
    broker = DurableBroker(tmp_path)
    broker.start()
    try:
        produce(broker, tmp_path, 100_000, seed=24)
        expected, total = reference(broker, tmp_path)
        out = tmp_path / "through-restart"
        path = config(tmp_path, broker, out, "broker-restart")
        port = metrics_port(path)
        with running(path, tmp_path / "storepulse.log") as proc:
            wait_until(lambda: consumed_so_far(port) > total // 4, 120, "consumption to start")
            broker.stop()
            before_outage = consumed_so_far(port)
            down = wait_until(lambda: "ready 0" in readiness(port), 60, "/readyz to report the outage")
            time.sleep(5)
            broker.start()
            back = wait_until(lambda: committed_messages(out) >= total, 300, "the run to finish after the restart")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        storepulse("run", "--config", path, "--bounded")
        print(f"broker killed after {before_outage} of {total} messages; not ready after {down:.1f}s; "
              f"everything checkpointed {back:.1f}s after the broker came back")
        assert before_outage < total
        assert_same_output(out, expected)
    finally:
        if broker.proc and broker.proc.poll() is None:
            broker.stop()


def readiness(port: int) -> str:
    """`ready 1` or `ready 0`, from the storepulse_ready gauge."""
    value = re.search(r"^storepulse_ready (\S+)$", scrape(port), re.M)
    return f"ready {int(float(value.group(1)))}" if value else "ready ?"


def gauge(port: int, name: str) -> float:
    value = re.search(rf"^{name} (\S+)$", scrape(port), re.M)
    return float(value.group(1)) if value else float("nan")


def test_a_storage_outage_pauses_consumption_and_loses_nothing(broker, tmp_path):
    produce(broker, tmp_path, 60_000, seed=25)
    expected, total = reference(broker, tmp_path)
    out = tmp_path / "through-outage"
    out.mkdir()
    # A file where the funnel table's directory belongs: every funnel write fails (ENOTDIR, even
    # for root) until it is removed, as with an unwritable volume or a failing object store.
    blocker = out / "funnel"
    blocker.write_text("storage outage")
    path = config(tmp_path, broker, out, "storage-outage", interval=1)
    path.write_text(path.read_text().replace("[checkpoint]\n", "[checkpoint]\nmax_buffered_rows = 200\n"))
    port = metrics_port(path)
    with running(path, tmp_path / "storepulse.log") as proc:
        paused = wait_until(lambda: gauge(port, "storepulse_consumption_paused") == 1
                            and gauge(port, "storepulse_checkpoint_failures_total") >= 3, 120,
                            "consumption to pause and checkpoints to fail")
        assert readiness(port) == "ready 0"
        held = consumed_so_far(port)
        time.sleep(3)
        assert consumed_so_far(port) == held < total, "paused consumption stays paused"
        buffered = gauge(port, "storepulse_buffered_rows")
        blocker.unlink()
        resumed = wait_until(lambda: gauge(port, "storepulse_consumption_paused") == 0, 60, "consumption to resume")
        back = wait_until(lambda: committed_messages(out) >= total, 300, "the run to finish after the outage")
        assert readiness(port) == "ready 1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    storepulse("run", "--config", path, "--bounded")
    print(f"storage failing: paused after {paused:.1f}s at {held} of {total} messages with {buffered:.0f} rows "
          f"buffered; resumed {resumed:.1f}s after it recovered, everything checkpointed {back:.1f}s later")
    assert_same_output(out, expected)
    assert_matches_oracle(out, tmp_path / "events.jsonl")
