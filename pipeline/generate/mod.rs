//! Synthetic storefront traffic: visitors → sessions → funnel steps, orders created → paid →
//! sometimes cancelled or refunded, shipments picked up → in transit → delivered, with faults
//! injected on request.
//!
//! Deterministic: the same [`GeneratorConfig`] yields the same events in the same order.
//! Event times come from a simulated clock driven by the event sequence, never the wall clock;
//! pacing and sending live in [`producer`].

pub mod producer;
mod rng;

pub use rng::Rng;

use crate::event::{
    Channel, ClickEvent, ClickEventType, Device, Event, OrderEvent, OrderEventType, OrderItem, PaymentMethod,
    ShipmentEvent, ShipmentStatus, Stream,
};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Traffic shape over event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Constant arrival rate.
    Steady,
    /// Ramps to ten times the base rate at the first midnight (UTC+8) after the start, then
    /// decays to three times; live streams and affiliates gain share; warehouses slow down.
    Double11,
}

/// A conversion drop for one channel over an interval of event time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConversionDrop {
    /// Channel whose checkout-to-purchase step is degraded.
    pub channel: Channel,
    /// Start of the drop, UTC ms.
    pub from_ms: i64,
    /// End of the drop (exclusive), UTC ms.
    pub until_ms: i64,
    /// Multiplier on the purchase probability (0.2 = an 80 % drop).
    pub factor: f64,
}

/// Faults to inject into the stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Injections {
    /// Degrade one channel's conversion for a while.
    pub conversion_drop: Option<ConversionDrop>,
    /// Fraction of events sent `late_by_ms` after their event time (those still held when a
    /// counted run ends are not sent).
    pub late_fraction: f64,
    /// How late a late event is sent, ms of event time.
    pub late_by_ms: i64,
    /// Fraction of events sent twice (same event_id), as by a retrying producer.
    pub duplicate_fraction: f64,
    /// Fraction of events held back by up to `out_of_order_max_ms`.
    pub out_of_order_fraction: f64,
    /// Upper bound of the out-of-order delay, ms (keep it under the allowed out-of-orderness).
    pub out_of_order_max_ms: i64,
    /// Fraction of model events followed by one malformed message.
    pub malformed_fraction: f64,
}

/// Everything that determines the generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Random seed.
    pub seed: u64,
    /// Simulated clock start, UTC ms.
    pub start_ms: i64,
    /// Model events to draw (injected extras come on top); `None` = unbounded.
    pub count: Option<u64>,
    /// Traffic shape.
    pub profile: Profile,
    /// Base visitor arrival rate, visitors per second of event time.
    pub visitors_per_sec: f64,
    /// Faults to inject.
    pub injections: Injections,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 1,
            start_ms: 1_794_322_800_000, // 2026-11-10T15:00:00Z, 23:00 in Beijing on the eve of Double 11
            count: None,
            profile: Profile::Steady,
            visitors_per_sec: 20.0,
            injections: Injections::default(),
        }
    }
}

/// Which fault an emitted message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Injection {
    /// Sent well after its window closed.
    Late,
    /// A second copy of an event already sent.
    Duplicate,
    /// Sent slightly after later events.
    OutOfOrder,
    /// Not a valid event (see [`MalformedKind`]).
    Malformed,
}

/// How a malformed message is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// Random bytes.
    Garbage,
    /// A valid message with a wrong framing byte (Avro) or cut JSON.
    WrongMagicByte,
    /// Framed with a schema id nobody registered (Avro only).
    UnknownSchemaId,
    /// The datum cut short.
    Truncated,
    /// JSON missing its key field (JSON only; Avro encodes an empty id instead).
    MissingField,
    /// A money field below zero.
    NegativeMoney,
}

