"""The SQL oracle: metrics computed by DuckDB straight from the generator's --events-file, by
the definitions in ARCHITECTURE.md, and the same metrics read back from storepulse's Parquet.

Events the generator injected as malformed, duplicate (the second copy) or late are excluded:
the tests check separately that storepulse dead-lettered, suppressed or reported exactly those."""

import pathlib

import duckdb

WINDOWS = {"1m": 60_000, "1h": 3_600_000}
SESSION_GAP_MS = 30 * 60_000
ENGAGED_AFTER_MS = 10_000


def load_events(con: duckdb.DuckDBPyConnection, events_file: pathlib.Path) -> None:
    con.sql(
        f"""CREATE OR REPLACE TABLE ev AS
            SELECT seq, topic, injected, event
            FROM read_json('{events_file}', format = 'newline_delimited', maximum_object_size = 1048576)"""
    )
    con.sql(
        """CREATE OR REPLACE VIEW clicks AS
           SELECT event.event_id AS id, event.event_time AS t, event.visitor_id AS visitor, event.session_id AS sid,
                  event.channel AS channel, event.device AS device, event.page AS page, event.event_type AS kind
           FROM ev WHERE topic = 'clickstream' AND coalesce(injected, '') NOT IN ('malformed', 'duplicate', 'late')"""
    )
    windows = ", ".join(f"('{label}', {ms})" for label, ms in WINDOWS.items())
    con.sql(f"CREATE OR REPLACE TABLE windows(label VARCHAR, ms BIGINT); INSERT INTO windows VALUES {windows}")


FUNNEL_COLUMNS = """events, visitors, page_views, product_view_visitors, add_to_cart_visitors,
                    begin_checkout_visitors, purchasing_visitors"""


def funnel_from_events(con) -> list[tuple]:
    """Per window size, start, channel and device, with exact 'all' subtotals:
    (window, start_ms, channel, device, events, visitors, page views, visitors per step)."""
    return con.sql(
        """
        WITH c AS (SELECT w.label AS window_size, (t // w.ms) * w.ms AS start, * FROM clicks, windows w)
        SELECT window_size, start, coalesce(channel, 'all'), coalesce(device, 'all'),
               count(*), count(DISTINCT visitor), count(*) FILTER (WHERE kind = 'page_view'),
               count(DISTINCT visitor) FILTER (WHERE kind = 'product_view'),
               count(DISTINCT visitor) FILTER (WHERE kind = 'add_to_cart'),
               count(DISTINCT visitor) FILTER (WHERE kind = 'begin_checkout'),
               count(DISTINCT visitor) FILTER (WHERE kind = 'purchase')
        FROM c GROUP BY GROUPING SETS ((window_size, start, channel, device), (window_size, start, channel),
                                       (window_size, start, device), (window_size, start))
        ORDER BY ALL"""
    ).fetchall()


