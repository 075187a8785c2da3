"""What readers of the lake see while storepulse writes it.

Readers (DuckDB, the deltalake package, polars) query the Delta tables in a loop while
storepulse writes them and `storepulse compact` merges and vacuums every few seconds: every
read must succeed and equal a committed version of the table, as the table's own log says (a
partition counted twice, or a file missing, would not), and no reader's row count goes down.

A replay of hours of event time at full speed, compacted every second: no hour is marked
complete (Delta: the completeness transaction; plain Parquet: `_SUCCESS`) before its last row
is committed."""

import re
import signal
import subprocess
import threading
import time

import duckdb
import polars
import pyarrow.parquet as pq
from conftest import STOREPULSE, storepulse, write_config
from deltalake import DeltaTable
from oracle import TABLES, delta_log, hour_end_ms
from test_checkpoints import committed_messages
from test_lake import files_per_hour

READ_TABLES = ["funnel", "sessions", "orders"]
STEADY = ["--profile", "steady", "--visitors-per-sec", "0.5"]


def read_with_duckdb(path) -> tuple[int, int, int]:
    """(lowest version it may have read, highest, rows): DuckDB reads the files the deltalake
    package lists for the newest version."""
    snapshot = DeltaTable(path)
    files = ", ".join(f"'{uri.removeprefix('file://')}'" for uri in snapshot.file_uris())
    rows = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet([{files}])").fetchone()[0] if files else 0
    return snapshot.version(), snapshot.version(), rows


def read_with_deltalake(path) -> tuple[int, int, int]:
    snapshot = DeltaTable(path)
    return snapshot.version(), snapshot.version(), snapshot.to_pyarrow_table().num_rows


def read_with_polars(path) -> tuple[int, int, int]:
    """Polars picks the newest version itself: it read one between the versions before and after."""
    before = DeltaTable(path).version()
    rows = polars.read_delta(str(path)).height
    return before, DeltaTable(path).version(), rows


def sent(generated) -> int:
    """Messages the generator reports it sent (a `CompletedProcess` or its output)."""
    output = generated if isinstance(generated, str) else generated.stdout + generated.stderr
    return int(re.findall(r"sent (\d+) messages", output)[-1])


READERS = {"duckdb": read_with_duckdb, "deltalake": read_with_deltalake, "polars": read_with_polars}


class Loop(threading.Thread):
    """Calls `step` until stopped, keeping what it returns and the exceptions it raises."""

    def __init__(self, step, pause: float):
        super().__init__(daemon=True)
        self.step, self.pause, self.results, self.errors = step, pause, [], []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.results.append(self.step())
            except Exception as error:  # noqa: BLE001 - every failure of a reader counts
                self.errors.append(repr(error))
            self.stopping.wait(self.pause)

    def stop(self):
        self.stopping.set()
        self.join(timeout=120)


def rows_per_version(table_dir) -> dict[int, int]:
    """Rows of each version of a table, from the row counts its log records for each file."""
    return {commit["version"]: sum(commit["live"].values()) for commit in delta_log(table_dir)}


