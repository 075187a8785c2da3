"""storepulse generate → a real broker → storepulse run, checked against the SQL oracle over the
generator's events file (funnel, sessions, orders and order facts, window by window, session by
session and order by order),
against the embedded demo for the same seed and count, and for dead letters of every malformed
kind. Injected late events appear in late_events and nowhere else; injected duplicates are counted
once; out-of-order events within the allowed out-of-orderness are not late."""

import collections

import duckdb
from conftest import free_port, storepulse, write_config
from oracle import (facts_from_events, table, facts_from_parquet, funnel_from_events, funnel_from_parquet, injected_late,
                    late_from_parquet, load_commerce, load_events, orders_from_events, orders_from_parquet, rows,
                    sales_from_parquet, session_windows, sessions_from_events, sessions_from_parquet)

SEED, COUNT = 11, 20_000

# The dead-letter reason each injected malformed kind must produce (Confluent wire format).
EXPECTED_REASON = {
    "garbage": "unframed_payload",
    "wrong_magic_byte": "unsupported_magic_byte",
    "unknown_schema_id": "unknown_schema_id",
    "truncated": "truncated_datum",
    "missing_field": "missing_id",
    "negative_money": "negative_money",
}


def test_generated_traffic_matches_oracle_and_demo_and_dead_letters_every_malformed_message(broker, tmp_path):
    broker.create_topics()
    events = tmp_path / "events.jsonl"
    traffic = ["--count", COUNT, "--seed", SEED, "--malformed-fraction", "0.005", "--duplicate-fraction", "0.01",
               "--out-of-order-fraction", "0.02", "--out-of-order-max", "3s", "--late-fraction", "0.005", "--late-by", "2m"]
    storepulse("generate", "--brokers", broker.address, *traffic, "--events-file", events)

    out = tmp_path / "run"
    config = write_config(tmp_path / "run.toml", broker, out, "e2e-generate-run")
    run_result = storepulse("run", "--config", config, "--bounded")

    con = duckdb.connect()
    load_events(con, events)
    con.sql(f"CREATE TABLE kinds AS SELECT seq, topic, malformed_kind FROM read_json('{events}', format = 'newline_delimited', maximum_object_size = 1048576) WHERE injected = 'malformed'")

    funnel = funnel_from_parquet(con, out)
    assert funnel == rows(funnel_from_events(con))
    all_minutes = [r for r in funnel if r[0] == "1m" and r[2] == "all" and r[3] == "all"]
    assert sum(r[5] for r in all_minutes) > 1_000 and sum(r[10] for r in all_minutes) > 0
    assert {r[0] for r in funnel} == {"1m", "1h"}
    sessions = sessions_from_parquet(con, out)
    assert sessions == rows(sessions_from_events(con))
    assert session_windows(con, sessions) == session_windows(con, rows(sessions_from_events(con)))
    assert any(r[4] is None for r in sessions) and any(r[4] is not None for r in sessions), "gap-based and client sessions"
    assert 0 < sum(1 for r in sessions if r[17] == 4) < sum(1 for r in sessions if r[16]), "some purchases skip steps"
    load_commerce(con, out)
    orders = orders_from_parquet(con, out)
    assert orders == rows(orders_from_events(con))
    assert sum(r[7] for r in orders if r[3] == "all") > 0 and sum(r[13] for r in orders) > 0, "paid orders with latency"
    assert facts_from_parquet(con, out) == rows(facts_from_events(con))
    sales = sales_from_parquet(con, out)

    late = injected_late(con)
    assert len({s for s, _ in late}) == 2, "late events were injected on both streams"
    stream_of = {"traffic": "clickstream", "sessions": "clickstream", "orders": "orders", "fulfillment": "logistics"}
    for family, stream in stream_of.items():
        reported = late_from_parquet(con, out, family)
        assert len(reported) == len(set(reported)), f"a late event was written twice for {family}"
        assert set(reported) == {(s, e) for s, e in late if s == stream}, family

    expected = collections.Counter()
    for topic, kind in con.sql("SELECT topic, malformed_kind FROM kinds").fetchall():
        reason = EXPECTED_REASON[kind]
        if kind == "negative_money" and topic == "logistics":
            reason = "missing_id"  # shipments carry no money; the generator empties an id instead
        expected[reason] += 1
    dead = con.sql(f"SELECT reason, topic, source_offset, octet_length(payload) FROM {table(out, 'dead_letters')}").fetchall()
    assert collections.Counter(r[0] for r in dead) == expected
    assert len(expected) == len(EXPECTED_REASON), "every malformed kind was injected and has its own reason"
    assert all(offset >= 0 and size > 0 for _, _, offset, size in dead)
    out_of_order = con.sql("SELECT count(*) FROM ev WHERE injected = 'out_of_order'").fetchall()[0][0]
    assert out_of_order > 0, "out-of-order events were injected, and none is late: late_events holds exactly the injected late ones"
    duplicates = con.sql("SELECT count(*) FROM ev WHERE injected = 'duplicate'").fetchall()[0][0]
    assert duplicates > 0
    metrics_text = run_result.stderr
    assert f"{duplicates} duplicates" in metrics_text, metrics_text[-500:]

    demo_out = tmp_path / "demo"
    storepulse("demo", *traffic, "--speed", "100000", "--duration", "5m", "--out", demo_out, "--metrics-addr", f"127.0.0.1:{free_port()}")
    assert funnel_from_parquet(con, demo_out) == funnel
    assert sessions_from_parquet(con, demo_out) == sessions
    assert sales_from_parquet(con, demo_out) == sales
