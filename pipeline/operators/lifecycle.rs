//! Order lifecycle state of one orders/logistics partition pair, keyed by `order_id`: every
//! lifecycle timestamp, money, promises, carrier and warehouse of each open order. It joins
//! shipment scans to their order (scans that arrive first wait here), answers backlog questions
//! at a watermark, and emits one [`OrderFact`] per order when it is finished with it.
//!
//! Memory: one [`OrderState`] (fixed size, no per-field allocation; strings are interned
//! [`Symbols`] except the order and buyer ids, which share one allocation) in a dense slab, plus
//! a 4-byte slot number in a hash table that hashes and compares through the slab (so two
//! orders never share state, whatever their hashes). Keeping the large state out of the hash
//! table matters: a table holds up to twice the slots it needs, and those should be small.
//! `storepulse bench` prints the bytes per open order.

pub use super::facts::{OrderFact, OrphanShipment};
use super::state_codec::{Reader, Writer, deserialize_bytes, serialize_bytes};
use crate::event::{
    Channel, Device, OrderEvent, OrderEventType, OrderItem, PaymentMethod, ShipmentEvent, ShipmentStatus,
};
use crate::time::Retention;
use hashbrown::HashTable;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};

/// Marks a timestamp that has not happened (keeps each one 8 bytes instead of 16).
const NONE: i64 = i64::MIN;
/// Marks an unknown interned string.
pub const NO_SYMBOL: u16 = u16::MAX;
/// Separates order id and buyer id in [`OrderState::ids`].
const ID_SEPARATOR: char = '\u{1f}';
/// An order's refunds once their sum has left 64 bits (a sum of refunds is never negative).
const REFUNDS_UNKNOWN: i64 = -1;

/// An order's units: validation bounds its lines and quantities so that they fit 32 bits
/// (`validation.max_order_lines` × `max_line_quantity`, checked at start-up).
fn order_units(items: &[OrderItem]) -> u32 {
    let units: u64 = items.iter().map(|item| u64::from(item.quantity.max(0).unsigned_abs())).sum();
    u32::try_from(units).unwrap_or(u32::MAX)
}

fn opt(t: i64) -> Option<i64> {
    (t != NONE).then_some(t)
}

fn set_first(slot: &mut i64, t: i64) {
    if *slot == NONE || t < *slot {
        *slot = t;
    }
}

/// FNV-1a: short keys, no per-process seed, so the index rebuilds identically after a restore.
fn order_hash(order_id: &str) -> u64 {
    order_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Interned strings of bounded sets (carriers, warehouses, regions, currencies): a `u16` each
/// in state instead of a heap string. Past 65 534 distinct values, new ones fold into `other`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Symbols {
    names: Vec<Box<str>>,
    #[serde(skip)]
    index: HashMap<Box<str>, u16>,
}

impl Symbols {
    /// The id of `name`, interning it on first sight.
    pub fn id(&mut self, name: &str) -> u16 {
        if self.index.len() < self.names.len() {
            self.index = self.names.iter().enumerate().map(|(i, n)| (n.clone(), i as u16)).collect();
        }
        if let Some(id) = self.index.get(name) {
            return *id;
        }
        if self.names.len() >= usize::from(NO_SYMBOL - 1) {
            return self.id_of_other();
        }
        let id = self.names.len() as u16;
        self.names.push(name.into());
        self.index.insert(name.into(), id);
        id
    }

    fn id_of_other(&mut self) -> u16 {
        match self.names.iter().position(|n| &**n == "other") {
            Some(i) => i as u16,
            None => {
                // The last free id is kept for `other`.
                self.names.push("other".into());
                (self.names.len() - 1) as u16
            }
        }
    }

    /// The name of `id`; `None` for [`NO_SYMBOL`].
    pub fn name(&self, id: u16) -> Option<&str> {
        self.names.get(usize::from(id)).map(|n| &**n)
    }
}

const HAS_ORDER: u8 = 1;
const PENDING_PICKUP: u8 = 2;
const PENDING_DELIVERY: u8 = 4;
/// In [`OrderBook::backlog_watch`]. Not encoded: the watch list is rebuilt on restore.
const BACKLOG_WATCH: u8 = 8;

/// Everything known about one order. Times are UTC ms, [`NONE`] until they happen; each
/// milestone keeps its earliest time, so the result does not depend on arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    /// `order_id`, then `buyer_id` after [`ID_SEPARATOR`] once an order event named one.
    ids: Box<str>,
    first_seen: i64,
    last_event: i64,
    created_at: i64,
    paid_at: i64,
    cancelled_at: i64,
    label_created_at: i64,
    picked_up_at: i64,
    delivered_at: i64,
    returned_at: i64,
    first_exception_at: i64,
    last_refund_at: i64,
    promised_ship_by: i64,
    promised_deliver_by: i64,
    /// When the order entered and left the backlog, as [`OrderBook::backlog_at`] counts them:
    /// each event's time, but no earlier than the instants its own partition had already
    /// closed when it arrived (see [`OrderBook::apply_order`]); the earliest over events.
    backlog_paid_at: i64,
    backlog_left_at: i64,
    items_subtotal_minor: i64,
    discount_minor: i64,
    shipping_minor: i64,
    paid_amount_minor: i64,
    refunded_minor: i64,
    units: u32,
    failed_attempts: u16,
    exceptions: u16,
    currency: u16,
    region: u16,
    warehouse: u16,
    carrier: u16,
    channel: Channel,
    device: Device,
    payment_method: Option<PaymentMethod>,
    flags: u8,
}

