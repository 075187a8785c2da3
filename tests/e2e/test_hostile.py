"""Hostile input that passes decoding must not change a number: each attack is sent with the
same good events as a clean run, through a real broker, and every table of the attacked run
equals the clean run's (DuckDB `EXCEPT ALL` both ways) while each attack message is accounted
for in `dead_letters` with its reason.

Attacks: order events on the clickstream topic under the orders schema id (schema identity);
orders with an absurd paid amount or line quantities that would wrap 32 bits (plausibility
bounds); 900 KB junk messages (the dead letter keeps a capped payload, its length and hash);
one valid event per stream stamped 20 hours ahead, early in the run (event-time poisoning: it
goes to `quarantined_events` and moves no watermark; 12,000 events reach no scan, so two).
Topics that contradict the job's contract (orders and logistics not co-partitioned) are refused,
and offsets that retention removed before storepulse read them are counted, never skipped
silently."""

import copy
import hashlib
import io
import json
import random
import signal
import struct
import subprocess
import time
import urllib.request

import duckdb
import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import STOREPULSE, TOPICS, storepulse, write_config, writer_schemas
from oracle import TABLES, data_files, table

SCHEMA_IDS = {"clickstream": 41, "orders": 42, "logistics": 43}
KEPT_PAYLOAD_BYTES = 65_536


def encode(parsed: dict, stream: str, event: dict) -> bytes:
    datum = io.BytesIO()
    fastavro.schemaless_writer(datum, parsed[stream], event)
    return b"\x00" + struct.pack(">I", SCHEMA_IDS[stream]) + datum.getvalue()


def attacks(records: list[dict], parsed: dict) -> tuple[list[tuple[str, bytes, bytes]], dict[str, int]]:
    """(stream, key, value) of each attack message, and how many of each reason they must give."""
    rng = random.Random(32)
    orders = [r for r in records if r["topic"] == "orders" and r["event"]["event_type"] == "paid"]
    sent, reasons = [], {}

    # An order event, written with the orders schema, on the clickstream topic.
    for record in rng.sample(orders, 150):
        sent.append(("clickstream", record["key"].encode(), encode(parsed, "orders", record["event"])))
    reasons["incompatible_writer_schema"] = 150

    # Paid orders whose amount would saturate a window's GMV, or whose units wrap 32 bits.
    for n, record in enumerate(rng.sample(orders, 20)):
        event = copy.deepcopy(record["event"])
        event["event_id"] = f"absurd-{n}"
        if n % 2:
            event["paid_amount_minor"] = 4 * 10**18
        else:
            line = event["items"][0] if event["items"] else {"sku": "s", "category_id": None, "unit_price_minor": 1}
            event["items"] = [dict(line, quantity=2_147_483_647)] * 3
        sent.append(("orders", record["key"].encode(), encode(parsed, "orders", event)))
    reasons["implausible_value"] = 20

    # Junk far larger than any event (its first byte says it is not Confluent-framed).
    for n in range(20):
        sent.append(("orders", f"junk-{n}".encode(), b"junk" + rng.randbytes(900_000 - 4)))
    reasons["unframed_payload"] = 20
    return sent, reasons