def funnel_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    sums = ", ".join(f"sum({c.strip()})::BIGINT" for c in FUNNEL_COLUMNS.split(","))
    return con.sql(
        f"""SELECT window_size, epoch_ms(window_start), channel, device, {sums}
            FROM read_parquet('{out}/funnel/*.parquet') GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def sessions_from_events(con) -> list[tuple]:
    """One row per session: a visitor's events (per client session id, when present) with gaps
    under 30 minutes. Landing = earliest event (ties by event id). The in-order funnel depth is
    how many steps were reached each at or after the previous one."""
    return con.sql(
        f"""
        WITH g AS (
            SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY visitor, sid ORDER BY t, id) < {SESSION_GAP_MS}
                           THEN 0 ELSE 1 END AS starts
            FROM clicks),
        s AS (SELECT *, sum(starts) OVER (PARTITION BY visitor, sid ORDER BY t, id ROWS UNBOUNDED PRECEDING) AS n FROM g),
        k1 AS (SELECT visitor, sid, n, min(t) FILTER (WHERE kind = 'product_view') AS t1 FROM s GROUP BY ALL),
        k2 AS (SELECT k.visitor, k.sid, k.n, any_value(k.t1) AS t1,
                      min(s.t) FILTER (WHERE s.kind = 'add_to_cart' AND s.t >= k.t1) AS t2
               FROM k1 k JOIN s ON s.visitor = k.visitor AND s.sid IS NOT DISTINCT FROM k.sid AND s.n = k.n GROUP BY ALL),
        k3 AS (SELECT k.visitor, k.sid, k.n, any_value(k.t1) AS t1, any_value(k.t2) AS t2,
                      min(s.t) FILTER (WHERE s.kind = 'begin_checkout' AND s.t >= k.t2) AS t3
               FROM k2 k JOIN s ON s.visitor = k.visitor AND s.sid IS NOT DISTINCT FROM k.sid AND s.n = k.n GROUP BY ALL),
        k4 AS (SELECT k.visitor, k.sid, k.n,
                      (k.t1 IS NOT NULL)::INT + (k.t2 IS NOT NULL)::INT + (k.t3 IS NOT NULL)::INT
                      + (min(s.t) FILTER (WHERE s.kind = 'purchase' AND s.t >= k.t3) IS NOT NULL)::INT AS depth
               FROM k3 k JOIN s ON s.visitor = k.visitor AND s.sid IS NOT DISTINCT FROM k.sid AND s.n = k.n
               GROUP BY k.visitor, k.sid, k.n, k.t1, k.t2, k.t3),
        sess AS (
            SELECT visitor, sid, n, min(t) AS start, max(t) AS last,
                   first(channel ORDER BY t, id) AS channel, first(device ORDER BY t, id) AS device,
                   first(page ORDER BY t, id) AS landing_page, count(*) AS events,
                   count(*) FILTER (WHERE kind = 'page_view') AS page_views,
                   bool_or(kind = 'product_view') AS r1, bool_or(kind = 'add_to_cart') AS r2,
                   bool_or(kind = 'begin_checkout') AS r3, bool_or(kind = 'purchase') AS r4
            FROM s GROUP BY visitor, sid, n)
        SELECT (start // 60000) * 60000, start, last, sess.visitor, sess.sid, channel, device, landing_page, events,
               page_views, last - start, (last - start > {ENGAGED_AFTER_MS} OR page_views >= 2 OR r4), r4, r1, r2, r3,
               r4, depth
        FROM sess JOIN k4 ON sess.visitor = k4.visitor AND sess.sid IS NOT DISTINCT FROM k4.sid AND sess.n = k4.n
        ORDER BY ALL"""
    ).fetchall()


def sessions_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    return con.sql(
        f"""SELECT epoch_ms(window_start), epoch_ms(session_start), epoch_ms(session_end), visitor_id,
                   client_session_id, channel, device, landing_page, events, page_views, duration_ms, engaged,
                   converted, reached_product_view, reached_add_to_cart, reached_begin_checkout, reached_purchase,
                   funnel_depth_in_order
            FROM read_parquet('{out}/sessions/*.parquet') ORDER BY ALL"""
    ).fetchall()


# Per session-start window × channel × device; the same query serves both sides (docs/tables.md).
SESSION_WINDOW_SQL = """
    SELECT window_start, channel, device, count(*) AS sessions, count(*) FILTER (WHERE engaged) AS engaged,
           1 - count(*) FILTER (WHERE engaged) / count(*) AS bounce_rate, count(*) FILTER (WHERE converted) AS converted,
           count(*) FILTER (WHERE reached_add_to_cart) AS open_add_to_cart,
           count(*) FILTER (WHERE funnel_depth_in_order >= 2) AS closed_add_to_cart,
           count(*) FILTER (WHERE funnel_depth_in_order >= 4) AS closed_purchase,
           avg(duration_ms) AS avg_duration_ms, avg(page_views) AS pages_per_session
    FROM {source} GROUP BY ALL ORDER BY ALL"""


def session_windows(con, rows: list[tuple]) -> list[tuple]:
    con.sql("""CREATE OR REPLACE TABLE sess_rows(window_start BIGINT, session_start BIGINT, session_end BIGINT,
               visitor_id VARCHAR, client_session_id VARCHAR, channel VARCHAR, device VARCHAR, landing_page VARCHAR,
               events BIGINT, page_views BIGINT, duration_ms BIGINT, engaged BOOLEAN, converted BOOLEAN,
               reached_product_view BOOLEAN, reached_add_to_cart BOOLEAN, reached_begin_checkout BOOLEAN,
               reached_purchase BOOLEAN, funnel_depth_in_order INTEGER)""")
    con.executemany("INSERT INTO sess_rows VALUES (" + ", ".join("?" * 18) + ")", rows)
    return con.sql(SESSION_WINDOW_SQL.format(source="sess_rows")).fetchall()


def sales_from_events(con) -> list[tuple]:
    """(window, window_start_ms, channel, currency, orders_paid, paid_amount_minor)."""
    return con.sql(
        """
        SELECT w.label, (event.event_time // w.ms) * w.ms AS start, event.channel, event.currency,
               count(*), sum(event.paid_amount_minor)::BIGINT
        FROM ev, windows w
        WHERE topic = 'orders' AND coalesce(injected, '') NOT IN ('malformed', 'duplicate', 'late') AND event.event_type = 'paid'
        GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def sales_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    return con.sql(
        f"""SELECT window_size, epoch_ms(window_start), channel, currency, sum(orders_paid)::BIGINT, sum(paid_amount_minor)::BIGINT
            FROM read_parquet('{out}/orders/*.parquet') GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def injected_late(con) -> set[tuple]:
    """(stream, event_id) of every event the generator sent late, on streams with metrics."""
    return set(con.sql(
        "SELECT topic, event.event_id FROM ev WHERE injected = 'late' AND topic IN ('clickstream', 'orders')"
    ).fetchall())


def late_from_parquet(con, out: pathlib.Path, family: str) -> list[tuple]:
    """(stream, event_id) of late_events rows of one family (a list: duplicates would show)."""
    files = list(out.glob("late_events/*.parquet"))
    if not files:
        return []
    return con.sql(
        f"SELECT stream, event_id FROM read_parquet('{out}/late_events/*.parquet') WHERE family = '{family}' ORDER BY ALL"
    ).fetchall()


def rows(result) -> list[tuple]:
    return [tuple(r) for r in result]
