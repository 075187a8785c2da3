"""The SQL oracle: metrics computed by DuckDB straight from the generator's --events-file, by
the definitions in ARCHITECTURE.md, and the same metrics read back from storepulse's Parquet."""

import pathlib

import duckdb


def load_events(con: duckdb.DuckDBPyConnection, events_file: pathlib.Path) -> None:
    con.sql(
        f"""CREATE OR REPLACE TABLE ev AS
            SELECT seq, topic, injected, event
            FROM read_json('{events_file}', format = 'newline_delimited', maximum_object_size = 1048576)"""
    )


def funnel_from_events(con) -> list[tuple]:
    """(window_start_ms, channel, visitors, purchasing_visitors), with an exact 'all' row."""
    return con.sql(
        """
        WITH c AS (
            SELECT (event.event_time // 60000) * 60000 AS w, event.channel AS channel,
                   event.visitor_id AS visitor, event.event_type AS t
            FROM ev WHERE topic = 'clickstream' AND coalesce(injected, '') NOT IN ('malformed', 'duplicate'))
        SELECT w, channel, count(DISTINCT visitor), count(DISTINCT visitor) FILTER (WHERE t = 'purchase') FROM c GROUP BY ALL
        UNION ALL
        SELECT w, 'all', count(DISTINCT visitor), count(DISTINCT visitor) FILTER (WHERE t = 'purchase') FROM c GROUP BY ALL
        ORDER BY ALL"""
    ).fetchall()


def sales_from_events(con) -> list[tuple]:
    """(window_start_ms, channel, currency, orders_paid, paid_amount_minor)."""
    return con.sql(
        """
        SELECT (event.event_time // 60000) * 60000 AS w, event.channel, event.currency,
               count(*), sum(event.paid_amount_minor)::BIGINT
        FROM ev WHERE topic = 'orders' AND coalesce(injected, '') NOT IN ('malformed', 'duplicate') AND event.event_type = 'paid'
        GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def funnel_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    return con.sql(
        f"""SELECT epoch_ms(window_start), channel, sum(visitors)::BIGINT, sum(purchasing_visitors)::BIGINT
            FROM read_parquet('{out}/funnel/*.parquet') GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def sales_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    return con.sql(
        f"""SELECT epoch_ms(window_start), channel, currency, sum(orders_paid)::BIGINT, sum(paid_amount_minor)::BIGINT
            FROM read_parquet('{out}/orders/*.parquet') GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def rows(result) -> list[tuple]:
    return [tuple(r) for r in result]