impl MalformedKind {
    const ALL: [MalformedKind; 6] = [
        MalformedKind::Garbage,
        MalformedKind::WrongMagicByte,
        MalformedKind::UnknownSchemaId,
        MalformedKind::Truncated,
        MalformedKind::MissingField,
        MalformedKind::NegativeMoney,
    ];
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generated {
    /// Sequence number of the message (0-based, in sending order).
    pub seq: u64,
    /// Stream (topic) it goes to.
    pub stream: Stream,
    /// Fault it carries, if any.
    pub injected: Option<Injection>,
    /// For malformed messages, how they are broken.
    pub malformed_kind: Option<MalformedKind>,
    /// The event (for malformed messages: the event the broken bytes are derived from).
    pub event: Event,
    /// Random bytes for [`MalformedKind::Garbage`].
    #[serde(skip)]
    pub garbage: Vec<u8>,
}

#[derive(Debug)]
struct Scheduled {
    time: i64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

const CHANNELS_STEADY: &[(Channel, f64)] = &[
    (Channel::Direct, 0.18),
    (Channel::OrganicSearch, 0.12),
    (Channel::PaidSearch, 0.16),
    (Channel::Display, 0.08),
    (Channel::Affiliate, 0.08),
    (Channel::Social, 0.14),
    (Channel::LiveStream, 0.10),
    (Channel::PrivateDomain, 0.07),
    (Channel::EmailSms, 0.04),
    (Channel::Referral, 0.03),
];

const CHANNELS_DOUBLE11: &[(Channel, f64)] = &[
    (Channel::Direct, 0.14),
    (Channel::OrganicSearch, 0.07),
    (Channel::PaidSearch, 0.15),
    (Channel::Display, 0.07),
    (Channel::Affiliate, 0.12),
    (Channel::Social, 0.12),
    (Channel::LiveStream, 0.22),
    (Channel::PrivateDomain, 0.07),
    (Channel::EmailSms, 0.03),
    (Channel::Referral, 0.01),
];

const DEVICES: &[(Device, f64)] =
    &[(Device::App, 0.55), (Device::MobileWeb, 0.20), (Device::MiniProgram, 0.15), (Device::Desktop, 0.10)];

const REGIONS: &[&str] = &["CN-ZJ", "CN-JS", "CN-SH", "CN-GD", "CN-BJ", "CN-SC", "CN-HB", "CN-SD", "CN-FJ", "CN-HN"];

/// (category, min price, max price) in fen.
const CATALOG: &[(&str, i64, i64)] = &[
    ("beauty", 4_900, 69_900),
    ("apparel", 5_900, 59_900),
    ("electronics", 19_900, 899_900),
    ("home", 2_900, 129_900),
    ("food", 990, 19_900),
    ("baby", 3_900, 49_900),
    ("sports", 6_900, 199_900),
    ("books", 1_990, 12_900),
];

/// (carrier, weight, median pickup→delivery hours).
const CARRIERS: &[(&str, f64, f64)] = &[
    ("sf", 0.22, 26.0),
    ("jd", 0.14, 22.0),
    ("zto", 0.20, 40.0),
    ("yto", 0.14, 44.0),
    ("yunda", 0.12, 46.0),
    ("sto", 0.12, 44.0),
    ("ems", 0.06, 60.0),
];

/// (warehouse, median paid→pickup hours in steady traffic).
const WAREHOUSES: &[(&str, f64)] = &[("WH-HZ1", 4.0), ("WH-SH2", 5.0), ("WH-GZ1", 6.0), ("WH-CD1", 8.0)];

const PAYMENT_METHODS: &[(PaymentMethod, f64)] = &[
    (PaymentMethod::Alipay, 0.55),
    (PaymentMethod::WechatPay, 0.35),
    (PaymentMethod::Unionpay, 0.06),
    (PaymentMethod::Card, 0.03),
    (PaymentMethod::CashOnDelivery, 0.01),
];

/// utm_source/utm_medium/referrer a landing page of each channel carries.
fn traffic_source(channel: Channel) -> (Option<&'static str>, Option<&'static str>, Option<&'static str>) {
    match channel {
        Channel::Direct => (None, None, None),
        Channel::OrganicSearch => (None, None, Some("https://www.baidu.com/s")),
        Channel::PaidSearch => (Some("taobao"), Some("cpc"), None),
        Channel::Display => (Some("alimama"), Some("display"), None),
        Channel::Affiliate => (Some("taobaoke"), Some("cps"), None),
        Channel::Social => (Some("xiaohongshu"), Some("social"), Some("https://www.xiaohongshu.com/")),
        Channel::LiveStream => (Some("douyin"), Some("live"), Some("https://live.douyin.com/")),
        Channel::PrivateDomain => (Some("wechat"), Some("private"), None),
        Channel::EmailSms => (Some("crm"), Some("sms"), None),
        Channel::Referral => (None, None, Some("https://smzdm.com/p/1")),
        Channel::Other => (Some("partner"), Some("unknown"), None),
    }
}

/// Relative add-to-cart propensity of a channel's visitors.
fn channel_intent(channel: Channel) -> f64 {
    match channel {
        Channel::PaidSearch | Channel::EmailSms | Channel::PrivateDomain => 1.3,
        Channel::LiveStream => 1.5,
        Channel::Direct | Channel::OrganicSearch => 1.1,
        Channel::Affiliate => 1.0,
        Channel::Social | Channel::Referral => 0.8,
        Channel::Display | Channel::Other => 0.6,
    }
}

fn device_intent(device: Device) -> f64 {
    match device {
        Device::App => 1.25,
        Device::MiniProgram => 1.0,
        Device::Desktop => 0.9,
        Device::MobileWeb | Device::Other => 0.7,
    }
}

/// The traffic generator: an iterator of messages in sending order.
pub struct Generator {
    config: GeneratorConfig,
    rng: Rng,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    next_arrival_ms: i64,
    schedule_seq: u64,
    id_seq: u64,
    visitors: u64,
    orders: u64,
    drawn: u64,
    sent: u64,
    clock_ms: i64,
    /// Late and out-of-order events waiting for the clock to pass their release time.
    held: BinaryHeap<Reverse<(i64, u64, HeldEvent)>>,
    /// Duplicates and malformed messages waiting to be sent after a few more messages.
    queued: VecDeque<(u64, Generated)>,
    /// Late events dropped because the run ended before their delay passed.
    late_not_sent: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct HeldEvent {
    event: Event,
    injection: Injection,
}
impl Eq for HeldEvent {}
impl PartialOrd for HeldEvent {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeldEvent {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        // Ties on (release time, sequence) never happen: the sequence is unique.
        std::cmp::Ordering::Equal
    }
}

impl Generator {
    /// A generator for `config`.
    pub fn new(config: GeneratorConfig) -> Self {
        let rng = Rng::new(config.seed);
        Generator {
            next_arrival_ms: config.start_ms,
            clock_ms: config.start_ms,
            config,
            rng,
            scheduled: BinaryHeap::new(),
            schedule_seq: 0,
            id_seq: 0,
            visitors: 0,
            orders: 0,
            drawn: 0,
            sent: 0,
            held: BinaryHeap::new(),
            queued: VecDeque::new(),
            late_not_sent: 0,
        }
    }