def far_future(records: list[dict], parsed: dict) -> dict[int, tuple[str, bytes, bytes]]:
    """One valid event per stream that has traffic, 20 hours ahead of an event of its partition
    (inside the 24 hours validation allows), to be sent right after that event: {position in
    records: message}."""
    inserted = {}
    for stream in sorted({r["topic"] for r in records}):
        position, record = next((n, r) for n, r in enumerate(records) if n > len(records) // 5 and r["topic"] == stream)
        event = dict(record["event"], event_id=f"far-future-{stream}", event_time=record["event"]["event_time"] + 20 * 3_600_000)
        inserted[position] = (stream, record["key"].encode(), encode(parsed, stream, event))
    return inserted


def produce(address: str, topics: str, records: list[dict], parsed: dict, extra=(), inserted=None) -> None:
    """The records in order, each message of `inserted` right after its record, then `extra`."""
    producer = Producer({"bootstrap.servers": address, "linger.ms": 20, "message.max.bytes": 2_000_000})
    for n, record in enumerate(records):
        stream = record["topic"]
        producer.produce(f"{topics}.{stream}", key=record["key"].encode(), value=encode(parsed, stream, record["event"]))
        if n in (inserted or {}):
            stream, key, value = inserted[n]
            producer.produce(f"{topics}.{stream}", key=key, value=value)
        if n % 5_000 == 0:
            producer.flush()
    for stream, key, value in extra:
        producer.produce(f"{topics}.{stream}", key=key, value=value)
        producer.flush()
    assert producer.flush(30) == 0


def test_attacks_change_no_table_and_every_attack_message_is_a_dead_letter(broker, tmp_path):
    broker.create_topics()
    events = tmp_path / "events.jsonl"
    storepulse("generate", "--brokers", broker.address, "--count", 12_000, "--seed", 32, "--events-file", events)
    records = [r for r in map(json.loads, events.read_text().splitlines()) if r["injected"] != "malformed"]

    schemas_dir, parsed = writer_schemas(tmp_path, SCHEMA_IDS)
    attack, reasons = attacks(records, parsed)
    poison = far_future(records, parsed)

    outs = {}
    for run, extra, inserted in (("clean", (), {}), ("attacked", attack, poison)):
        topics = tuple(f"{run}.{stream}" for stream in SCHEMA_IDS)
        broker.create_topics(topics)
        produce(broker.address, run, records, parsed, extra, inserted)
        outs[run] = tmp_path / run
        config = write_config(tmp_path / f"{run}.toml", broker, outs[run], f"hostile-{run}", topics=topics,
                              extra=f'\n[codec]\nwriter_schemas_dir = "{schemas_dir}"\n')
        storepulse("run", "--bounded", "--config", config)

    con = duckdb.connect()
    compared = 0
    for name in TABLES:
        if name in ("dead_letters", "quarantined_events"):
            continue
        clean, attacked = (table(outs[run], name) if data_files(outs[run], name) else None for run in ("clean", "attacked"))
        assert (clean is None) == (attacked is None), f"{name} written by one run only"
        if clean is None:
            continue
        for first, second in ((clean, attacked), (attacked, clean)):
            extra = con.execute(f"SELECT count(*) FROM (SELECT * FROM {first} EXCEPT ALL SELECT * FROM {second})")
            assert extra.fetchone()[0] == 0, f"{name} differs between the clean and the attacked run"
        compared += con.execute(f"SELECT count(*) FROM {clean}").fetchone()[0]
    assert compared > 1_000

    assert not data_files(outs["clean"], "dead_letters")
    letters = table(outs["attacked"], "dead_letters")
    counted = dict(con.execute(f"SELECT reason, count(*) FROM {letters} GROUP BY reason").fetchall())
    assert counted == reasons, f"dead letters by reason {counted}, attacks sent {reasons}"
    junk = {hashlib.sha256(value).hexdigest() for stream, key, value in attack if key.startswith(b"junk-")}
    kept = con.execute(f"""SELECT max(octet_length(payload)), min(payload_length), list(payload_sha256)
                       FROM {letters} WHERE reason = 'unframed_payload'""").fetchone()
    assert kept[0] == KEPT_PAYLOAD_BYTES and kept[1] == 900_000 and set(kept[2]) == junk
    detail = con.execute(f"SELECT any_value(detail) FROM {letters} WHERE reason = 'incompatible_writer_schema'").fetchone()[0]
    assert "com.storepulse.events.OrderEvent" in detail, detail

    assert not data_files(outs["clean"], "quarantined_events")
    quarantined = con.execute(f"""SELECT stream, event_id, ahead_ms, reason
                              FROM {table(outs['attacked'], 'quarantined_events')} ORDER BY stream""").fetchall()
    assert [(stream, event_id, reason) for stream, event_id, _, reason in quarantined] == [
        (stream, f"far-future-{stream}", "far_ahead_uncorroborated") for stream, _, _ in sorted(poison.values())
    ], quarantined
    assert all(ahead > 19 * 3_600_000 for _, _, ahead, _ in quarantined), quarantined
    print(f"{compared} rows equal in both runs; dead letters {counted}; quarantined {len(quarantined)}")


def test_orders_and_logistics_with_different_partition_counts_refuse_to_run(broker, tmp_path):
    topics = ("skew.clickstream", "skew.orders", "skew.logistics")
    broker.create_topics(topics[:2], partitions=4)
    broker.create_topics(topics[2:], partitions=2)
    config = write_config(tmp_path / "skew.toml", broker, tmp_path / "out", "skew", topics=topics)
    for command in (["run", "--config", config], ["run", "--bounded", "--config", config]):
        result = storepulse(*command, check=False, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "skew.orders" in result.stderr and "skew.logistics" in result.stderr, result.stderr[-2000:]
        assert "4 partitions" in result.stderr and "2 partitions" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out" / "orders").exists(), "nothing was written"


def log_bounds(address: str) -> dict[tuple[str, int], tuple[int, int]]:
    """(first, next) offset of every partition of the input topics."""
    consumer = Consumer({"bootstrap.servers": address, "group.id": "bounds"})
    try:
        return {(topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for topic in TOPICS for p in range(4)}
    finally:
        consumer.close()


def test_offsets_removed_by_retention_before_a_restart_are_counted_and_logged(mock_broker, tmp_path):
    # librdkafka's mock cluster keeps at most 5 MB or 100,000 messages per partition.
    storepulse("generate", "--brokers", mock_broker.address, "--count", 20_000, "--seed", 5)
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", mock_broker, out, "retention")
    storepulse("run", "--bounded", "--config", config)
    checkpointed = {tp: end for tp, (_, end) in log_bounds(mock_broker.address).items()}

    storepulse("generate", "--brokers", mock_broker.address, "--count", 600_000, "--seed", 6, timeout=600)
    removed = {tp: first - checkpointed[tp] for tp, (first, _) in log_bounds(mock_broker.address).items()
               if first > checkpointed[tp]}
    assert removed, "the second burst pushed some partition's log start past its checkpoint"

    port = int(config.read_text().split('listen_addr = "127.0.0.1:')[1].split('"')[0])
    run = subprocess.Popen([STOREPULSE, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    counted: dict[tuple[str, int], int] = {}
    try:
        deadline = time.time() + 120
        while counted != removed:
            assert time.time() < deadline and run.poll() is None, f"counted {counted}, removed {removed}"
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    body = response.read().decode()
            except OSError:
                continue
            counted = {}
            for line in body.splitlines():
                if line.startswith("storepulse_offsets_skipped_total{"):
                    labels = dict(part.split("=") for part in line[line.index("{") + 1:line.index("}")].split(","))
                    topic, partition = labels["topic"].strip('"'), int(labels["partition"].strip('"'))
                    if float(line.rsplit(" ", 1)[1]) > 0:
                        counted[(topic, partition)] = int(float(line.rsplit(" ", 1)[1]))
    finally:
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if "offsets removed from the log" in line]
    assert len(errors) == len(removed), stderr[-3000:]
    print(f"{sum(removed.values())} offsets removed by retention in {len(removed)} partitions, all counted and logged")
