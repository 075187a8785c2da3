//! Task state of earlier releases (state formats 1 and 2, and headerless snapshots), read into
//! today's task. Those held the whole task in one CBOR value, with the watermarks and seen ids
//! of each partition inside the operators of a fixed set.

use super::clickstream::Clickstream;
use super::commerce::Commerce;
use super::funnel::FunnelSnapshot;
use super::registry::Registry;
use super::task::{Clocks, PartitionTask, TaskHead, TaskId, TaskKind};
use super::{Family, FulfillmentOperator, OrderBook, OrdersOperator, SessionOperator};
use crate::event::Stream;
use crate::snapshot::{SnapshotError, read_cbor};
use crate::time::{Dedupe, LatenessGate, PartitionWatermark, TimeSettings};
use serde::{Deserialize, Serialize};

/// A task as formats 1 and 2 wrote it.
#[derive(Serialize, Deserialize)]
pub(super) struct LegacyTask<F> {
    /// Ids of the clickstream partition, or of a commerce task's orders partition.
    pub(super) dedupe: Dedupe,
    pub(super) operators: LegacyOperators<F>,
}

/// The operators of a legacy task; `F` is the funnel as read (format 1 kept the funnel's
/// touches in it) or as written by tests.
#[derive(Serialize, Deserialize)]
pub(super) enum LegacyOperators<F> {
    Clickstream { watermark: PartitionWatermark, funnel: F, sessions: SessionOperator },
    Commerce(Box<LegacyCommerce>),
}

/// The commerce operator of a legacy task, with its partitions' clocks and the logistics ids.
#[derive(Serialize, Deserialize)]
pub(super) struct LegacyCommerce {
    pub(super) orders: OrdersOperator,
    pub(super) fulfillment: FulfillmentOperator,
    pub(super) book: OrderBook,
    pub(super) orders_watermark: PartitionWatermark,
    pub(super) logistics_watermark: PartitionWatermark,
    pub(super) logistics_gate: LatenessGate,
    pub(super) orders_idle: bool,
    pub(super) logistics_idle: bool,
    pub(super) swept_at: Option<i64>,
    pub(super) base_window_ms: i64,
    /// `None` in releases that kept one id set for both partitions.
    #[serde(default)]
    pub(super) logistics_dedupe: Option<Dedupe>,
}