    /// Late events not sent because the counted run ended before their delay passed.
    pub fn late_not_sent(&self) -> u64 {
        self.late_not_sent
    }

    /// The simulated clock: event time of the latest model event drawn.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Arrival-rate multiplier of the profile at `t`.
    fn intensity(&self, t: i64) -> f64 {
        match self.config.profile {
            Profile::Steady => 1.0,
            Profile::Double11 => {
                let peak = next_beijing_midnight(self.config.start_ms);
                let start = self.config.start_ms;
                if t < peak {
                    let x = (t - start) as f64 / (peak - start).max(1) as f64;
                    1.0 + 9.0 * x * x
                } else {
                    3.0 + 7.0 * 0.5f64.powf((t - peak) as f64 / (30 * MINUTE) as f64)
                }
            }
        }
    }

    fn next_event_id(&mut self, prefix: &str) -> String {
        self.id_seq += 1;
        format!("{prefix}-{:010}", self.id_seq)
    }

    fn schedule(&mut self, event: Event) {
        self.schedule_seq += 1;
        self.scheduled.push(Reverse(Scheduled { time: event.event_time(), seq: self.schedule_seq, event }));
    }

    /// Draws the next model event in event-time order.
    fn draw(&mut self) -> Event {
        loop {
            if let Some(Reverse(next)) = self.scheduled.peek()
                && next.time <= self.next_arrival_ms
                && let Some(Reverse(next)) = self.scheduled.pop()
            {
                return next.event;
            }
            let arrival = self.next_arrival_ms;
            self.spawn_visitor(arrival);
            let rate = self.config.visitors_per_sec.max(0.001) * self.intensity(arrival);
            let gap_ms = (self.rng.exponential(1000.0 / rate)).max(1.0) as i64;
            self.next_arrival_ms = arrival + gap_ms;
        }
    }

