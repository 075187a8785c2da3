"""`storepulse bench` against a real broker: every phase runs over the same pre-produced
events and prints its figures; the full pipeline's Parquet is real output. Figures are not
asserted (a shared machine is too noisy for that; BENCHMARKS.md records a run). Its default
invocation, on the embedded cluster, works."""

import re
import time

import duckdb
from conftest import storepulse
from oracle import table


def figures(text: str, phase: str) -> list[float]:
    line = next(l for l in text.splitlines() if l.startswith(phase))
    return [float(v) for v in line[len(phase):].split()]


def test_bench_measures_every_phase_on_the_same_events(broker, tmp_path):
    out = tmp_path / "bench"
    result = storepulse("bench", "--brokers", broker.address, "--events", "6000", "--latency-for", "12s",
                        "--memory-entries", "20000", "--soak-warm-up", "10s", "--soak", "10s", "--out", out,
                        timeout=600)
    text = result.stdout
    for phase in ["1 ceiling: consume + decode", "2 full pipeline", "3 processing only (in memory)"]:
        events_per_sec, cpu_per_million, events_per_cpu, peak_rss_mb = figures(text, phase)
        assert events_per_sec > 0 and cpu_per_million > 0 and events_per_cpu > 0 and peak_rss_mb > 1, text
    assert "full pipeline did: 6000 events" in text, text
    # The binary's own allocator setting (pipeline/allocator.rs) is in force and reported.
    assert re.search(r"^memory: .*allocator mimalloc, freed memory never returned", text, re.M), text
    assert re.search(r"full pipeline / ceiling: [0-9.]+ %", text), text
    # Phase 3 runs in a fresh process and again in the bench's own, side by side.
    fresh = re.search(r"processing only: (\d+) events per CPU-second in a fresh process", text)
    here = re.search(r"the same in this process after phases 1-2: (\d+) events per CPU-second", text)
    assert fresh and here and int(fresh[1]) > 0 and int(here[1]) > 0, text
    decode = re.search(r"decode only: (\d+) events per CPU-second direct .*, (\d+) through", text)
    assert decode and int(decode[1]) > 0 and int(decode[2]) > 0, text
    latency = re.search(r"sent -> its window's gauge\s+p50\s+(\d+) ms\s+p99\s+(\d+) ms", text)
    assert latency and 0 < int(latency[1]) <= int(latency[2]), text
    memory = re.search(r"memory: (\d+) bytes per open order.*, (\d+) bytes per open session", text)
    assert memory and int(memory[1]) > 50 and int(memory[2]) > 50, text
    # The soak's traffic comes from a generator in a child process and reaches the pipeline.
    soak = text[text.index("soak: resident set over time"):].splitlines()
    samples = [[float(v) for v in line.split()] for line in soak[2:] if re.match(r"\s+\d+\s", line)]
    # Each row: end of the interval, its RSS peak and floor, consumed, open orders and sessions.
    assert len(samples) >= 8 and samples[-1][3] > samples[0][3], text
    assert all(1 < s[2] <= s[1] for s in samples), text
    # The warm-up's intervals are printed but not judged.
    assert samples[-1][0] >= 19, text
    assert re.search(r"RSS after the first 10 s: the interval peaks vary by [0-9.]+ % \(target: within 10 %\), "
                     r"the floors by [0-9.]+ %", text), text
    assert re.search(r"RSS trend after warm-up: the last third's mean peak is [+-][0-9.]+ %", text), text
    # The measured pipeline did the real work: its tables are there and readable.
    visitors = duckdb.connect().execute(
        f"SELECT sum(visitors) FROM {table(out / 'pipeline', 'funnel')}"
        " WHERE window_size = '1m' AND channel = 'all' AND device = 'all'").fetchone()[0]
    assert visitors and visitors > 0


def test_bench_on_the_embedded_cluster_defaults_to_what_it_keeps_and_refuses_more(tmp_path):
    """The embedded mock cluster keeps about 5 MB per partition: the default runs phase 1 over
    every pre-produced event, and more events are refused at once, saying what to pass."""
    started = time.monotonic()
    refused = storepulse("bench", "--events", "1000000", check=False, timeout=30)
    assert refused.returncode != 0 and time.monotonic() - started < 10
    assert "--events 100000 or fewer" in refused.stderr and "--brokers" in refused.stderr, refused.stderr
    result = storepulse("bench", "--latency-for", "0s", "--memory-entries", "0", "--out", tmp_path / "bench", timeout=600)
    assert "events:  100000 pre-produced" in result.stdout, result.stdout
    assert "full pipeline did: 100000 events" in result.stdout, result.stdout
