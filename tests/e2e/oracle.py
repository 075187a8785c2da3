"""The SQL oracle: metrics computed by DuckDB straight from the generator's --events-file, by
the definitions in ARCHITECTURE.md, and the same metrics read back from storepulse's Parquet.

Events the generator injected as malformed, duplicate (the second copy) or late are excluded:
the tests check separately that storepulse dead-lettered, suppressed or reported exactly those."""

import datetime
import json
import pathlib

import duckdb
from deltalake import DeltaTable

WINDOWS = {"1m": 60_000, "1h": 3_600_000}
SESSION_GAP_MS = 30 * 60_000
ENGAGED_AFTER_MS = 10_000


def is_delta(out: pathlib.Path, name: str) -> bool:
    return (out / name / "_delta_log").is_dir()


def data_files(out: pathlib.Path, name: str, version: int | None = None) -> list[pathlib.Path]:
    """The files a reader sees: a Delta table's live files (newest version, or `version`) as
    the deltalake package reads its log, or every file of a plain Parquet table."""
    if is_delta(out, name):
        uris = DeltaTable(out / name, version=version).file_uris()
        return sorted(pathlib.Path(uri.removeprefix("file://")) for uri in uris)
    return sorted((out / name).glob("*/*/*.parquet"))


def table(out: pathlib.Path, name: str, version: int | None = None) -> str:
    """A DuckDB table expression over every hour partition of one storepulse table: DuckDB
    reads the files, the deltalake package says which (DuckDB's own Delta extension is a
    download away)."""
    if is_delta(out, name):
        files = ", ".join(f"'{path}'" for path in data_files(out, name, version))
        return f"read_parquet([{files}], hive_partitioning = true)"
    return f"read_parquet('{out}/{name}/*/*/*.parquet', hive_partitioning = true)"


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
            FROM {table(out, 'funnel')} GROUP BY ALL ORDER BY ALL"""
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
            FROM {table(out, 'sessions')} ORDER BY ALL"""
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


def load_commerce(con, out: pathlib.Path) -> None:
    """Views over order and logistics events: first copies of well-formed events (late ones
    included: they are real lifecycle facts), and each order's partition as storepulse saw it
    (the producer's partitioner decides it; both topics are keyed by order_id)."""
    con.sql(
        f"""CREATE OR REPLACE TABLE part AS
            SELECT DISTINCT order_id, source_partition AS p FROM {table(out, 'order_facts')}"""
    )
    con.sql(
        """CREATE OR REPLACE VIEW ords AS
           SELECT seq, coalesce(injected, '') AS injected, event.event_id AS id, event.event_type AS kind,
                  event.event_time AS t, event.order_id AS oid, event.channel AS channel, event.currency AS currency,
                  coalesce(event.user_id, event.visitor_id, event.order_id) AS buyer,
                  event.paid_amount_minor AS paid_amount, event.refund_amount_minor AS refund_amount,
                  list_sum([i.quantity FOR i IN event.items]) AS units, event.warehouse AS warehouse,
                  event.promised_ship_by AS ship_by, event.promised_deliver_by AS deliver_by
           FROM ev WHERE topic = 'orders' AND coalesce(injected, '') NOT IN ('malformed', 'duplicate')"""
    )
    if con.sql("SELECT count(*) FROM ev WHERE topic = 'logistics'").fetchall()[0][0] == 0:
        # A short run ends before the first scan; the events file then has no scan fields at all.
        con.sql("""CREATE OR REPLACE TABLE scans (seq BIGINT, injected VARCHAR, t BIGINT, oid VARCHAR,
                                                  status VARCHAR, carrier VARCHAR, warehouse VARCHAR)""")
        return load_lifecycle(con)
    con.sql(
        """CREATE OR REPLACE VIEW scans AS
           SELECT seq, coalesce(injected, '') AS injected, event.event_time AS t, event.order_id AS oid,
                  event.status AS status, event.carrier AS carrier, event.warehouse AS warehouse
           FROM ev WHERE topic = 'logistics' AND coalesce(injected, '') NOT IN ('malformed', 'duplicate')"""
    )
    load_lifecycle(con)


