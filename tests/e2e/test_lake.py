"""The Parquet data lake: Hive hour partitions, atomic publication, S3-compatible storage and
compaction, read back with DuckDB and pyarrow as independent readers."""

import datetime
import pathlib
import random
import re
import shutil
import signal
import subprocess
import time

import duckdb
import pyarrow.parquet as pq
from conftest import STOREPULSE, storepulse, write_config
from oracle import TABLES, data_files, snapshot, table

# The column whose UTC hour names each table's partition (docs/tables.md).
PARTITIONED_BY = {"funnel": "window_start", "sessions": "session_start", "orders": "window_start",
                  "fulfillment": "window_start", "order_facts": "closed_at_watermark",
                  "orphan_shipments": "closed_at_watermark", "late_events": "event_time + to_milliseconds(behind_watermark_ms)",
                  "dead_letters": "rejected_at"}
PARTITION_DIR = re.compile(r"^dt=\d{4}-\d{2}-\d{2}/hour=\d{2}$")
FAULTS = ["--duplicate-fraction", "0.01", "--out-of-order-fraction", "0.02", "--out-of-order-max", "3s",
          "--malformed-fraction", "0.002"]


def check_layout(out: pathlib.Path) -> None:
    """Files sit in dt=/hour= directories only, and each row is in the hour of its partition column."""
    con = duckdb.connect()
    for name in TABLES:
        for path in (out / name).rglob("*"):
            if path.is_file():
                relative = path.parent.relative_to(out / name).as_posix()
                assert PARTITION_DIR.match(relative), path
                assert path.suffix == ".parquet" or path.name == "_SUCCESS", path
        if not data_files(out, name):
            continue
        misplaced = con.sql(f"""SELECT count(*) FROM {table(out, name)}
            WHERE epoch_ms({PARTITIONED_BY[name]}) // 3600000 != CAST(epoch(dt::TIMESTAMP) AS BIGINT) // 3600 + hour::INT""").fetchall()[0][0]
        assert misplaced == 0, name


def hour_end(directory: str) -> float:
    """End of a dt=/hour= partition's hour, as a UNIX time."""
    stamp = datetime.datetime.strptime(directory, "dt=%Y-%m-%d/hour=%H").replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp() + 3600


def partition_files(out: pathlib.Path) -> dict[tuple[str, str], int]:
    counts = {}
    for name in TABLES:
        for path in data_files(out, name):
            key = (name, path.parent.relative_to(out / name).as_posix())
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_day_on_s3_equals_the_local_run_and_compaction_changes_no_result(broker, s3, tmp_path):
    broker.create_topics()
    # A steady shop whose events span a little more than one day of event time.
    storepulse("generate", "--brokers", broker.address, "--count", 26_000, "--seed", 11, "--profile", "steady",
               "--visitors-per-sec", "0.05", *FAULTS)
    local = tmp_path / "local"
    storepulse("run", "--config", write_config(tmp_path / "local.toml", broker, local, "lake-local"), "--bounded")

    s3.client.create_bucket(Bucket="shop-lake")
    url = "s3://shop-lake/storepulse/prod"
    config = write_config(tmp_path / "s3.toml", broker, pathlib.Path("unused"), "lake-s3").read_text()
    (tmp_path / "s3.toml").write_text(config.replace('dir = "unused"', f'dir = "{url}"'))
    storepulse("run", "--config", tmp_path / "s3.toml", "--bounded", env=s3.env)
    assert not [k for k in s3.keys("shop-lake") if not k.startswith("storepulse/prod/")]
    remote = s3.download("shop-lake", "storepulse/prod/", tmp_path / "s3-copy")

    check_layout(local)
    check_layout(remote)
    check_documented_schemas(local)
    expected = snapshot(local)
    assert snapshot(remote) == expected, "the S3 run wrote different rows"
    hours = {d for (name, d) in partition_files(local) if name == "funnel"}
    assert len(hours) >= 24, f"a full day of hour partitions, got {len(hours)}"
    assert all(expected[name] for name in ["funnel", "sessions", "orders", "fulfillment", "order_facts", "dead_letters"])

    print(f"before compaction: {sum(partition_files(local).values())} files in {len(partition_files(local))} partitions")
    compacted_at = time.time()
    for out, env in [(str(local), None), (url, s3.env)]:
        result = storepulse("compact", "--out", out, "--older-than", "0s", env=env)
        print(result.stdout.strip())
    remote = s3.download("shop-lake", "storepulse/prod/", tmp_path / "s3-compacted")
    for out in [local, remote]:
        check_layout(out)
        assert snapshot(out) == expected, f"compaction changed query results in {out}"
        files = partition_files(out)
        closed_counts = [n for (_, directory), n in files.items() if hour_end(directory) <= compacted_at]
        assert max(closed_counts) == 1, "one file per closed hour partition after compaction"
        for name, directory in files:
            # Only hours that had ended are complete; dead letters of this very hour are still open.
            closed = hour_end(directory) <= compacted_at
            assert (out / name / directory / "_SUCCESS").exists() == closed, (name, directory)
    assert not [k for k in s3.keys("shop-lake", "storepulse/prod/_staging/")], "nothing left staged"


