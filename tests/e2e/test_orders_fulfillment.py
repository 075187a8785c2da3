"""Orders and fulfillment end to end: a slow shop whose 30 000 events span three days of event
time, so orders are paid, picked up, delivered, returned and refunded within the run. Sent
through a real broker with duplicates, out-of-order and malformed messages; storepulse's
`orders`, `fulfillment` and `order_facts` tables must equal the SQL oracle over the events file:
exactly for counts, money and latency sums, within the sketch's stated 1 % for quantiles, and
exactly for the backlog at every closed window's end.

No late events are injected here: the backlog at a window's end depends on which events had
arrived when the window closed, and a deliberately late event makes that depend on how the
consumer interleaved two partitions. Late scans are covered by unit tests and test_generate_run."""

import duckdb
from conftest import storepulse, write_config
from oracle import (data_files, exact_quantile, table, facts_from_events, facts_from_parquet, fulfillment_from_events,
                    fulfillment_from_parquet, load_commerce, load_events, orders_from_events, orders_from_parquet,
                    quantiles_from_parquet, rows)

SEED, COUNT = 5, 30_000
RELATIVE_ACCURACY = 0.01


def within_sketch_error(estimate, exact) -> bool:
    if exact is None:
        return estimate is None
    return estimate is not None and abs(estimate - exact) <= RELATIVE_ACCURACY * exact + 1


def test_orders_fulfillment_and_facts_match_the_oracle(broker, tmp_path):
    broker.create_topics()
    events = tmp_path / "events.jsonl"
    storepulse("generate", "--brokers", broker.address, "--count", COUNT, "--seed", SEED, "--profile", "steady",
               "--visitors-per-sec", "0.02", "--duplicate-fraction", "0.01", "--out-of-order-fraction", "0.02",
               "--out-of-order-max", "3s", "--malformed-fraction", "0.002", "--events-file", events)
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.toml", broker, out, "e2e-orders-fulfillment")
    storepulse("run", "--config", config, "--bounded")

    con = duckdb.connect()
    load_events(con, events)
    load_commerce(con, out)

    orders = orders_from_parquet(con, out)
    assert orders == rows(orders_from_events(con))
    assert sum(r[12] for r in orders if r[3] == "all") > 0, "refunds happened"

    actual = fulfillment_from_parquet(con, out)
    expected, latencies = fulfillment_from_events(con)
    assert set(actual) == set(expected)
    for key in sorted(expected):
        assert actual[key] == expected[key], key
    everything = [v for k, v in actual.items() if k[0] == "1h" and k[3] == "all" and k[4] == "all"]
    totals = [sum(v[i] for v in everything) for i in range(14)]
    picked_up, delivered, exceptions, returns, ship_promised, shipped_on_time = (
        totals[0], totals[1], totals[3], totals[4], totals[5], totals[6])
    assert picked_up > 300 and delivered > 100 and exceptions > 0 and returns > 0, totals
    assert 0 < shipped_on_time <= ship_promised == picked_up, "every pickup joined its order"
    assert max(v[13] or 0 for v in actual.values()) > 0, "some window closed with a backlog"

    quantiles = quantiles_from_parquet(con, out)
    checked = 0
    for key, (to_pickup, to_delivery) in latencies.items():
        for values, estimates in ((to_pickup, quantiles[key][:3]), (to_delivery, quantiles[key][3:])):
            for q, estimate in zip((0.5, 0.9, 0.99), estimates):
                assert within_sketch_error(estimate, exact_quantile(values, q)), (key, q, estimate, sorted(values))
                checked += estimate is not None
    assert checked > 500

    facts = facts_from_parquet(con, out)
    assert facts == rows(facts_from_events(con))
    assert con.sql(f"SELECT count(*) FROM {table(out, 'order_facts')} WHERE final_state = 'delivered'").fetchall()[0][0] > 100
    assert data_files(out, "orphan_shipments") == [], "every scan's order arrived"