impl OrderState {
    fn new(order_id: &str, t: i64) -> Self {
        OrderState {
            ids: order_id.into(),
            first_seen: t,
            last_event: t,
            created_at: NONE,
            paid_at: NONE,
            cancelled_at: NONE,
            label_created_at: NONE,
            picked_up_at: NONE,
            delivered_at: NONE,
            returned_at: NONE,
            first_exception_at: NONE,
            last_refund_at: NONE,
            promised_ship_by: NONE,
            promised_deliver_by: NONE,
            backlog_paid_at: NONE,
            backlog_left_at: NONE,
            items_subtotal_minor: 0,
            discount_minor: 0,
            shipping_minor: 0,
            paid_amount_minor: 0,
            refunded_minor: 0,
            units: 0,
            failed_attempts: 0,
            exceptions: 0,
            currency: NO_SYMBOL,
            region: NO_SYMBOL,
            warehouse: NO_SYMBOL,
            carrier: NO_SYMBOL,
            channel: Channel::Other,
            device: Device::Other,
            payment_method: None,
            flags: 0,
        }
    }

    /// The optional milestones, in encoding order; the last two came with state format 4's
    /// successors and are absent (their bit clear) in states written before.
    fn milestones_mut(&mut self) -> [&mut i64; 13] {
        [
            &mut self.created_at,
            &mut self.paid_at,
            &mut self.cancelled_at,
            &mut self.label_created_at,
            &mut self.picked_up_at,
            &mut self.delivered_at,
            &mut self.returned_at,
            &mut self.first_exception_at,
            &mut self.last_refund_at,
            &mut self.promised_ship_by,
            &mut self.promised_deliver_by,
            &mut self.backlog_paid_at,
            &mut self.backlog_left_at,
        ]
    }

    /// Appends the state positionally: times as deltas from `first_seen` behind a presence
    /// mask, symbols shifted so [`NO_SYMBOL`] takes one byte. About 60 bytes plus the ids.
    fn encode(&self, w: &mut Writer) {
        w.str(&self.ids);
        w.i64(self.first_seen);
        w.i64(self.last_event.wrapping_sub(self.first_seen));
        let milestones = [
            self.created_at,
            self.paid_at,
            self.cancelled_at,
            self.label_created_at,
            self.picked_up_at,
            self.delivered_at,
            self.returned_at,
            self.first_exception_at,
            self.last_refund_at,
            self.promised_ship_by,
            self.promised_deliver_by,
            self.backlog_paid_at,
            self.backlog_left_at,
        ];
        let present = milestones.iter().enumerate().fold(0u64, |m, (i, t)| m | (u64::from(*t != NONE) << i));
        w.u64(present);
        for t in milestones.into_iter().filter(|t| *t != NONE) {
            w.i64(t.wrapping_sub(self.first_seen));
        }
        for money in [
            self.items_subtotal_minor,
            self.discount_minor,
            self.shipping_minor,
            self.paid_amount_minor,
            self.refunded_minor,
        ] {
            w.i64(money);
        }
        w.u64(u64::from(self.units));
        w.u64(u64::from(self.failed_attempts));
        w.u64(u64::from(self.exceptions));
        for symbol in [self.currency, self.region, self.warehouse, self.carrier] {
            w.u64(u64::from(symbol.wrapping_add(1)));
        }
        w.u64(index_of(Channel::ALL, self.channel));
        w.u64(index_of(Device::ALL, self.device));
        w.u64(self.payment_method.map_or(0, |p| index_of(PaymentMethod::ALL, p) + 1));
        w.u64(u64::from(self.flags & !BACKLOG_WATCH));
    }