    fn spawn_visitor(&mut self, arrival: i64) {
        self.visitors += 1;
        let visitor_id = format!("v{:09}", self.visitors);
        let channels = match self.config.profile {
            Profile::Steady => CHANNELS_STEADY,
            Profile::Double11 => CHANNELS_DOUBLE11,
        };
        let channel = self.rng.weighted(channels);
        let device = self.rng.weighted(DEVICES);
        let user_id = self.rng.chance(0.6).then(|| format!("u{:08}", self.visitors * 7 % 10_000_019));
        let region = *self.rng.pick(REGIONS);
        let sessions = if self.rng.chance(0.15) { 2 } else { 1 };
        let mut start = arrival;
        for n in 1..=sessions {
            let session_id =
                (device != Device::MobileWeb || self.rng.chance(0.5)).then(|| format!("s-{visitor_id}-{n}"));
            let visit =
                Visit { visitor_id: &visitor_id, user_id: user_id.as_deref(), session_id, channel, device, region };
            self.spawn_session(&visit, start, n == 1);
            start += (self.rng.log_normal(2.0 * HOUR as f64, 0.5)) as i64;
        }
    }

    fn spawn_session(&mut self, visit: &Visit<'_>, start: i64, landing: bool) {
        let mut t = start;
        let think = |rng: &mut Rng| (rng.exponential(15_000.0) as i64).max(200);
        let (utm_source, utm_medium, referrer) =
            if landing { traffic_source(visit.channel) } else { (None, None, None) };
        let landing_page = if landing && visit.channel != Channel::Direct { "/promo/1111" } else { "/" };
        let page_view = self.click(visit, t, ClickEventType::PageView);
        self.schedule(Event::Click(ClickEvent {
            page: Some(landing_page.into()),
            utm_source: utm_source.map(Into::into),
            utm_medium: utm_medium.map(Into::into),
            utm_campaign: utm_source.map(|_| "double11_2026".into()),
            referrer: referrer.map(Into::into),
            ..page_view
        }));
        let extra_pages = if self.rng.chance(0.4) { self.rng.between(1, 3) } else { 0 };
        for _ in 0..extra_pages {
            t += think(&mut self.rng);
            let e = self.click(visit, t, ClickEventType::PageView);
            self.schedule(Event::Click(ClickEvent { page: Some("/category".into()), ..e }));
        }
        if self.rng.chance(0.35) {
            t += think(&mut self.rng);
            let e = self.click(visit, t, ClickEventType::Search);
            self.schedule(Event::Click(ClickEvent { page: Some("/search".into()), ..e }));
        }
        if !self.rng.chance(0.72) {
            return;
        }
        let views = 1 + if self.rng.chance(0.5) { self.rng.between(1, 4) } else { 0 };
        let mut product = self.pick_product();
        for _ in 0..views {
            t += think(&mut self.rng);
            product = self.pick_product();
            let e = self.click(visit, t, ClickEventType::ProductView);
            self.schedule(Event::Click(product.tag(e)));
        }
        let intent = channel_intent(visit.channel) * device_intent(visit.device);
        if !self.rng.chance((0.28 * intent).min(0.95)) {
            return;
        }
        t += think(&mut self.rng);
        let e = self.click(visit, t, ClickEventType::AddToCart);
        self.schedule(Event::Click(ClickEvent { quantity: Some(1), ..product.tag(e) }));
        if self.rng.chance(0.08) {
            t += think(&mut self.rng);
            let e = self.click(visit, t, ClickEventType::RemoveFromCart);
            self.schedule(Event::Click(ClickEvent { quantity: Some(1), ..product.tag(e) }));
            return;
        }
        if !self.rng.chance(0.55) {
            return;
        }
        t += think(&mut self.rng);
        let e = self.click(visit, t, ClickEventType::BeginCheckout);
        self.schedule(Event::Click(ClickEvent { page: Some("/checkout".into()), ..e }));
        if !self.rng.chance(0.85) {
            return;
        }
        t += think(&mut self.rng);
        let e = self.click(visit, t, ClickEventType::AddPaymentInfo);
        self.schedule(Event::Click(ClickEvent { page: Some("/checkout/pay".into()), ..e }));
        let order = self.new_order(visit, t, product);
        self.schedule(Event::Order(order.clone()));
        let mut purchase_p = 0.88;
        if let Some(drop) = self.config.injections.conversion_drop
            && drop.channel == visit.channel
            && (drop.from_ms..drop.until_ms).contains(&t)
        {
            purchase_p *= drop.factor;
        }
        if !self.rng.chance(purchase_p) {
            let cancelled = OrderEvent {
                event_id: self.next_event_id("o"),
                event_type: OrderEventType::Cancelled,
                event_time: t + 15 * MINUTE,
                ..order
            };
            self.schedule(Event::Order(cancelled));
            return;
        }
        t += (self.rng.exponential(8_000.0) as i64).max(500);
        let e = self.click(visit, t, ClickEventType::Purchase);
        self.schedule(Event::Click(ClickEvent {
            order_id: Some(order.order_id.clone()),
            page: Some("/checkout/done".into()),
            ..e
        }));
        self.pay_and_ship(order, t);
    }