def test_readers_in_a_loop_during_a_run_and_compactions_see_only_committed_versions(broker, tmp_path):
    broker.create_topics()
    out = tmp_path / "lake"
    path = write_config(tmp_path / "run.toml", broker, out, "readers")
    path.write_text(path.read_text().replace("interval_secs = 5", "interval_secs = 1"))
    run = subprocess.Popen([STOREPULSE, "run", "--config", str(path)], stdout=subprocess.DEVNULL,
                           stderr=open(tmp_path / "run.log", "w"))
    compactions = Loop(lambda: storepulse("compact", "--out", out, "--retention", "20s").stdout, pause=3)
    readers = {(reader, name): Loop(lambda r=read, n=name: r(out / n), pause=0.05)
               for reader, read in READERS.items() for name in READ_TABLES}
    try:
        # Written while storepulse runs: about 40 s of input spanning hours of event time.
        producer = subprocess.Popen([STOREPULSE, "generate", "--brokers", broker.address, "--count", "100000",
                                     "--seed", "31", "--rate", "2500", *STEADY], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while not all((out / name / "_delta_log").exists() for name in READ_TABLES):
            assert time.time() < deadline and run.poll() is None, "the tables appear"
            time.sleep(0.5)
        compactions.start()
        for loop in readers.values():
            loop.start()
        total = sent(producer.communicate(timeout=600)[0])
        assert producer.returncode == 0
        deadline = time.time() + 300
        while committed_messages(out) < total:
            assert time.time() < deadline and run.poll() is None, "storepulse checkpoints everything"
            time.sleep(1)
        time.sleep(5)
    finally:
        for loop in [*readers.values(), compactions]:
            loop.stop()
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    assert run.returncode == 0

    truth = {name: rows_per_version(out / name) for name in READ_TABLES}
    merged = sum(int(s.split(" partitions merged")[0].rsplit(" ", 1)[-1]) for s in compactions.results)
    vacuumed = sum(int(s.split(" files vacuumed")[0].rsplit(" ", 1)[-1]) for s in compactions.results
                   if "files vacuumed" in s)
    reads = 0
    for (reader, name), loop in readers.items():
        assert loop.errors == [], f"{reader} reading {name}: {len(loop.errors)} errors, first {loop.errors[:3]}"
        counts = [rows for _, _, rows in loop.results]
        assert counts == sorted(counts), f"{reader} saw {name}'s row count go down: {counts}"
        for low, high, rows in loop.results:
            committed = {truth[name][v] for v in range(low, high + 1)}
            assert rows in committed, f"{reader} read {rows} rows of {name}; versions {low}..{high} hold {committed}"
        reads += len(loop.results)
    versions = {name: max(truth[name]) for name in READ_TABLES}
    print(f"{reads} reads by {len(READERS)} readers, all of committed versions; {len(compactions.results)} "
          f"compactions merged {merged} partitions and vacuumed {vacuumed} files; table versions {versions}")
    assert compactions.errors == [], compactions.errors[:3]
    assert reads >= 100 and merged > 0 and vacuumed > 0


def test_a_replay_of_hours_at_full_speed_marks_no_hour_complete_before_its_last_row(broker, tmp_path):
    broker.create_topics()
    total = sent(storepulse("generate", "--brokers", broker.address, "--count", 60_000, "--seed", 32, *STEADY,
                            "--late-fraction", "0.001", "--late-by", "20m"))
    lakes = {"delta": tmp_path / "delta", "parquet": tmp_path / "parquet"}
    runs = []
    for table_format, out in lakes.items():
        path = write_config(tmp_path / f"{table_format}.toml", broker, out, f"replay-{table_format}",
                            table_format=table_format)
        path.write_text(path.read_text().replace("interval_secs = 5", "interval_secs = 1"))
        runs.append(subprocess.Popen([STOREPULSE, "run", "--config", str(path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL))
    # Plain Parquet: the rows of each hour when `_SUCCESS` first appeared in it.
    marked: dict[tuple[str, tuple[str, int]], int] = {}

    def compact_both() -> None:
        for out in lakes.values():
            if not out.exists():
                continue
            # Before a run's first checkpoint its output holds nothing to compact, and compact says so.
            result = storepulse("compact", "--out", out, "--retention", "1h", check=False)
            assert result.returncode == 0 or "no storepulse tables or checkpoints there" in result.stderr, \
                result.stderr
        for name in TABLES:
            for success in (lakes["parquet"] / name).glob("*/*/_SUCCESS"):
                partition = (success.parent.parent.name[3:], int(success.parent.name[5:]))
                if (name, partition) not in marked:
                    marked[(name, partition)] = sum(pq.read_metadata(f).num_rows
                                                    for f in success.parent.glob("*.parquet"))

    deadline = time.time() + 600
    try:
        while min(committed_messages(out) for out in lakes.values()) < total:
            assert time.time() < deadline and all(r.poll() is None for r in runs), "both runs checkpoint everything"
            compact_both()
            time.sleep(1)
        compact_both()
    finally:
        for run in runs:
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=60)

    marked_during_run = 0
    for name in TABLES:
        if not (lakes["delta"] / name / "_delta_log").exists():
            continue
        complete = None
        for commit in delta_log(lakes["delta"] / name):
            for path, partition in commit["added"]:
                assert complete is None or hour_end_ms(partition) > complete, \
                    f"{name} version {commit['version']} added {path} to an hour marked complete"
            if commit["complete_through"] != complete:
                marked_during_run += 1
            complete = commit["complete_through"]
    for (name, partition), rows in marked.items():
        files = files_per_hour(lakes["parquet"], name)[partition]
        now = sum(pq.read_metadata(f).num_rows
                  for f in (lakes["parquet"] / name / f"dt={partition[0]}" / f"hour={partition[1]:02d}").glob("*.parquet"))
        assert (files, now) == (1, rows), f"{name} {partition} changed after its _SUCCESS"
    print(f"Delta completeness moved {marked_during_run} times during the replay; {len(marked)} plain Parquet "
          f"hours marked _SUCCESS, none changed afterwards")
    assert marked_during_run >= 3 and len(marked) >= 3