    /// Reads what [`OrderState::encode`] wrote.
    fn decode(r: &mut Reader<'_>) -> Option<Self> {
        let mut state = OrderState::new(r.str()?, 0);
        state.first_seen = r.i64()?;
        state.last_event = r.i64()?.wrapping_add(state.first_seen);
        let present = r.u64()?;
        let first_seen = state.first_seen;
        for (i, t) in state.milestones_mut().into_iter().enumerate() {
            if present & (1 << i) != 0 {
                *t = r.i64()?.wrapping_add(first_seen);
            }
        }
        // Written before the backlog had its own instants: the milestones stand in for them.
        if state.backlog_paid_at == NONE {
            state.backlog_paid_at = state.paid_at;
        }
        if state.backlog_left_at == NONE {
            state.backlog_left_at = state.left_backlog_at();
        }
        state.items_subtotal_minor = r.i64()?;
        state.discount_minor = r.i64()?;
        state.shipping_minor = r.i64()?;
        state.paid_amount_minor = r.i64()?;
        state.refunded_minor = r.i64()?;
        state.units = r.u32()?;
        state.failed_attempts = r.u16()?;
        state.exceptions = r.u16()?;
        for symbol in [&mut state.currency, &mut state.region, &mut state.warehouse, &mut state.carrier] {
            *symbol = r.u16()?.wrapping_sub(1);
        }
        state.channel = *Channel::ALL.get(usize::try_from(r.u64()?).ok()?)?;
        state.device = *Device::ALL.get(usize::try_from(r.u64()?).ok()?)?;
        state.payment_method = match r.u64()? {
            0 => None,
            i => Some(*PaymentMethod::ALL.get(usize::try_from(i - 1).ok()?)?),
        };
        state.flags = u8::try_from(r.u64()?).ok()?;
        Some(state)
    }

    fn order_id(&self) -> &str {
        self.ids.split(ID_SEPARATOR).next().unwrap_or_default()
    }

    fn buyer_id(&self) -> Option<&str> {
        self.ids.split_once(ID_SEPARATOR).map(|(_, buyer)| buyer)
    }

    fn has_order(&self) -> bool {
        self.flags & HAS_ORDER != 0
    }

    /// When the order reached a terminal state (delivered, returned, cancelled), if it did.
    fn terminal_at(&self) -> Option<i64> {
        [self.delivered_at, self.returned_at, self.cancelled_at].into_iter().filter(|t| *t != NONE).max()
    }

    /// Paid, and at `at` neither picked up, delivered, returned nor cancelled, as far as the
    /// backlog counts events (see [`OrderState::backlog_paid_at`]).
    fn unshipped_at(&self, at: i64) -> bool {
        self.backlog_paid_at != NONE && self.backlog_paid_at < at && !self.left_backlog_before(at)
    }

    /// Left the backlog before `at`. Once true, true for every later `at` too: the instant
    /// only ever moves earlier.
    fn left_backlog_before(&self, at: i64) -> bool {
        self.backlog_left_at != NONE && self.backlog_left_at < at
    }

    /// The earliest of the milestones that take an order out of the backlog, or [`NONE`].
    fn left_backlog_at(&self) -> i64 {
        [self.picked_up_at, self.delivered_at, self.returned_at, self.cancelled_at]
            .into_iter()
            .filter(|t| *t != NONE)
            .min()
            .unwrap_or(NONE)
    }

    fn final_state(&self) -> &'static str {
        if self.returned_at != NONE {
            "returned"
        } else if self.delivered_at != NONE {
            "delivered"
        } else if self.cancelled_at != NONE && self.picked_up_at == NONE {
            "cancelled"
        } else if self.picked_up_at != NONE {
            "shipped"
        } else if self.paid_at != NONE {
            "paid"
        } else if self.created_at != NONE {
            "created"
        } else {
            "unknown"
        }
    }
}

/// A join-dependent fulfillment figure, recorded in the window of the scan's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinSample {
    /// A first pickup of a paid order.
    Pickup {
        /// Pickup time, UTC ms.
        at: i64,
        /// Carrier symbol.
        carrier: u16,
        /// Warehouse symbol.
        warehouse: u16,
        /// Pickup minus payment, ms.
        paid_to_pickup_ms: i64,
        /// Against `promised_ship_by`; `None` when the order carries no promise.
        on_time: Option<bool>,
    },
    /// A first delivery of a paid order.
    Delivery {
        /// Delivery time, UTC ms.
        at: i64,
        /// Carrier symbol.
        carrier: u16,
        /// Warehouse symbol.
        warehouse: u16,
        /// Against `promised_deliver_by`; `None` when the order carries no promise.
        on_time: Option<bool>,
    },
}

/// What an order event changed, for the window operators.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrderUpdate {
    /// For a `paid` event: when the order was created, if that event arrived before.
    pub created_at: Option<i64>,
    /// Scans that were waiting for this order's payment.
    pub resolved: Vec<JoinSample>,
}

/// What a scan changed, for the window operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanUpdate {
    /// The scan's carrier, interned.
    pub carrier: u16,
    /// The scan's warehouse, interned.
    pub warehouse: u16,
    /// Whether the scan counts: the order's first pickup, delivery or return, or any failed
    /// attempt or exception.
    pub counts: bool,
    /// Pickup-to-delivery, ms, on a first delivery after a known pickup.
    pub pickup_to_delivery_ms: Option<i64>,
    /// The join figure, when the order's payment is already known.
    pub join: Option<JoinSample>,
}

