"""The data lake: Delta tables (and the plain Hive Parquet option) in hour partitions, on a
local directory and on S3-compatible storage (moto), compaction, and crashes at random points
and at the crash points between two writes; read back with DuckDB, pyarrow and the deltalake
package as independent readers."""

import os
import pathlib
import random
import re
import signal
import subprocess
import time

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import STOREPULSE, storepulse, write_config
from oracle import TABLES, data_files, delta_log, duplicate_rows, hour_end_ms, is_delta, snapshot, table

# The column whose UTC hour names each table's partition (docs/tables.md).
PARTITIONED_BY = {"funnel": "window_start", "sessions": "session_start", "orders": "window_start",
                  "fulfillment": "window_start", "order_facts": "closed_at_watermark",
                  "orphan_shipments": "closed_at_watermark", "late_events": "event_time + to_milliseconds(behind_watermark_ms)",
                  "quarantined_events": "partition_time", "dead_letters": "rejected_at"}
PARTITION_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")
FAULTS = ["--duplicate-fraction", "0.01", "--out-of-order-fraction", "0.02", "--out-of-order-max", "3s",
          "--malformed-fraction", "0.002"]
# A steady shop over a few hours of event time, so that hours complete during a run.
HOURS_OF_TRAFFIC = ["--profile", "steady", "--visitors-per-sec", "0.5"]


def check_layout(out: pathlib.Path) -> None:
    """Data files sit in dt=/hour= directories only (a Delta table's log beside them), and each
    row is in the hour of its partition column."""
    con = duckdb.connect()
    for name in TABLES:
        for path in (out / name).rglob("*"):
            if path.is_file() and "_delta_log" not in path.parts:
                relative = path.parent.relative_to(out / name).as_posix()
                assert PARTITION_DIR.match(relative), path
                assert path.suffix == ".parquet" or (path.name == "_SUCCESS" and not is_delta(out, name)), path
        if not data_files(out, name):
            continue
        misplaced = con.sql(f"""SELECT count(*) FROM {table(out, name)}
            WHERE epoch_ms({PARTITIONED_BY[name]}) // 3600000 != CAST(epoch(dt::TIMESTAMP) AS BIGINT) // 3600 + hour::INT""").fetchall()[0][0]
        assert misplaced == 0, name


def partition_of(path: pathlib.Path) -> tuple[str, int]:
    match = PARTITION_DIR.match(f"{path.parent.parent.name}/{path.parent.name}")
    return match[1], int(match[2])


def files_per_hour(out: pathlib.Path, name: str) -> dict[tuple[str, int], int]:
    """Live files per (dt, hour) partition."""
    counts: dict[tuple[str, int], int] = {}
    for path in data_files(out, name):
        counts[partition_of(path)] = counts.get(partition_of(path), 0) + 1
    return counts


def complete_through(compact_stdout: str) -> dict[str, int]:
    """Per table, the time through which `storepulse compact` found hours complete (UTC ms)."""
    through = re.search(r"complete through: (.*?)(;|$)", compact_stdout, re.M)[1]
    found = {}
    for item in through.split(", "):
        if item != "nothing yet":
            name, stamp = item.split(" ")
            found[name] = int(duckdb.execute(f"SELECT epoch_ms(TIMESTAMPTZ '{stamp}')").fetchone()[0])
    return found


def check_compacted(out: pathlib.Path, through: dict[str, int]) -> int:
    """Every hour ending by a table's complete-through time is one file and marked complete
    (Delta: the table's completeness transaction; plain: `_SUCCESS`); later hours are not.
    Returns how many hours are complete."""
    complete_hours = 0
    for name in TABLES:
        for partition, files in files_per_hour(out, name).items():
            complete = hour_end_ms(partition) <= through.get(name, -1)
            complete_hours += complete
            if complete:
                assert files == 1, (name, partition, files)
            if not is_delta(out, name):
                marker = out / name / f"dt={partition[0]}" / f"hour={partition[1]:02d}" / "_SUCCESS"
                assert marker.exists() == complete, (name, partition)
        if is_delta(out, name):
            assert delta_log(out / name)[-1]["complete_through"] == through.get(name), name
    return complete_hours