    fn click(&mut self, visit: &Visit<'_>, t: i64, event_type: ClickEventType) -> ClickEvent {
        let event_id = self.next_event_id("c");
        ClickEvent {
            user_id: visit.user_id.map(Into::into),
            session_id: visit.session_id.clone(),
            channel: Some(visit.channel),
            region: Some(visit.region.to_owned()),
            ..ClickEvent::new(event_id, event_type, t, visit.visitor_id.to_owned(), visit.device)
        }
    }

    fn pick_product(&mut self) -> Product {
        let index = self.rng.between(0, CATALOG.len() as i64 - 1) as usize;
        let (category, lo, hi) = CATALOG[index];
        let sku = self.rng.between(1, 400);
        // Prices end in 9 or 0, as shops set them.
        let price = self.rng.between(lo / 100, hi / 100) * 100 - if self.rng.chance(0.5) { 10 } else { 0 };
        Product { id: format!("p-{category}-{sku:04}"), category, price_minor: price.max(100) }
    }

    fn new_order(&mut self, visit: &Visit<'_>, t: i64, first: Product) -> OrderEvent {
        self.orders += 1;
        let mut items = vec![first];
        for _ in 0..self.rng.between(0, 2) {
            items.push(self.pick_product());
        }
        let items: Vec<OrderItem> = items
            .into_iter()
            .map(|p| OrderItem {
                sku: format!("{}-{}", p.id, self.rng.between(1, 3)),
                category_id: Some(p.category.into()),
                quantity: if self.rng.chance(0.2) { 2 } else { 1 },
                unit_price_minor: p.price_minor,
            })
            .collect();
        let subtotal: i64 = items.iter().map(|i| i64::from(i.quantity) * i.unit_price_minor).sum();
        let discount = match self.config.profile {
            // 满300减50: every full 300 yuan earns 50 off.
            Profile::Double11 => subtotal / 30_000 * 5_000,
            Profile::Steady => {
                if self.rng.chance(0.1) {
                    1_000.min(subtotal / 2)
                } else {
                    0
                }
            }
        };
        let shipping = if subtotal >= 9_900 { 0 } else { 800 };
        OrderEvent {
            event_id: self.next_event_id("o"),
            event_type: OrderEventType::Created,
            event_time: t,
            order_id: format!("ord-{:010}", self.orders),
            visitor_id: Some(visit.visitor_id.to_owned()),
            user_id: visit.user_id.map(Into::into),
            channel: visit.channel,
            device: visit.device,
            region: Some(visit.region.to_owned()),
            currency: "CNY".into(),
            items_subtotal_minor: subtotal,
            discount_minor: discount,
            shipping_minor: shipping,
            paid_amount_minor: 0,
            refund_amount_minor: None,
            items,
            payment_method: None,
            warehouse: None,
            promised_ship_by: None,
            promised_deliver_by: None,
        }
    }