/// Why an order left the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedReason {
    /// Terminal (delivered, returned, cancelled) and then quiet for the terminal time-to-live.
    Terminal,
    /// No event for the open-order timeout.
    Timeout,
    /// End of a bounded input.
    EndOfInput,
}

impl ClosedReason {
    /// Value of the `closed_reason` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedReason::Terminal => "terminal",
            ClosedReason::Timeout => "timeout",
            ClosedReason::EndOfInput => "end_of_input",
        }
    }
}

/// Unshipped paid orders of one warehouse at a point in event time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Paid, not yet picked up, delivered, returned or cancelled.
    pub orders: u64,
    /// Of those, past `promised_ship_by`.
    pub past_ship_by: u64,
    /// Payment time of the oldest, UTC ms.
    pub oldest_paid_at: Option<i64>,
}

impl Backlog {
    /// Adds another warehouse's (or partition's) backlog.
    pub fn add(&mut self, other: &Backlog) {
        self.orders += other.orders;
        self.past_ship_by += other.past_ship_by;
        self.oldest_paid_at = match (self.oldest_paid_at, other.oldest_paid_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The open orders of one partition pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderBook {
    partition: i32,
    retention: Retention,
    /// Slot in `slots` of each open order, found by order id; rebuilt after a restore.
    #[serde(skip)]
    index: HashTable<u32>,
    /// Order states; slots in `free` hold an empty state and are reused first. Encoded
    /// positionally (see [`OrderState::encode`]): a checkpoint of a million orders stays small.
    #[serde(serialize_with = "serialize_slots", deserialize_with = "deserialize_slots")]
    slots: Vec<OrderState>,
    free: Vec<u32>,
    /// Slots of the paid orders that may still be in a backlog to come: the backlog is counted
    /// over these, not over every order held (most of which, kept for days, shipped long ago).
    /// Marked [`BACKLOG_WATCH`]; rebuilt on restore.
    #[serde(skip)]
    backlog_watch: Vec<u32>,
    /// Interned carriers, warehouses, regions and currencies.
    pub symbols: Symbols,
}

/// Position of `v` in `all` (a symbol enum's `ALL`, whose last symbol is the catch-all).
fn index_of<T: PartialEq>(all: &[T], v: T) -> u64 {
    all.iter().position(|x| *x == v).unwrap_or(all.len() - 1) as u64
}

fn serialize_slots<S: Serializer>(slots: &[OrderState], serializer: S) -> Result<S::Ok, S::Error> {
    let mut w = Writer::default();
    w.u64(slots.len() as u64);
    for state in slots {
        state.encode(&mut w);
    }
    serialize_bytes(&w.bytes, serializer)
}

fn deserialize_slots<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<OrderState>, D::Error> {
    let bytes = deserialize_bytes(deserializer)?;
    let mut r = Reader::new(&bytes);
    let malformed = || serde::de::Error::custom("malformed order state");
    let len = usize::try_from(r.u64().ok_or_else(malformed)?).map_err(|_| malformed())?;
    // Each state takes at least 20 bytes: a corrupt length cannot reserve unbounded memory.
    let mut slots = Vec::with_capacity(len.min(bytes.len() / 20 + 1));
    for _ in 0..len {
        slots.push(OrderState::decode(&mut r).ok_or_else(malformed)?);
    }
    if !r.is_empty() {
        return Err(malformed());
    }
    Ok(slots)
}

impl OrderBook {
    /// Empty state for partition `partition`.
    pub fn new(partition: i32, retention: Retention) -> Self {
        OrderBook {
            partition,
            retention,
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            backlog_watch: Vec::new(),
            symbols: Symbols::default(),
        }
    }

    /// Orders (and orphan candidates) held.
    pub fn open_orders(&self) -> usize {
        self.index.len()
    }

    /// Rebuilds the index and the backlog watch from the slab (after a restore, which stores
    /// neither).
    pub fn rebuild_index(&mut self) {
        let free: std::collections::HashSet<u32> = self.free.iter().copied().collect();
        let slots = &mut self.slots;
        self.index = HashTable::with_capacity(slots.len() - free.len());
        self.backlog_watch.clear();
        for slot in (0..slots.len() as u32).filter(|s| !free.contains(s)) {
            let state = &mut slots[slot as usize];
            state.flags &= !BACKLOG_WATCH;
            if state.paid_at != NONE {
                state.flags |= BACKLOG_WATCH;
                self.backlog_watch.push(slot);
            }
            let slots = &*slots;
            self.index.insert_unique(order_hash(slots[slot as usize].order_id()), slot, |s| {
                order_hash(slots[*s as usize].order_id())
            });
        }
    }

    /// The slot of `order_id`'s state, a fresh one for an order not held; its last event
    /// becomes `t` if later.
    fn entry(&mut self, order_id: &str, t: i64) -> usize {
        let hash = order_hash(order_id);
        let slots = &mut self.slots;
        let found = self.index.find(hash, |s| slots[*s as usize].order_id() == order_id).copied();
        let slot = match found {
            Some(slot) => slot as usize,
            None => {
                let fresh = OrderState::new(order_id, t);
                let slot = match self.free.pop() {
                    Some(slot) => {
                        slots[slot as usize] = fresh;
                        slot
                    }
                    None => {
                        slots.push(fresh);
                        (slots.len() - 1) as u32
                    }
                };
                self.index.insert_unique(hash, slot, |s| order_hash(slots[*s as usize].order_id()));
                slot as usize
            }
        };
        let state = &mut slots[slot];
        state.last_event = state.last_event.max(t);
        slot
    }

    /// Applies an order event (on time or late: lifecycle facts do not depend on windows).
    ///
    /// `counts_from` is the earliest backlog instant the event may change: its partition's
    /// watermark minus the fulfillment lateness when it arrived (`i64::MIN` before any). A
    /// payment or cancellation counts in the backlog from the later of its time and that, so
    /// the backlog at a window's end depends only on which events each partition delivered
    /// before its own watermark passed the window, not on how the two partitions interleaved.
    pub fn apply_order(&mut self, e: &OrderEvent, counts_from: i64) -> OrderUpdate {
        let currency = self.symbols.id(&e.currency);
        let region = e.region.as_deref().map_or(NO_SYMBOL, |r| self.symbols.id(r));
        let warehouse = e.warehouse.as_deref().map_or(NO_SYMBOL, |w| self.symbols.id(w));
        let slot = self.entry(&e.order_id, e.event_time);
        let state = &mut self.slots[slot];
        let mut update = OrderUpdate::default();
        if !state.has_order() || state.buyer_id().is_none() {
            let buyer = e.user_id.as_deref().or(e.visitor_id.as_deref());
            if let Some(buyer) = buyer {
                state.ids = format!("{}{ID_SEPARATOR}{buyer}", e.order_id).into();
            }
        }
        state.flags |= HAS_ORDER;
        state.channel = e.channel;
        state.device = e.device;
        state.currency = currency;
        if region != NO_SYMBOL {
            state.region = region;
        }
        if state.warehouse == NO_SYMBOL {
            state.warehouse = warehouse;
        }
        state.items_subtotal_minor = e.items_subtotal_minor;
        state.discount_minor = e.discount_minor;
        state.shipping_minor = e.shipping_minor;
        state.units = order_units(&e.items);
        if e.paid_amount_minor > 0 {
            state.paid_amount_minor = e.paid_amount_minor;
        }
        if let Some(ship_by) = e.promised_ship_by {
            state.promised_ship_by = ship_by;
        }
        if let Some(deliver_by) = e.promised_deliver_by {
            state.promised_deliver_by = deliver_by;
        }
        state.payment_method = e.payment_method.or(state.payment_method);
        match e.event_type {
            OrderEventType::Created => set_first(&mut state.created_at, e.event_time),
            OrderEventType::Paid => {
                update.created_at = opt(state.created_at);
                let first_payment = state.paid_at == NONE;
                set_first(&mut state.paid_at, e.event_time);
                set_first(&mut state.backlog_paid_at, e.event_time.max(counts_from));
                if first_payment {
                    update.resolved = resolve_pending(state);
                }
                if state.flags & BACKLOG_WATCH == 0 {
                    state.flags |= BACKLOG_WATCH;
                    self.backlog_watch.push(slot as u32);
                }
            }
            OrderEventType::Cancelled => {
                set_first(&mut state.cancelled_at, e.event_time);
                set_first(&mut state.backlog_left_at, e.event_time.max(counts_from));
            }
            OrderEventType::Refunded => {
                let refund = e.refund_amount_minor.unwrap_or(0);
                state.refunded_minor = match state.refunded_minor {
                    known if known >= 0 => known.checked_add(refund).unwrap_or(REFUNDS_UNKNOWN),
                    unknown => unknown,
                };
                state.last_refund_at = state.last_refund_at.max(e.event_time);
            }
            OrderEventType::Unknown => {}
        }
        update
    }

    /// Applies a shipment scan. `on_time` says whether the scan's fulfillment window is still
    /// open; a late scan updates the lifecycle but is not joined into windows. `counts_from`
    /// is as for [`OrderBook::apply_order`], from the logistics partition's watermark.
    pub fn apply_scan(&mut self, e: &ShipmentEvent, on_time: bool, counts_from: i64) -> ScanUpdate {
        let carrier = self.symbols.id(&e.carrier);
        let warehouse = self.symbols.id(&e.warehouse);
        let slot = self.entry(&e.order_id, e.event_time);
        let state = &mut self.slots[slot];
        state.first_seen = state.first_seen.min(e.event_time);
        state.carrier = carrier;
        if state.warehouse == NO_SYMBOL {
            state.warehouse = warehouse;
        }
        let t = e.event_time;
        if matches!(e.status, ShipmentStatus::PickedUp | ShipmentStatus::Delivered | ShipmentStatus::Returned) {
            set_first(&mut state.backlog_left_at, t.max(counts_from));
        }
        let paid = state.paid_at != NONE;
        let mut update = ScanUpdate { carrier, warehouse, counts: false, pickup_to_delivery_ms: None, join: None };
        match e.status {
            ShipmentStatus::LabelCreated => set_first(&mut state.label_created_at, t),
            ShipmentStatus::PickedUp => {
                update.counts = state.picked_up_at == NONE;
                set_first(&mut state.picked_up_at, t);
                if update.counts && on_time {
                    if paid {
                        update.join = Some(pickup_sample(state));
                    } else {
                        state.flags |= PENDING_PICKUP;
                    }
                }
            }
            ShipmentStatus::Delivered => {
                update.counts = state.delivered_at == NONE;
                set_first(&mut state.delivered_at, t);
                if update.counts && on_time {
                    update.pickup_to_delivery_ms = opt(state.picked_up_at).map(|p| t - p);
                    if paid {
                        update.join = Some(delivery_sample(state));
                    } else {
                        state.flags |= PENDING_DELIVERY;
                    }
                }
            }
            ShipmentStatus::Returned => {
                update.counts = state.returned_at == NONE;
                set_first(&mut state.returned_at, t);
            }
            ShipmentStatus::FailedAttempt => {
                update.counts = true;
                state.failed_attempts = state.failed_attempts.saturating_add(1);
            }
            ShipmentStatus::Exception => {
                update.counts = true;
                state.exceptions = state.exceptions.saturating_add(1);
                set_first(&mut state.first_exception_at, t);
            }
            ShipmentStatus::InTransit | ShipmentStatus::OutForDelivery | ShipmentStatus::Unknown => {}
        }
        update
    }

    /// Unshipped paid orders at event time `at`, by warehouse symbol.
    pub fn backlog_at(&self, at: i64) -> BTreeMap<u16, Backlog> {
        let mut out: BTreeMap<u16, Backlog> = BTreeMap::new();
        let watched = self.backlog_watch.iter().map(|slot| &self.slots[*slot as usize]);
        for state in watched.filter(|s| s.unshipped_at(at)) {
            let b = out.entry(state.warehouse).or_default();
            b.orders += 1;
            if state.promised_ship_by != NONE && state.promised_ship_by < at {
                b.past_ship_by += 1;
            }
            b.oldest_paid_at = Some(b.oldest_paid_at.map_or(state.paid_at, |o| o.min(state.paid_at)));
        }
        out
    }

    /// Stops watching the orders that left the backlog before `at`: no backlog counted from
    /// now on is earlier than `at`, so they never count again.
    pub fn settle_backlog(&mut self, at: i64) {
        let slots = &mut self.slots;
        self.backlog_watch.retain(|slot| {
            let state = &mut slots[*slot as usize];
            let watch = state.backlog_paid_at != NONE && !state.left_backlog_before(at);
            if !watch {
                state.flags &= !BACKLOG_WATCH;
            }
            watch
        });
    }

    /// Removes what the watermark has finished with: terminal orders past their time-to-live,
    /// orders without events past the timeout, and scans whose order never came.
    pub fn sweep(&mut self, watermark: i64) -> (Vec<OrderFact>, Vec<OrphanShipment>) {
        let r = self.retention;
        self.remove(watermark, |s| {
            if !s.has_order() {
                (s.first_seen + r.orphan_after_ms < watermark).then_some(ClosedReason::Timeout)
            } else if s.terminal_at().is_some_and(|t| t + r.terminal_ttl_ms < watermark) {
                Some(ClosedReason::Terminal)
            } else {
                (s.last_event + r.open_timeout_ms < watermark).then_some(ClosedReason::Timeout)
            }
        })
    }

    /// Removes everything (end of a bounded input).
    pub fn drain(&mut self, watermark: i64) -> (Vec<OrderFact>, Vec<OrphanShipment>) {
        self.remove(watermark, |_| Some(ClosedReason::EndOfInput))
    }

    fn remove(
        &mut self,
        watermark: i64,
        mut reason: impl FnMut(&OrderState) -> Option<ClosedReason>,
    ) -> (Vec<OrderFact>, Vec<OrphanShipment>) {
        let mut closing: Vec<(u32, ClosedReason)> =
            self.index.iter().filter_map(|slot| reason(&self.slots[*slot as usize]).map(|r| (*slot, r))).collect();
        // Sorted so that output order does not depend on hash-table layout.
        closing.sort_unstable_by(|a, b| self.slots[a.0 as usize].order_id().cmp(self.slots[b.0 as usize].order_id()));
        let (mut facts, mut orphans) = (Vec::new(), Vec::new());
        let mut unwatched = false;
        for (slot, closed_reason) in closing {
            let hash = order_hash(self.slots[slot as usize].order_id());
            if let Ok(entry) = self.index.find_entry(hash, |s| *s == slot) {
                entry.remove();
            }
            self.free.push(slot);
            let state = std::mem::replace(&mut self.slots[slot as usize], OrderState::new("", 0));
            unwatched |= state.flags & BACKLOG_WATCH != 0;
            if state.has_order() {
                facts.push(self.fact(&state, closed_reason, watermark));
            } else {
                orphans.push(self.orphan(&state, closed_reason, watermark));
            }
        }
        if unwatched {
            // A freed slot must leave the watch before it is reused, or it would count twice.
            let slots = &self.slots;
            self.backlog_watch.retain(|slot| slots[*slot as usize].flags & BACKLOG_WATCH != 0);
        }
        (facts, orphans)
    }

    fn symbol(&self, id: u16) -> Option<String> {
        self.symbols.name(id).map(str::to_owned)
    }

    fn fact(&self, s: &OrderState, closed_reason: ClosedReason, watermark: i64) -> OrderFact {
        let versus = |done: i64, promise: i64| (done != NONE && promise != NONE).then_some(done <= promise);
        OrderFact {
            order_id: s.order_id().to_owned(),
            buyer_id: s.buyer_id().map(str::to_owned),
            partition: self.partition,
            channel: s.channel,
            device: s.device,
            region: self.symbol(s.region),
            currency: self.symbol(s.currency),
            payment_method: s.payment_method,
            warehouse: self.symbol(s.warehouse),
            carrier: self.symbol(s.carrier),
            items_subtotal_minor: s.items_subtotal_minor,
            discount_minor: s.discount_minor,
            shipping_minor: s.shipping_minor,
            paid_amount_minor: s.paid_amount_minor,
            refunded_amount_minor: (s.refunded_minor >= 0).then_some(s.refunded_minor),
            units: s.units,
            created_at: opt(s.created_at),
            paid_at: opt(s.paid_at),
            cancelled_at: opt(s.cancelled_at),
            label_created_at: opt(s.label_created_at),
            picked_up_at: opt(s.picked_up_at),
            delivered_at: opt(s.delivered_at),
            returned_at: opt(s.returned_at),
            first_exception_at: opt(s.first_exception_at),
            last_refund_at: opt(s.last_refund_at),
            promised_ship_by: opt(s.promised_ship_by),
            promised_deliver_by: opt(s.promised_deliver_by),
            failed_attempts: s.failed_attempts,
            exceptions: s.exceptions,
            shipped_on_time: versus(s.picked_up_at, s.promised_ship_by),
            delivered_on_time: versus(s.delivered_at, s.promised_deliver_by),
            final_state: s.final_state(),
            closed_reason,
            closed_at_watermark: watermark,
        }
    }

    fn orphan(&self, s: &OrderState, closed_reason: ClosedReason, watermark: i64) -> OrphanShipment {
        OrphanShipment {
            order_id: s.order_id().to_owned(),
            partition: self.partition,
            carrier: self.symbol(s.carrier),
            warehouse: self.symbol(s.warehouse),
            first_scan_at: s.first_seen,
            last_scan_at: s.last_event,
            picked_up_at: opt(s.picked_up_at),
            delivered_at: opt(s.delivered_at),
            closed_reason,
            closed_at_watermark: watermark,
        }
    }
}

fn pickup_sample(s: &OrderState) -> JoinSample {
    JoinSample::Pickup {
        at: s.picked_up_at,
        carrier: s.carrier,
        warehouse: s.warehouse,
        paid_to_pickup_ms: s.picked_up_at - s.paid_at,
        on_time: (s.promised_ship_by != NONE).then_some(s.picked_up_at <= s.promised_ship_by),
    }
}

fn delivery_sample(s: &OrderState) -> JoinSample {
    JoinSample::Delivery {
        at: s.delivered_at,
        carrier: s.carrier,
        warehouse: s.warehouse,
        on_time: (s.promised_deliver_by != NONE).then_some(s.delivered_at <= s.promised_deliver_by),
    }
}

/// Join figures of scans that arrived before the order's payment.
fn resolve_pending(s: &mut OrderState) -> Vec<JoinSample> {
    let mut resolved = Vec::new();
    if s.flags & PENDING_PICKUP != 0 {
        resolved.push(pickup_sample(s));
    }
    if s.flags & PENDING_DELIVERY != 0 {
        resolved.push(delivery_sample(s));
    }
    s.flags &= !(PENDING_PICKUP | PENDING_DELIVERY);
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize, Deserialize)]
    struct Slab(#[serde(serialize_with = "serialize_slots", deserialize_with = "deserialize_slots")] Vec<OrderState>);

    fn time(v: i64, absent: bool) -> i64 {
        if absent { NONE } else { v }
    }

    const MIN: i64 = 60_000;

    /// The backlog by its definition: every order held, none skipped.
    fn backlog_over_every_order(book: &OrderBook, at: i64) -> BTreeMap<u16, Backlog> {
        let mut everything = book.clone();
        everything.backlog_watch = book.index.iter().copied().collect();
        everything.backlog_at(at)
    }

    proptest! {
        /// Payments, scans and cancellations in any order of event time, sweeps that free slots
        /// for reuse, and backlogs counted at ever later times, as the fulfillment windows do.
        #[test]
        fn the_watched_backlog_equals_the_backlog_over_every_order(
            steps in proptest::collection::vec((0u8..8, 0usize..12, 0i64..60), 1..150),
        ) {
            use crate::operators::fixtures::{order, scan};
            let retention = Retention { terminal_ttl_ms: 5 * MIN, open_timeout_ms: 30 * MIN, orphan_after_ms: 10 * MIN };
            let mut book = OrderBook::new(0, retention);
            let mut at = 0;
            for (kind, n, minute) in steps {
                let (id, t) = (format!("o{n}"), minute * MIN);
                match kind {
                    0 | 1 => drop(book.apply_order(&order(OrderEventType::Paid, t, &id, "u"), i64::MIN)),
                    2 => drop(book.apply_scan(&scan(ShipmentStatus::PickedUp, t, &id), true, i64::MIN)),
                    3 => drop(book.apply_scan(&scan(ShipmentStatus::Delivered, t, &id), true, i64::MIN)),
                    4 => drop(book.apply_order(&order(OrderEventType::Cancelled, t, &id, "u"), i64::MIN)),
                    5 => drop(book.apply_scan(&scan(ShipmentStatus::Returned, t, &id), false, i64::MIN)),
                    6 => drop(book.sweep(at)),
                    _ => {
                        at += minute % 7 * MIN;
                        book.settle_backlog(at);
                    }
                }
                for q in [at, at + 3 * MIN, at + 90 * MIN] {
                    prop_assert_eq!(book.backlog_at(q), backlog_over_every_order(&book, q));
                }
            }
            let mut cbor = Vec::new();
            ciborium::into_writer(&book, &mut cbor).expect("encodes");
            let mut restored: OrderBook = ciborium::from_reader(cbor.as_slice()).expect("decodes");
            restored.rebuild_index();
            for q in [at, at + 90 * MIN] {
                prop_assert_eq!(restored.backlog_at(q), book.backlog_at(q));
            }
        }

        #[test]
        fn order_states_round_trip_through_the_slab_encoding(
            ids in "[a-z0-9-]{0,20}(\u{1f}[a-z0-9]{1,12})?",
            times in proptest::collection::vec((any::<i64>(), any::<bool>()), 15),
            money in proptest::collection::vec(any::<i64>(), 5),
            small in proptest::collection::vec(any::<u16>(), 6),
            (units, enums, flags) in (any::<u32>(), (0usize..32, 0usize..32, 0usize..32), any::<u8>()),
        ) {
            let mut s = OrderState::new(&ids, times[0].0);
            s.last_event = times[1].0;
            for (slot, (v, absent)) in s.milestones_mut().into_iter().zip(&times[2..]) {
                *slot = time(*v, *absent);
            }
            // Absent backlog instants are read as the milestones' (states of earlier releases).
            if s.backlog_paid_at == NONE {
                s.backlog_paid_at = s.paid_at;
            }
            if s.backlog_left_at == NONE {
                s.backlog_left_at = s.left_backlog_at();
            }
            [s.items_subtotal_minor, s.discount_minor, s.shipping_minor, s.paid_amount_minor, s.refunded_minor] =
                [money[0], money[1], money[2], money[3], money[4]];
            s.units = units;
            [s.failed_attempts, s.exceptions, s.currency, s.region, s.warehouse, s.carrier] =
                [small[0], small[1], small[2], NO_SYMBOL, small[4], small[5]];
            s.channel = Channel::ALL[enums.0 % Channel::ALL.len()];
            s.device = Device::ALL[enums.1 % Device::ALL.len()];
            s.payment_method = PaymentMethod::ALL.get(enums.2).copied();
            s.flags = flags & !BACKLOG_WATCH;
            let slots = vec![s.clone(), OrderState::new("", NONE)];
            let mut cbor = Vec::new();
            ciborium::into_writer(&Slab(slots.clone()), &mut cbor).expect("encodes");
            let back: Slab = ciborium::from_reader(cbor.as_slice()).expect("decodes");
            prop_assert_eq!(back.0, slots);
            // Cut anywhere, the bytes are rejected rather than misread.
            let mut w = Writer::default();
            s.encode(&mut w);
            for cut in [0, w.bytes.len() / 2, w.bytes.len() - 1] {
                prop_assert!(OrderState::decode(&mut Reader::new(&w.bytes[..cut])).is_none());
            }
        }
    }
}
