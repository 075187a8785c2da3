"""The generator is deterministic: the same seed, start and count give byte-identical events
files whatever the sending rate."""

from conftest import storepulse

FAULTS = ["--late-fraction", "0.01", "--duplicate-fraction", "0.01", "--out-of-order-fraction", "0.02",
          "--malformed-fraction", "0.01", "--drop-channel", "live_stream", "--drop-after", "1m"]


def test_same_seed_gives_byte_identical_events_file_across_runs_and_rates(broker, tmp_path):
    broker.create_topics()
    fast, paced, other = tmp_path / "fast.jsonl", tmp_path / "paced.jsonl", tmp_path / "other.jsonl"
    common = ["generate", "--brokers", broker.address, "--count", 4_000, *FAULTS]
    storepulse(*common, "--seed", 3, "--events-file", fast)
    storepulse(*common, "--seed", 3, "--rate", 2_000, "--events-file", paced)
    storepulse(*common, "--seed", 4, "--speed", 100_000, "--events-file", other)
    assert fast.stat().st_size > 100_000
    assert fast.read_bytes() == paced.read_bytes()
    assert fast.read_bytes() != other.read_bytes()