    fn pay_and_ship(&mut self, created: OrderEvent, paid_at: i64) {
        let (warehouse, pickup_hours) = *self.rng.pick(WAREHOUSES);
        let sale_factor = match self.config.profile {
            Profile::Double11 => 2.5,
            Profile::Steady => 1.0,
        };
        let (ship_by, deliver_by) = match self.config.profile {
            Profile::Double11 => (72 * HOUR, 7 * DAY),
            Profile::Steady => (48 * HOUR, 5 * DAY),
        };
        let paid = OrderEvent {
            event_id: self.next_event_id("o"),
            event_type: OrderEventType::Paid,
            event_time: paid_at,
            paid_amount_minor: created.items_subtotal_minor - created.discount_minor + created.shipping_minor,
            payment_method: Some(self.rng.weighted(PAYMENT_METHODS)),
            warehouse: Some(warehouse.into()),
            promised_ship_by: Some(paid_at + ship_by),
            promised_deliver_by: Some(paid_at + deliver_by),
            ..created
        };
        self.schedule(Event::Order(paid.clone()));
        if self.rng.chance(0.025) {
            let cancelled = OrderEvent {
                event_id: self.next_event_id("o"),
                event_type: OrderEventType::Cancelled,
                event_time: paid_at + (self.rng.exponential(30.0 * MINUTE as f64) as i64).max(SECOND),
                refund_amount_minor: Some(paid.paid_amount_minor),
                ..paid
            };
            self.schedule(Event::Order(cancelled));
            return;
        }
        let carrier_index = self.rng.weighted(&CARRIERS.iter().enumerate().map(|(i, c)| (i, c.1)).collect::<Vec<_>>());
        let (carrier, _, transit_hours) = CARRIERS[carrier_index];
        let shipment = Shipment {
            order_id: paid.order_id.clone(),
            shipment_id: format!("{}{:012}", carrier.to_uppercase(), self.orders * 7919 % 1_000_000_000_000),
            carrier,
            warehouse,
            region: paid.region.clone(),
        };
        let label_at = paid_at + (self.rng.log_normal(40.0 * MINUTE as f64, 0.6) as i64).max(MINUTE);
        let pickup_at = label_at + self.rng.log_normal(pickup_hours * sale_factor * HOUR as f64, 0.7) as i64;
        let transit_at = pickup_at + (self.rng.log_normal(2.0 * HOUR as f64, 0.4) as i64).max(MINUTE);
        self.ship(&shipment, label_at, ShipmentStatus::LabelCreated, None);
        self.ship(&shipment, pickup_at, ShipmentStatus::PickedUp, None);
        self.ship(&shipment, transit_at, ShipmentStatus::InTransit, None);
        let mut out_at = pickup_at + self.rng.log_normal(transit_hours * HOUR as f64, 0.5) as i64;
        if self.rng.chance(0.03) {
            let exception_at = transit_at + (self.rng.log_normal(10.0 * HOUR as f64, 0.5) as i64).max(MINUTE);
            self.ship(&shipment, exception_at, ShipmentStatus::Exception, Some("parcel damaged at hub"));
            if self.rng.chance(0.5) {
                let returned_at = exception_at + 2 * DAY;
                self.ship(&shipment, returned_at, ShipmentStatus::Returned, None);
                self.refund(&paid, returned_at + HOUR, paid.paid_amount_minor);
                return;
            }
            out_at = out_at.max(exception_at) + DAY;
        }
        self.ship(&shipment, out_at, ShipmentStatus::OutForDelivery, None);
        let mut delivered_at = out_at + (self.rng.exponential(3.0 * HOUR as f64) as i64).max(10 * MINUTE);
        if self.rng.chance(0.05) {
            let failed_at = out_at + 3 * HOUR;
            self.ship(&shipment, failed_at, ShipmentStatus::FailedAttempt, Some("recipient not available"));
            let again = failed_at + 20 * HOUR;
            self.ship(&shipment, again, ShipmentStatus::OutForDelivery, None);
            delivered_at = again + 3 * HOUR;
        }
        self.ship(&shipment, delivered_at, ShipmentStatus::Delivered, None);
        if self.rng.chance(0.03) {
            let refund_at = delivered_at + self.rng.log_normal(2.0 * DAY as f64, 0.5) as i64;
            let amount =
                paid.items.first().map_or(paid.paid_amount_minor, |i| i.unit_price_minor.min(paid.paid_amount_minor));
            self.refund(&paid, refund_at, amount);
        }
    }

    fn refund(&mut self, paid: &OrderEvent, at: i64, amount: i64) {
        let refunded = OrderEvent {
            event_id: self.next_event_id("o"),
            event_type: OrderEventType::Refunded,
            event_time: at,
            refund_amount_minor: Some(amount),
            ..paid.clone()
        };
        self.schedule(Event::Order(refunded));
    }

