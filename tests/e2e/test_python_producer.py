"""A producer outside the project (confluent-kafka + fastavro, Confluent wire format, its own
schema ids from a writer-schema directory) gives the same numbers as storepulse's generator."""

import duckdb
from conftest import produce_as_external_producer, storepulse, write_config, writer_schemas
from oracle import data_files, funnel_from_events, funnel_from_parquet, load_events, rows, sales_from_parquet

PY_TOPICS = ("py.clickstream", "py.orders", "py.logistics")
PY_SCHEMA_IDS = {"clickstream": 41, "orders": 42, "logistics": 43}


def test_external_confluent_producer_decodes_to_the_same_numbers(broker, tmp_path):
    broker.create_topics()
    broker.create_topics(PY_TOPICS)
    events = tmp_path / "events.jsonl"
    storepulse("generate", "--brokers", broker.address, "--count", 12_000, "--seed", 5, "--events-file", events)

    schemas_dir, parsed = writer_schemas(tmp_path, PY_SCHEMA_IDS)
    produce_as_external_producer(broker.address, "py", events, parsed, PY_SCHEMA_IDS)

    own_out, py_out = tmp_path / "own", tmp_path / "py"
    storepulse("run", "--bounded", "--config", write_config(tmp_path / "own.toml", broker, own_out, "e2e-own"))
    py_config = write_config(tmp_path / "py.toml", broker, py_out, "e2e-py", topics=PY_TOPICS,
                             extra=f'\n[codec]\nwriter_schemas_dir = "{schemas_dir}"\n')
    storepulse("run", "--bounded", "--config", py_config)

    con = duckdb.connect()
    load_events(con, events)
    funnel = funnel_from_parquet(con, py_out)
    assert funnel and funnel == funnel_from_parquet(con, own_out) == rows(funnel_from_events(con))
    assert sales_from_parquet(con, py_out) == sales_from_parquet(con, own_out)
    assert not data_files(py_out, "dead_letters"), "an external producer's valid events are not rejected"