def test_a_day_on_s3_and_in_plain_parquet_equals_the_local_delta_run_and_compaction_changes_no_result(
        broker, s3, tmp_path):
    broker.create_topics()
    # A steady shop whose events span a little more than one day of event time.
    storepulse("generate", "--brokers", broker.address, "--count", 26_000, "--seed", 11, "--profile", "steady",
               "--visitors-per-sec", "0.05", *FAULTS)
    local, plain = tmp_path / "local", tmp_path / "plain"
    storepulse("run", "--config", write_config(tmp_path / "local.toml", broker, local, "lake-local"), "--bounded")
    storepulse("run", "--bounded", "--config",
               write_config(tmp_path / "plain.toml", broker, plain, "lake-plain", table_format="parquet"))
    s3.client.create_bucket(Bucket="shop-lake")
    url = "s3://shop-lake/storepulse/prod"
    storepulse("run", "--config", write_config(tmp_path / "s3.toml", broker, url, "lake-s3"), "--bounded", env=s3.env)
    assert not [k for k in s3.keys("shop-lake") if not k.startswith("storepulse/prod/")]
    typo = storepulse("compact", "--out", "s3://shop-lake/storepulse/prdo", env=s3.env, check=False)
    assert typo.returncode != 0 and "no storepulse tables or checkpoints there" in typo.stderr, typo.stderr
    remote = s3.download("shop-lake", "storepulse/prod/", tmp_path / "s3-copy")

    for out in [local, remote, plain]:
        check_layout(out)
        check_documented_schemas(out)
    assert all(is_delta(local, name) for name in ["funnel", "sessions", "orders", "order_facts", "dead_letters"])
    assert not any(is_delta(plain, name) for name in TABLES)
    expected = snapshot(local)
    assert snapshot(remote) == expected, "the S3 run wrote different rows"
    assert snapshot(plain) == expected, "the plain Parquet run wrote different rows"
    assert len(files_per_hour(local, "funnel")) >= 24, "a full day of hour partitions"
    assert all(expected[name] for name in ["funnel", "sessions", "orders", "fulfillment", "order_facts", "dead_letters"])

    files_before = sum(len(data_files(local, name)) for name in TABLES)
    reports = {}
    for out, env in [(str(local), None), (url, s3.env), (str(plain), None)]:
        reports[out] = storepulse("compact", "--out", out, "--retention", "0s", env=env).stdout.strip()
        print(reports[out])
    remote = s3.download("shop-lake", "storepulse/prod/", tmp_path / "s3-compacted")
    for out, report in [(local, reports[str(local)]), (remote, reports[url]), (plain, reports[str(plain)])]:
        check_layout(out)
        assert snapshot(out) == expected, f"compaction changed query results in {out}"
        complete = check_compacted(out, complete_through(report))
        assert complete >= 24 * 3, f"most hours of funnel, sessions and orders are complete: {complete}"
    # The merged inputs were vacuumed (a zero retention): only live files are left.
    assert sum(1 for _ in (remote / "funnel").rglob("*.parquet")) == len(data_files(remote, "funnel"))
    assert not s3.keys("shop-lake", "storepulse/prod/_staging/"), "nothing left staged"
    print(f"{files_before} files before compaction, {sum(len(data_files(local, n)) for n in TABLES)} after")


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


def no_version_holds_a_duplicate(out: pathlib.Path) -> int:
    """Checks every version of every Delta table; returns how many versions there are."""
    versions = 0
    for name in TABLES:
        if is_delta(out, name):
            for commit in delta_log(out / name):
                assert duplicate_rows(out, name, commit["version"]) == 0, (name, commit["version"])
                versions += 1
    return versions