    fn ship(&mut self, s: &Shipment, at: i64, status: ShipmentStatus, reason: Option<&str>) {
        let code = match status {
            ShipmentStatus::LabelCreated => "10",
            ShipmentStatus::PickedUp => "20",
            ShipmentStatus::InTransit => "30",
            ShipmentStatus::OutForDelivery => "40",
            ShipmentStatus::Delivered => "50",
            ShipmentStatus::FailedAttempt => "45",
            ShipmentStatus::Exception => "90",
            ShipmentStatus::Returned => "70",
            ShipmentStatus::Unknown => "00",
        };
        let event = ShipmentEvent {
            event_id: self.next_event_id("l"),
            status,
            event_time: at,
            order_id: s.order_id.clone(),
            shipment_id: s.shipment_id.clone(),
            carrier: s.carrier.into(),
            warehouse: s.warehouse.into(),
            region: s.region.clone(),
            carrier_status_code: Some(code.into()),
            exception_reason: reason.map(Into::into),
        };
        self.schedule(Event::Shipment(event));
    }

    fn emit(&mut self, stream: Stream, event: Event, injected: Option<Injection>) -> Generated {
        let generated =
            Generated { seq: self.sent, stream, injected, malformed_kind: None, event, garbage: Vec::new() };
        self.sent += 1;
        generated
    }

    /// Queues faults that follow a just-sent model event.
    fn queue_followers(&mut self, sent: &Generated) {
        let inj = &self.config.injections;
        let (dup, malformed) = (inj.duplicate_fraction, inj.malformed_fraction);
        if dup > 0.0 && self.rng.chance(dup) {
            let after = self.sent + self.rng.between(0, 20) as u64;
            self.queued.push_back((after, Generated { injected: Some(Injection::Duplicate), ..sent.clone() }));
        }
        if malformed > 0.0 && self.rng.chance(malformed) {
            let kind = *self.rng.pick(&MalformedKind::ALL);
            let garbage = (0..self.rng.between(8, 48)).map(|_| (self.rng.next_u64() & 0xff) as u8).collect();
            let after = self.sent;
            self.queued.push_back((
                after,
                Generated { injected: Some(Injection::Malformed), malformed_kind: Some(kind), garbage, ..sent.clone() },
            ));
        }
    }

    fn take_queued(&mut self, force: bool) -> Option<Generated> {
        let due = self.queued.front().is_some_and(|(after, _)| force || *after <= self.sent);
        if !due {
            return None;
        }
        let (_, mut g) = self.queued.pop_front()?;
        g.seq = self.sent;
        self.sent += 1;
        Some(g)
    }