def readable(out: pathlib.Path) -> int:
    """Reads every visible file with pyarrow, then every table with DuckDB; returns the rows."""
    rows = 0
    for name in TABLES:
        for path in data_files(out, name):
            rows += pq.read_table(path).num_rows
    for name in TABLES:
        if data_files(out, name):
            duckdb.connect().sql(f"SELECT count(*) FROM {table(out, name)}").fetchall()
    return rows


def kill_at_random(command: list[str], low: float, high: float, rng: random.Random) -> bool:
    """Starts `command`, SIGKILLs it after a random delay; True if it was still running."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(low, high))
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return running


def test_kill_9_while_writing_or_compacting_never_exposes_a_partial_file(broker, tmp_path):
    broker.create_topics()
    storepulse("generate", "--brokers", broker.address, "--count", 60_000, "--seed", 12, *FAULTS)
    out = tmp_path / "lake"
    rng = random.Random(5)

    def config(run: int) -> pathlib.Path:
        # A consumer group per run: a SIGKILLed member holds its partitions until the broker
        # expires it, and exactly-once restarts are not what this test is about.
        path = write_config(tmp_path / f"c{run}.toml", broker, out, f"lake-kill-{run}")
        path.write_text(path.read_text().replace("interval_secs = 5", "interval_secs = 1"))
        return path

    killed_running = 0
    for run in range(12):
        killed_running += kill_at_random([STOREPULSE, "run", "--config", str(config(run))], 0.5, 5.0, rng)
        readable(out)
    assert killed_running >= 10
    storepulse("run", "--config", config(12), "--bounded")
    files_before = sum(partition_files(out).values())
    before = snapshot(out)
    assert readable(out) > 0

    # Each round interrupts a compaction of a fresh copy of the lake at a random point of its
    # run, checks what readers see, then lets the next run repair and finish it.
    # How long a compaction takes: the fastest of three (the first, with cold caches, can take
    # twice as long as the rest).
    durations = []
    for attempt in range(3):
        started = time.time()
        storepulse("compact", "--out", shutil.copytree(out, tmp_path / f"timing{attempt}"), "--older-than", "0s")
        durations.append(time.time() - started)
    duration = min(durations)
    interrupted = 0
    # Until ten compactions were killed mid-run: how long one takes varies on a shared machine,
    # so a kill that came after the process had finished does not count, and after such a miss
    # the next kill comes sooner. A small lake compacts in tens of milliseconds.
    rounds = 0
    latest = 0.9 * duration
    while interrupted < 10 and rounds < 100:
        copy = shutil.copytree(out, tmp_path / f"round{rounds}")
        landed = kill_at_random([STOREPULSE, "compact", "--out", str(copy), "--older-than", "0s"],
                                0.005, latest, rng)
        interrupted += landed
        if not landed:
            latest = max(0.01, 0.8 * latest)
        readable(copy)
        storepulse("compact", "--out", copy, "--older-than", "0s")
        assert snapshot(copy) == before, f"round {rounds}: an interrupted compaction, once finished, changes no result"
        assert max(n for (_, d), n in partition_files(copy).items() if hour_end(d) <= time.time() - 60) == 1
        shutil.rmtree(copy)
        rounds += 1
    print(f"{files_before} files before compaction; a full compaction took {duration:.2f}s; "
          f"{interrupted} of {rounds} compactions killed while running")
    assert interrupted >= 10


DOC_TYPES = {"string": "string", "int32": "int32", "int64": "int64", "boolean": "bool", "binary": "binary",
             "timestamp (UTC)": "timestamp[ms, tz=UTC]"}


def documented_columns() -> dict[str, list[tuple[str, str]]]:
    """Column names and Arrow types per table, from the column tables in docs/tables.md."""
    docs = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "tables.md").read_text()
    tables, current, in_columns = {}, None, False
    for line in docs.splitlines():
        if line.startswith("## "):
            current, in_columns = line[3:].strip(), False
        elif line.startswith("| column | type |"):
            in_columns = current in TABLES
        elif not line.startswith("|"):
            in_columns = False
        elif in_columns and (m := re.match(r"^\| ([a-z_0-9]+) \| ([^|]+) \|", line)):
            kind = re.sub(r"(, nullable\)| \(nullable\))$", lambda g: ")" if g[0].startswith(",") else "", m[2].strip())
            tables.setdefault(current, []).append((m[1], DOC_TYPES.get(kind, kind)))
    return tables


def check_documented_schemas(out: pathlib.Path) -> None:
    """Every table's files have exactly the columns and types docs/tables.md lists, in order."""
    documented = documented_columns()
    for name in TABLES:
        files = data_files(out, name)
        if files:
            schema = pq.read_schema(files[0])
            assert [(f.name, str(f.type)) for f in schema] == documented[name], name