def load_lifecycle(con) -> None:
    """Each order's lifecycle from its events: earliest time of each milestone, refunds, failures."""
    con.sql(
        """CREATE OR REPLACE TABLE lifecycle AS
           WITH o AS (
               SELECT oid, min(t) FILTER (kind = 'created') AS created_at, min(t) FILTER (kind = 'paid') AS paid_at,
                      min(seq) FILTER (kind = 'paid') AS paid_seq,
                      min(t) FILTER (kind = 'cancelled') AS cancelled_at, max(t) FILTER (kind = 'refunded') AS last_refund_at,
                      coalesce(sum(refund_amount) FILTER (kind = 'refunded'), 0) AS refunded,
                      max(ship_by) AS ship_by, max(deliver_by) AS deliver_by, max(warehouse) AS warehouse
               FROM ords GROUP BY oid),
           s AS (
               SELECT oid, min(t) FILTER (status = 'label_created') AS label_created_at,
                      min(t) FILTER (status = 'picked_up') AS picked_up_at, min(seq) FILTER (status = 'picked_up') AS pickup_seq,
                      min(t) FILTER (status = 'delivered') AS delivered_at, min(t) FILTER (status = 'returned') AS returned_at,
                      min(t) FILTER (status = 'exception') AS first_exception_at,
                      count(*) FILTER (status = 'failed_attempt') AS failed_attempts, count(*) FILTER (status = 'exception') AS exceptions,
                      max(carrier) AS carrier
               FROM scans GROUP BY oid)
           SELECT * FROM o FULL JOIN s USING (oid) JOIN part ON part.order_id = oid"""
    )


def orders_from_events(con) -> list[tuple]:
    """Per window size, start, partition, channel ('all' = every channel) and currency:
    created, paid, paid amount, paying buyers, units, cancellations, refunds, refund amount,
    and count and sum of created-to-paid for paid orders whose created event was sent first."""
    return con.sql(
        """
        WITH created AS (SELECT oid, min(seq) AS seq, min(t) AS t FROM ords WHERE kind = 'created' GROUP BY oid),
        e AS (SELECT o.*, part.p, CASE WHEN o.kind = 'paid' AND c.seq < o.seq THEN o.t - c.t END AS latency
              FROM ords o JOIN part ON part.order_id = o.oid LEFT JOIN created c ON c.oid = o.oid
              WHERE o.injected <> 'late'),
        w AS (SELECT w.label, (t // w.ms) * w.ms AS start, e.* FROM e, windows w)
        SELECT label, start, p, coalesce(channel, 'all'), currency,
               count(*) FILTER (kind = 'created'), count(*) FILTER (kind = 'paid'),
               coalesce(sum(paid_amount) FILTER (kind = 'paid'), 0)::BIGINT,
               count(DISTINCT buyer) FILTER (kind = 'paid'), coalesce(sum(units) FILTER (kind = 'paid'), 0)::BIGINT,
               count(*) FILTER (kind = 'cancelled'), count(*) FILTER (kind = 'refunded'),
               coalesce(sum(refund_amount) FILTER (kind = 'refunded'), 0)::BIGINT,
               count(latency), coalesce(sum(latency), 0)::BIGINT
        FROM w GROUP BY GROUPING SETS ((label, start, p, channel, currency), (label, start, p, currency))
        ORDER BY ALL"""
    ).fetchall()


ORDER_COLUMNS = """window_size, epoch_ms(window_start), source_partition, channel, currency, orders_created, orders_paid,
                   paid_amount_minor, paying_buyers, units, cancellations, refunds, refund_amount_minor,
                   created_to_paid_count, created_to_paid_sum_ms"""


def orders_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    return con.sql(f"SELECT {ORDER_COLUMNS} FROM {table(out, 'orders')} ORDER BY ALL").fetchall()