    fn take_held(&mut self, force: bool) -> Option<Generated> {
        loop {
            let due = self.held.peek().is_some_and(|Reverse((release, _, _))| force || *release <= self.clock_ms);
            if !due {
                return None;
            }
            let Reverse((release, _, held)) = self.held.pop()?;
            // Sent now, at the end of a counted run, a late event would not be late: it is dropped,
            // so that every event marked late in the events file was sent after its delay.
            if held.injection == Injection::Late && release > self.clock_ms {
                self.late_not_sent += 1;
                continue;
            }
            let stream = held.event.stream();
            return Some(self.emit(stream, held.event, Some(held.injection)));
        }
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        let exhausted = self.config.count.is_some_and(|c| self.drawn >= c);
        if let Some(g) = self.take_queued(exhausted) {
            return Some(g);
        }
        if let Some(g) = self.take_held(exhausted) {
            self.queue_followers(&g);
            return Some(g);
        }
        if exhausted {
            return None;
        }
        loop {
            let event = self.draw();
            self.drawn += 1;
            self.clock_ms = self.clock_ms.max(event.event_time());
            let inj = self.config.injections.clone();
            if inj.late_fraction > 0.0 && self.rng.chance(inj.late_fraction) {
                self.held.push(Reverse((
                    event.event_time() + inj.late_by_ms,
                    self.drawn,
                    HeldEvent { event, injection: Injection::Late },
                )));
            } else if inj.out_of_order_fraction > 0.0 && self.rng.chance(inj.out_of_order_fraction) {
                let delay = self.rng.between(1, inj.out_of_order_max_ms.max(1));
                self.held.push(Reverse((
                    event.event_time() + delay,
                    self.drawn,
                    HeldEvent { event, injection: Injection::OutOfOrder },
                )));
            } else {
                let stream = event.stream();
                let g = self.emit(stream, event, None);
                self.queue_followers(&g);
                return Some(g);
            }
            if let Some(g) = self.take_held(false) {
                self.queue_followers(&g);
                return Some(g);
            }
            if self.config.count.is_some_and(|c| self.drawn >= c) {
                return self.next();
            }
        }
    }
}

struct Visit<'a> {
    visitor_id: &'a str,
    user_id: Option<&'a str>,
    session_id: Option<String>,
    channel: Channel,
    device: Device,
    region: &'a str,
}

#[derive(Debug, Clone)]
struct Product {
    id: String,
    category: &'static str,
    price_minor: i64,
}

impl Product {
    fn tag(&self, e: ClickEvent) -> ClickEvent {
        ClickEvent {
            product_id: Some(self.id.clone()),
            category_id: Some(self.category.into()),
            price_minor: Some(self.price_minor),
            currency: Some("CNY".into()),
            page: Some(format!("/item/{}", self.id)),
            ..e
        }
    }
}

struct Shipment {
    order_id: String,
    shipment_id: String,
    carrier: &'static str,
    warehouse: &'static str,
    region: Option<String>,
}

/// The first 00:00 in Beijing (UTC+8) strictly after `t`, UTC ms.
fn next_beijing_midnight(t: i64) -> i64 {
    let offset = 8 * HOUR;
    ((t + offset).div_euclid(DAY) + 1) * DAY - offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: u64) -> GeneratorConfig {
        GeneratorConfig { count: Some(count), ..GeneratorConfig::default() }
    }

    #[test]
    fn same_config_gives_same_sequence() {
        let a: Vec<Generated> = Generator::new(config(3_000)).collect();
        let b: Vec<Generated> = Generator::new(config(3_000)).collect();
        assert_eq!(a.len(), 3_000);
        assert_eq!(a, b);
    }

    #[test]
    fn model_events_come_in_event_time_order_and_cover_all_streams() {
        // A slow shop, so that 20 000 events span the hours shipments take.
        let events: Vec<Generated> =
            Generator::new(GeneratorConfig { visitors_per_sec: 0.1, ..config(20_000) }).collect();
        assert!(events.windows(2).all(|w| w[0].event.event_time() <= w[1].event.event_time()));
        for stream in Stream::ALL {
            assert!(events.iter().any(|g| g.stream == stream), "{stream:?} missing");
        }
        assert!(events.iter().any(|g| matches!(&g.event, Event::Click(c) if c.event_type == ClickEventType::Purchase)));
    }

    #[test]
    fn injections_are_marked_and_counted_on_top_of_model_events() {
        let cfg = GeneratorConfig {
            injections: Injections {
                late_fraction: 0.01,
                late_by_ms: MINUTE,
                duplicate_fraction: 0.01,
                out_of_order_fraction: 0.02,
                out_of_order_max_ms: 3_000,
                malformed_fraction: 0.01,
                conversion_drop: None,
            },
            ..config(10_000)
        };
        let mut generator = Generator::new(cfg);
        let events: Vec<Generated> = generator.by_ref().collect();
        let model = events
            .iter()
            .filter(|g| matches!(g.injected, None | Some(Injection::Late | Injection::OutOfOrder)))
            .count() as u64;
        assert!(generator.late_not_sent() > 0, "late events held at the end are dropped");
        assert_eq!(model + generator.late_not_sent(), 10_000);
        for kind in [Injection::Late, Injection::Duplicate, Injection::OutOfOrder, Injection::Malformed] {
            assert!(events.iter().any(|g| g.injected == Some(kind)), "{kind:?} never injected");
        }
        let seqs: Vec<u64> = events.iter().map(|g| g.seq).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn double11_peaks_at_beijing_midnight() {
        let g = Generator::new(GeneratorConfig { profile: Profile::Double11, ..config(1) });
        let peak = next_beijing_midnight(g.config.start_ms);
        assert_eq!(peak, 1_794_322_800_000 + HOUR);
        assert!((g.intensity(peak) - 10.0).abs() < 1e-9);
        assert!(g.intensity(g.config.start_ms) < 1.5);
    }
}