class Lake:
    """Where a test's lake lives: a local directory, or a prefix of a moto bucket read from a
    local copy."""

    def __init__(self, tmp_path: pathlib.Path, s3=None):
        self.tmp_path, self.s3, self.copies = tmp_path, s3, 0
        if s3:
            s3.client.create_bucket(Bucket="lake")
            self.out, self.env = "s3://lake/crashing", s3.env
        else:
            self.out, self.env = str(tmp_path / "crashing"), {}

    def local(self) -> pathlib.Path:
        """The lake as a reader sees it now."""
        if not self.s3:
            return pathlib.Path(self.out)
        self.copies += 1
        return self.s3.download("lake", "crashing/", self.tmp_path / f"copy-{self.copies}")

    def start(self, *args: str, crash_at: str | None = None) -> subprocess.Popen:
        env = {**os.environ, **self.env, **({"STOREPULSE_CRASH_AT": crash_at} if crash_at else {})}
        return subprocess.Popen([STOREPULSE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)


def crash_at(lake: Lake, point: str, *args: str) -> None:
    """Runs storepulse until it dies at crash point `point`."""
    proc = lake.start(*args, crash_at=point)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGABRT and f"crashing at {point}" in stderr, (point, proc.returncode, stderr[-2000:])


def kill_at_random(lake: Lake, args: list[str], low: float, high: float, rng: random.Random) -> bool:
    """Starts storepulse, SIGKILLs it after a random delay; True if it was still running."""
    proc = lake.start(*args)
    time.sleep(rng.uniform(low, high))
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return running


def test_compact_refuses_a_location_without_a_lake(tmp_path):
    missing = tmp_path / "storepulse-dta"
    result = storepulse("compact", "--out", missing, check=False)
    assert result.returncode != 0 and f"--out {missing}: no such directory" in result.stderr, result.stderr
    assert not missing.exists(), "compact must not create its --out"
    (tmp_path / "notes.txt").write_text("not a lake")
    result = storepulse("compact", "--out", tmp_path, check=False)
    assert result.returncode != 0 and "no storepulse tables or checkpoints there" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_kill_9_while_writing_or_compacting_leaves_versions_without_duplicates_and_the_uninterrupted_result(
        storage, broker, request, tmp_path):
    broker.create_topics()
    lake = Lake(tmp_path, request.getfixturevalue("s3") if storage == "s3" else None)
    rng = random.Random(5)

    def config(run: str, out: str = lake.out) -> str:
        # A consumer group per run: a SIGKILLed member holds its partitions until the broker
        # expires it; state and offsets come from the checkpoints on storage.
        path = write_config(tmp_path / f"{run}.toml", broker, out, f"lake-{run}")
        path.write_text(path.read_text().replace("interval_secs = 5", "interval_secs = 1"))
        return str(path)

    # The input arrives while the runs below crash and are killed (about 30 s of it), so that
    # each has new rows to commit.
    generator = subprocess.Popen([STOREPULSE, "generate", "--brokers", broker.address, "--count", "45000",
                                  "--seed", "12", "--rate", "1500", *HOURS_OF_TRAFFIC, *FAULTS],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Between a checkpoint's manifest and its tables' commits, and between two tables' commits.
    for point in ["checkpoint-committed", "delta-table-committed"]:
        crash_at(lake, point, "run", "--config", config(point))
        readable(lake.local())
    killed_running = 0
    for run in range(12):
        killed_running += kill_at_random(lake, ["run", "--config", config(f"kill-{run}")], 0.5, 3.0, rng)
        readable(lake.local())
    assert killed_running >= 10
    assert generator.wait(timeout=300) == 0
    storepulse("run", "--config", config("final"), "--bounded", env=lake.env)
    reference = tmp_path / "reference"
    storepulse("run", "--bounded", "--config", config("reference", str(reference)))
    expected = snapshot(reference)
    assert snapshot(lake.local()) == expected, "the crashed runs, finished, equal the uninterrupted run"

    # Compactions die between writing a merged file and committing it, after the commit, and
    # at random moments; a retention of an hour keeps every version readable.
    compact = ["compact", "--out", lake.out, "--retention", "1h"]
    for point in ["compact-merged", "compact-replaced"]:
        crash_at(lake, point, *compact)
        assert snapshot(lake.local()) == expected, point
    landed = sum(kill_at_random(lake, compact, 0.05, 1.5, rng) for _ in range(5))
    out = lake.local()
    assert snapshot(out) == expected
    versions = no_version_holds_a_duplicate(out)

    final = storepulse("compact", "--out", lake.out, "--retention", "0s", "--debris-grace", "0s", env=lake.env)
    out = lake.local()
    assert snapshot(out) == expected, "compaction, interrupted and finished, changes no result"
    complete = check_compacted(out, complete_through(final.stdout))
    live = {f for name in TABLES for f in data_files(out, name)}
    leftover = [p for p in out.rglob("*.parquet") if "_checkpoints" not in p.parts and p not in live]
    print(f"{storage}: {killed_running} runs killed while running, 2 crashed at crash points; {landed} of 5 "
          f"random compaction kills landed mid-run; {versions} table versions checked; {complete} hours complete; "
          f"{final.stdout.strip()}")
    assert complete > 0
    assert leftover == [], "a vacuum leaves no file the tables' logs do not list"


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
    """Every table's files have exactly the columns and types docs/tables.md lists, in order;
    a Delta table's timestamps are in microseconds, Delta's precision."""
    documented = documented_columns()
    for name in TABLES:
        files = data_files(out, name)
        if files:
            schema = pq.read_schema(files[0])
            columns = [(f.name, str(f.type)) for f in schema]
            if is_delta(out, name):
                columns = [(c, t.replace("timestamp[us", "timestamp[ms")) for c, t in columns]
            assert columns == documented[name], name