def sales_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    """Paid orders and amount per window and channel, summed over partitions (comparable across runs)."""
    return con.sql(
        f"""SELECT window_size, epoch_ms(window_start), channel, currency, sum(orders_paid)::BIGINT, sum(paid_amount_minor)::BIGINT
            FROM {table(out, 'orders')} GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


COUNTED_STATUSES = "('picked_up', 'delivered', 'failed_attempt', 'exception', 'returned')"


def fulfillment_from_events(con) -> tuple[dict, dict]:
    """Per window size, start, partition, carrier and warehouse (with 'all' rows): the counts,
    on-time numerators and denominators, latency counts and sums, and the backlog at the
    window's end on carrier = 'all' rows. Returns (rows keyed by group, latency lists)."""
    grouped = con.sql(
        f"""
        WITH s AS (
            SELECT s.*, l.p, l.paid_at, l.ship_by, l.deliver_by, l.picked_up_at, l.pickup_seq
            FROM scans s JOIN lifecycle l ON l.oid = s.oid
            WHERE s.injected <> 'late' AND s.status IN {COUNTED_STATUSES}),
        x AS (
            SELECT w.label, (t // w.ms) * w.ms AS start, p, carrier, warehouse, status,
                   status = 'picked_up' AND paid_at IS NOT NULL AND ship_by IS NOT NULL AS ship_promised,
                   status = 'picked_up' AND paid_at IS NOT NULL AND t <= ship_by AS shipped_on_time,
                   status = 'delivered' AND paid_at IS NOT NULL AND deliver_by IS NOT NULL AS deliver_promised,
                   status = 'delivered' AND paid_at IS NOT NULL AND t <= deliver_by AS delivered_on_time,
                   CASE WHEN status = 'picked_up' AND paid_at IS NOT NULL THEN t - paid_at END AS paid_to_pickup,
                   CASE WHEN status = 'delivered' AND pickup_seq < seq THEN t - picked_up_at END AS pickup_to_delivery
            FROM s, windows w)
        SELECT label, start, p, coalesce(carrier, 'all'), coalesce(warehouse, 'all'),
               count(*) FILTER (status = 'picked_up'), count(*) FILTER (status = 'delivered'),
               count(*) FILTER (status = 'failed_attempt'), count(*) FILTER (status = 'exception'),
               count(*) FILTER (status = 'returned'),
               count(*) FILTER (ship_promised), count(*) FILTER (shipped_on_time),
               count(*) FILTER (deliver_promised), count(*) FILTER (delivered_on_time),
               count(paid_to_pickup), coalesce(sum(paid_to_pickup), 0)::BIGINT,
               count(pickup_to_delivery), coalesce(sum(pickup_to_delivery), 0)::BIGINT,
               list(paid_to_pickup) FILTER (paid_to_pickup IS NOT NULL),
               list(pickup_to_delivery) FILTER (pickup_to_delivery IS NOT NULL)
        FROM x GROUP BY GROUPING SETS ((label, start, p, carrier, warehouse), (label, start, p, carrier),
                                       (label, start, p, warehouse), (label, start, p))"""
    ).fetchall()
    rows, latencies = {}, {}
    for r in grouped:
        rows[r[:5]] = list(r[5:18])
        latencies[r[:5]] = (r[18] or [], r[19] or [])
    # Every window with an on-time order event or scan in the partition has rows (and a backlog).
    active = con.sql(
        """WITH a AS (SELECT o.t, l.p FROM ords o JOIN lifecycle l ON l.oid = o.oid WHERE o.injected <> 'late'
                      UNION ALL SELECT s.t, l.p FROM scans s JOIN lifecycle l ON l.oid = s.oid WHERE s.injected <> 'late')
           SELECT DISTINCT w.label, (t // w.ms) * w.ms, p FROM a, windows w"""
    ).fetchall()
    zero = [0] * 13
    for label, start, p in active:
        rows.setdefault((label, start, p, "all", "all"), list(zero))
    windows = sorted({k[:3] for k in rows})
    con.sql("CREATE OR REPLACE TABLE closed(label VARCHAR, start BIGINT, p INTEGER)")
    con.executemany("INSERT INTO closed VALUES (?, ?, ?)", windows)
    backlog = con.sql(
        """
        WITH e AS (SELECT c.label, c.start, c.p, c.start + w.ms AS window_end FROM closed c JOIN windows w ON w.label = c.label),
        b AS (
            SELECT e.label, e.start, e.p, l.warehouse, l.paid_at, l.ship_by, e.window_end
            FROM e JOIN lifecycle l ON l.p = e.p
            WHERE l.paid_at < e.window_end AND NOT coalesce(l.picked_up_at < e.window_end, false)
              AND NOT coalesce(l.delivered_at < e.window_end, false) AND NOT coalesce(l.returned_at < e.window_end, false)
              AND NOT coalesce(l.cancelled_at < e.window_end, false))
        SELECT label, start, p, coalesce(warehouse, 'all'), count(*), count(*) FILTER (ship_by < window_end),
               max(window_end) - min(paid_at)
        FROM b GROUP BY GROUPING SETS ((label, start, p, warehouse), (label, start, p))"""
    ).fetchall()
    backlog_of = {r[:4]: list(r[4:]) for r in backlog}
    for (label, start, p, warehouse), _ in backlog_of.items():
        rows.setdefault((label, start, p, "all", warehouse), list(zero))
    for key, values in rows.items():
        label, start, p, carrier, warehouse = key
        if carrier == "all":
            values.extend(backlog_of.get((label, start, p, warehouse), [0, 0, None]))
        else:
            values.extend([None, None, None])
    return rows, latencies


FULFILLMENT_COLUMNS = """window_size, epoch_ms(window_start), source_partition, carrier, warehouse, picked_up, delivered,
                         failed_attempts, exceptions, returns, ship_promised, shipped_on_time, deliver_promised,
                         delivered_on_time, paid_to_pickup_count, paid_to_pickup_sum_ms, pickup_to_delivery_count,
                         pickup_to_delivery_sum_ms, backlog_orders, backlog_past_ship_by, oldest_unshipped_age_ms"""


def fulfillment_from_parquet(con, out: pathlib.Path) -> dict:
    rows = con.sql(f"SELECT {FULFILLMENT_COLUMNS} FROM {table(out, 'fulfillment')}").fetchall()
    return {r[:5]: list(r[5:]) for r in rows}


def quantiles_from_parquet(con, out: pathlib.Path) -> dict:
    """Latency quantile columns (paid-to-pickup p50/p90/p99, pickup-to-delivery p50/p90/p99) per group."""
    rows = con.sql(
        f"""SELECT window_size, epoch_ms(window_start), source_partition, carrier, warehouse,
                   paid_to_pickup_p50_ms, paid_to_pickup_p90_ms, paid_to_pickup_p99_ms,
                   pickup_to_delivery_p50_ms, pickup_to_delivery_p90_ms, pickup_to_delivery_p99_ms
            FROM {table(out, 'fulfillment')}"""
    ).fetchall()
    return {r[:5]: r[5:] for r in rows}


def exact_quantile(values: list[int], q: float) -> int | None:
    """The value at rank floor(q × (n − 1)), the rank storepulse's sketch estimates."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def facts_from_events(con) -> list[tuple]:
    """One row per order: lifecycle timestamps (ms), refunds, failures and on-time flags."""
    return con.sql(
        """SELECT oid, p, created_at, paid_at, cancelled_at, label_created_at, picked_up_at, delivered_at, returned_at,
                  first_exception_at, last_refund_at, ship_by, deliver_by, refunded, coalesce(failed_attempts, 0),
                  coalesce(exceptions, 0), picked_up_at <= ship_by, delivered_at <= deliver_by, carrier
           FROM lifecycle ORDER BY oid"""
    ).fetchall()


def facts_from_parquet(con, out: pathlib.Path) -> list[tuple]:
    ms = lambda c: f"epoch_ms({c})"  # noqa: E731
    times = ", ".join(ms(c) for c in ["created_at", "paid_at", "cancelled_at", "label_created_at", "picked_up_at",
                                       "delivered_at", "returned_at", "first_exception_at", "last_refund_at",
                                       "promised_ship_by", "promised_deliver_by"])
    return con.sql(
        f"""SELECT order_id, source_partition, {times}, refunded_amount_minor, failed_attempts, exceptions,
                   shipped_on_time, delivered_on_time, carrier
            FROM {table(out, 'order_facts')} ORDER BY order_id"""
    ).fetchall()


def injected_late(con) -> set[tuple]:
    """(stream, event_id) of every event the generator sent late."""
    return set(con.sql("SELECT topic, event.event_id FROM ev WHERE injected = 'late'").fetchall())


def late_from_parquet(con, out: pathlib.Path, family: str) -> list[tuple]:
    """(stream, event_id) of late_events rows of one family (a list: duplicates would show)."""
    if not data_files(out, "late_events"):
        return []
    return con.sql(
        f"SELECT stream, event_id FROM {table(out, 'late_events')} WHERE family = '{family}' ORDER BY ALL"
    ).fetchall()


def rows(result) -> list[tuple]:
    return [tuple(r) for r in result]


TABLES = ["funnel", "sessions", "orders", "fulfillment", "order_facts", "orphan_shipments", "late_events",
          "quarantined_events", "dead_letters"]


def snapshot(out: pathlib.Path) -> dict[str, list[tuple]]:
    """Every row of every table, sorted. Dead letters without the wall-clock rejection time."""
    con = duckdb.connect()
    result = {}
    for name in TABLES:
        if not data_files(out, name):
            result[name] = []
            continue
        exclude = "EXCLUDE (rejected_at, dt, hour)" if name == "dead_letters" else ""
        result[name] = con.sql(f"SELECT * {exclude} FROM {table(out, name)} ORDER BY ALL").fetchall()
    return result


def delta_log(table_dir: pathlib.Path) -> list[dict]:
    """A Delta table's commits as its JSON log says, replayed without the deltalake package:
    per version, the files live after it ({path: rows}), the files it added with new data
    (path, hour partition), and the table's complete-through time after it (UTC ms, or None)."""
    live: dict[str, int] = {}
    complete = None
    versions = []
    for path in sorted((table_dir / "_delta_log").glob("*.json")):
        added = []
        for line in path.read_text().splitlines():
            action = json.loads(line)
            if add := action.get("add"):
                live[add["path"]] = json.loads(add["stats"])["numRecords"]
                if add["dataChange"]:
                    values = add["partitionValues"]
                    added.append((add["path"], (values["dt"], int(values["hour"]))))
            elif remove := action.get("remove"):
                live.pop(remove["path"], None)
            elif (txn := action.get("txn")) and txn["appId"] == COMPLETE_APP_ID:
                complete = txn["version"]
        versions.append({"version": int(path.stem), "live": dict(live), "added": added, "complete_through": complete})
    return versions


# The transaction whose version says how far a storepulse Delta table's hours are complete.
COMPLETE_APP_ID = "storepulse.complete"


def hour_end_ms(partition: tuple[str, int]) -> int:
    """End of a (dt, hour) partition, UTC ms."""
    day = datetime.datetime.strptime(partition[0], "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    return int(day.timestamp() * 1000) + (partition[1] + 1) * 3_600_000


def duplicate_rows(out: pathlib.Path, name: str, version: int | None = None) -> int:
    """Rows of a table (at `version`) that repeat another row exactly; dead letters by their
    source position (their rejection time is the wall clock of whoever wrote them)."""
    if not data_files(out, name, version):
        return 0
    key = "topic, source_partition, source_offset" if name == "dead_letters" else "* EXCLUDE (dt, hour)"
    return duckdb.connect().execute(
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT {key}, count(*) AS n FROM {table(out, name, version)} GROUP BY ALL)"
    ).fetchone()[0]