/// Today's task from the CBOR of a legacy one. Operators `registry` runs besides the built-in
/// ones start empty.
///
/// # Errors
/// When the bytes are not a legacy task, or `registry` does not run the operator they hold.
pub(super) fn restore(cbor: &[u8], registry: &Registry, time: &TimeSettings) -> Result<PartitionTask, SnapshotError> {
    let task: LegacyTask<FunnelSnapshot> = read_cbor(cbor)?;
    let (head, restored): (TaskHead, (&'static str, Box<dyn super::Operator>)) = match task.operators {
        LegacyOperators::Clickstream { watermark, funnel, mut sessions } => {
            let (funnel, visitors) = funnel.into_parts();
            for (visitor, touches) in visitors {
                sessions.set_touches(visitor, touches);
            }
            let head = TaskHead {
                id: TaskId { kind: TaskKind::Clickstream, partition: funnel.partition() },
                clocks: Clocks::from_parts(vec![(Stream::Clickstream, watermark, false)]),
                dedupe: vec![task.dedupe],
            };
            (head, (Clickstream::NAME, Box::new(Clickstream { funnel, sessions })))
        }
        LegacyOperators::Commerce(c) => {
            let c = *c;
            // One set held the ids of both partitions: each partition keeps a copy.
            let logistics_dedupe = c.logistics_dedupe.unwrap_or_else(|| task.dedupe.clone());
            let head = TaskHead {
                id: TaskId { kind: TaskKind::Commerce, partition: c.orders.partition() },
                clocks: Clocks::from_parts(vec![
                    (Stream::Orders, c.orders_watermark, c.orders_idle),
                    (Stream::Logistics, c.logistics_watermark, c.logistics_idle),
                ]),
                dedupe: vec![task.dedupe, logistics_dedupe],
            };
            let mut commerce = Commerce {
                orders: c.orders,
                fulfillment: c.fulfillment,
                book: c.book,
                logistics_gate: c.logistics_gate,
                orders_watermark: c.orders_watermark.current(),
                swept_at: c.swept_at,
                base_window_ms: c.base_window_ms,
            };
            commerce.restored();
            (head, (Commerce::NAME, Box::new(commerce)))
        }
    };
    if registry.of_kind(head.id.kind).all(|r| r.name != restored.0) {
        return Err(SnapshotError::new(format!(
            "holds the state of operator {:?}, which is not registered",
            restored.0
        )));
    }
    Ok(PartitionTask::with_registered(head, vec![restored], registry, time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Channel, ClickEvent, ClickEventType, Device, Event, OrderEventType as O, ShipmentStatus as S};
    use crate::operators::fixtures::{HOUR, order, scan};
    use crate::operators::{Disposition, FunnelOperator, FunnelRow, SessionRow, TaskOutput, builtin};
    use crate::snapshot::{Snapshot, cbor};
    use ciborium::Value;

    const T0: i64 = 1_794_322_800_000;

    fn settings() -> TimeSettings {
        TimeSettings { out_of_orderness_ms: 0, jump_guard: None, ..TimeSettings::default() }
    }

    fn feed(task: &mut PartitionTask, events: impl IntoIterator<Item = Event>) -> TaskOutput {
        let mut out = TaskOutput::default();
        for e in events {
            task.process(&e, 0, &mut out).expect("an event of the task's streams");
        }
        out
    }

    /// `task` as format 2 wrote it: one CBOR value, clocks and ids inside the operators.
    fn format_2_value(task: &PartitionTask) -> Value {
        let bytes = task.snapshot(0).expect("encodes");
        let Snapshot::Sections(sections) = crate::snapshot::read(&bytes).expect("reads") else { panic!("format 3") };
        let head: TaskHead = read_cbor(sections[0].1).expect("the task section");
        let clocks = head.clocks.parts();
        let mut dedupe = head.dedupe.into_iter();
        let first = dedupe.next().expect("a set per stream");
        let operators = match head.id.kind {
            TaskKind::Clickstream => {
                let Clickstream { funnel, sessions } = read_cbor(sections[1].1).expect("the operator");
                LegacyOperators::<FunnelOperator>::Clickstream { watermark: clocks[0].1, funnel, sessions }
            }
            TaskKind::Commerce => {
                let c: Commerce = read_cbor(sections[1].1).expect("the operator");
                LegacyOperators::Commerce(Box::new(LegacyCommerce {
                    orders: c.orders,
                    fulfillment: c.fulfillment,
                    book: c.book,
                    orders_watermark: clocks[0].1,
                    logistics_watermark: clocks[1].1,
                    logistics_gate: c.logistics_gate,
                    orders_idle: clocks[0].2,
                    logistics_idle: clocks[1].2,
                    swept_at: c.swept_at,
                    base_window_ms: c.base_window_ms,
                    logistics_dedupe: dedupe.next(),
                }))
            }
        };
        read_cbor(&cbor(&LegacyTask { dedupe: first, operators }).expect("encodes")).expect("a CBOR value")
    }

    fn with_header(version: u8, value: &Value) -> Vec<u8> {
        [&b"SPST"[..], &[version], &cbor(value).expect("encodes")].concat()
    }

    fn field<'a>(map: &'a mut Value, name: &str) -> &'a mut Value {
        let Value::Map(entries) = map else { panic!("a map") };
        entries.iter_mut().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v).expect("the field")
    }

    fn take(map: &mut Value, name: &str) -> Value {
        std::mem::replace(field(map, name), Value::Null)
    }

    #[test]
    fn a_format_2_task_restores_and_carries_on_as_an_uninterrupted_one() {
        let registry = builtin();
        let mut task = PartitionTask::new(TaskId::of(Stream::Orders, 2), &registry, &settings());
        let paid = [Event::Order(order(O::Created, T0, "o1", "u1")), Event::Order(order(O::Paid, T0 + 1, "o1", "u1"))];
        feed(&mut task, paid);
        feed(&mut task, [Event::Shipment(scan(S::PickedUp, T0 + HOUR, "o1"))]);
        let bytes = with_header(2, &format_2_value(&task));
        let mut restored = PartitionTask::restore(&bytes, &registry, &settings()).expect("restores");
        assert_eq!(restored.id(), task.id());
        assert_eq!(restored.watermark(Stream::Logistics), task.watermark(Stream::Logistics));
        let later = [Event::Order(order(O::Created, T0 + 3 * HOUR, "o2", "u2"))];
        let (mut a, mut b) = (feed(&mut task, later.clone()), feed(&mut restored, later));
        task.close_all(&mut a);
        restored.close_all(&mut b);
        let rows = crate::operators::fixtures::commerce_rows;
        assert_eq!(rows(&a), rows(&b));
        assert!(!rows(&a).0.is_empty() && !rows(&a).2.is_empty(), "the scenario closes windows and orders");
    }

    #[test]
    fn a_checkpoint_with_one_id_set_for_both_streams_restores_with_its_scans_remembered() {
        let registry = builtin();
        let mut task = PartitionTask::new(TaskId::of(Stream::Orders, 2), &registry, &settings());
        let scanned = Event::Shipment(scan(S::PickedUp, T0 + HOUR, "o1"));
        feed(&mut task, [Event::Order(order(O::Created, T0, "o1", "u1")), scanned.clone()]);
        // The earlier layout: no `logistics_dedupe`, the scan's id in the task's one set.
        let mut value = format_2_value(&task);
        let logistics = take(field(field(&mut value, "operators"), "Commerce"), "logistics_dedupe");
        let Value::Map(commerce) = field(field(&mut value, "operators"), "Commerce") else { panic!("a map") };
        commerce.retain(|(k, _)| k.as_text() != Some("logistics_dedupe"));
        *field(&mut value, "dedupe") = logistics;

        let bytes = with_header(2, &value);
        let mut restored = PartitionTask::restore(&bytes, &registry, &settings()).expect("restores");
        assert_eq!(restored.process(&scanned, 0, &mut TaskOutput::default()), Ok(Disposition::Duplicate));
    }

    #[test]
    fn a_clickstream_checkpoint_with_the_funnels_touches_apart_restores_into_the_visitor_table() {
        let click = |visitor: &str, session: Option<&str>, minute: i64, kind| {
            let mut c =
                ClickEvent::new(format!("{visitor}-{minute}"), kind, T0 + minute * 60_000, visitor.into(), Device::App);
            c.session_id = session.map(Into::into);
            c.channel = Some(Channel::PaidSearch);
            Event::Click(c)
        };
        let before = [
            click("a", Some("s1"), 0, ClickEventType::PageView),
            click("a", None, 1, ClickEventType::ProductView),
            click("b", None, 2, ClickEventType::PageView),
        ];
        let after = [
            click("a", Some("s1"), 3, ClickEventType::AddToCart),
            click("b", None, 4, ClickEventType::ProductView),
            click("c", None, 80, ClickEventType::PageView),
        ];
        let registry = builtin();
        let mut task = PartitionTask::new(TaskId::of(Stream::Clickstream, 0), &registry, &settings());
        feed(&mut task, before);

        // Format 1: the funnel's touches under `funnel.visitors`, sessions under `open`, keyed
        // by (visitor, client session id), without their lane.
        let mut value = format_2_value(&task);
        let clickstream = field(field(&mut value, "operators"), "Clickstream");
        let Value::Map(visitors) = take(field(field(clickstream, "sessions"), "sessions"), "entries") else {
            panic!("a map of visitors")
        };
        let (mut touches, mut open) = (Vec::new(), Vec::new());
        for (visitor, mut entry) in visitors {
            touches.push((visitor.clone(), take(&mut entry, "companion")));
            let Value::Array(sessions) = take(&mut entry, "sessions") else { panic!("an array") };
            for mut session in sessions {
                let lane = take(&mut session, "lane");
                let Value::Map(fields) = &mut session else { panic!("a map") };
                fields.retain(|(k, _)| k.as_text() != Some("lane"));
                open.push((Value::Array(vec![visitor.clone(), lane]), Value::Array(vec![session])));
            }
        }
        assert_eq!(open.len(), 3, "a/s1, a/none and b/none");
        let Value::Map(windows_fields) = field(field(clickstream, "sessions"), "sessions") else { panic!("a map") };
        windows_fields.retain(|(k, _)| k.as_text() != Some("entries"));
        windows_fields.push((Value::Text("open".into()), Value::Map(open)));
        let Value::Map(funnel) = field(clickstream, "funnel") else { panic!("a map") };
        funnel.push((Value::Text("visitors".into()), Value::Map(touches)));

        let mut restored = PartitionTask::restore(&with_header(1, &value), &registry, &settings()).expect("restores");
        assert_eq!(restored.report(false).open_sessions, 3);
        let (mut a, mut b) = (feed(&mut task, after.clone()), feed(&mut restored, after));
        task.close_all(&mut a);
        restored.close_all(&mut b);
        let rows =
            |o: &TaskOutput| (o.rows.of::<FunnelRow>().to_vec(), o.rows.of::<SessionRow>().to_vec(), o.late.len());
        assert_eq!(rows(&a), rows(&b));
        let all = a
            .rows
            .of::<FunnelRow>()
            .iter()
            .find(|r| {
                r.window_ms == 60 * 60_000
                    && r.window_start == T0 - T0 % (60 * 60_000)
                    && r.channel.is_none()
                    && r.device.is_none()
            })
            .expect("the hour's all row");
        assert_eq!(all.counts.visitors, 2, "a and b, each counted once across the checkpoint");
    }
}
