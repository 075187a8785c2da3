//! Domain types: the three event kinds and their enums, shared by every codec, and money.
//!
//! Field names and enum symbols are the ones of the Avro contracts in `schemas/`; the JSON
//! format uses the same names, so one set of serde derives serves Avro and JSON alike.

mod channel;
mod money;

pub use channel::classify_channel;
pub use money::{minor_to_major, minor_unit_exponent};

use serde::{Deserialize, Serialize};

/// Event time: UTC milliseconds since the Unix epoch.
pub type EventTimeMs = i64;

/// Declares a string-valued enum whose symbols match an Avro enum, with an `as_str` for labels
/// and a catch-all symbol that unknown (newer) producer symbols decode into.
macro_rules! symbol_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $symbol:literal),+ $(,)? } other $other:ident => $other_symbol:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $symbol)] $variant,)+
            /// A symbol this build does not know (or the schema's default symbol).
            #[serde(rename = $other_symbol, other)]
            $other,
        }

        impl $name {
            /// Every symbol, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+ $name::$other];

            /// How many symbols there are.
            pub const COUNT: usize = Self::ALL.len();

            /// Position in [`Self::ALL`], for dense per-symbol tables.
            pub fn index(self) -> usize {
                self as usize
            }

            /// The schema symbol, also used as Parquet value and Prometheus label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $symbol,)+
                    $name::$other => $other_symbol,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

symbol_enum! {
    /// What a visitor did.
    ClickEventType {
        /// A page or app screen was shown.
        PageView => "page_view",
        /// A search was run.
        Search => "search",
        /// A product detail page was shown.
        ProductView => "product_view",
        /// A product was added to the cart.
        AddToCart => "add_to_cart",
        /// A product was removed from the cart.
        RemoveFromCart => "remove_from_cart",
        /// Checkout started.
        BeginCheckout => "begin_checkout",
        /// Payment details entered.
        AddPaymentInfo => "add_payment_info",
        /// Payment completed; carries `order_id`.
        Purchase => "purchase",
    } other Unknown => "unknown"
}

symbol_enum! {
    /// Marketing channel, a bounded label set (GA4 default grouping plus Chinese marketplace channels).
    Channel {
        /// Typed-in URL, bookmark, no referrer.
        Direct => "direct",
        /// Unpaid search engine results.
        OrganicSearch => "organic_search",
        /// Paid search, marketplace search ads (直通车).
        PaidSearch => "paid_search",
        /// Display and programmatic ads (钻展, 引力魔方).
        Display => "display",
        /// Affiliates (淘宝客).
        Affiliate => "affiliate",
        /// Social and influencer posts (抖音, 小红书, 微博 KOL).
        Social => "social",
        /// Live-stream commerce (直播).
        LiveStream => "live_stream",
        /// Private domain traffic: WeChat groups, official accounts (微信, 私域).
        PrivateDomain => "private_domain",
        /// E-mail and SMS campaigns.
        EmailSms => "email_sms",
        /// Links from other sites.
        Referral => "referral",
    } other Other => "other"
}

symbol_enum! {
    /// Client form factor.
    Device {
        /// Native app.
        App => "app",
        /// Mobile browser.
        MobileWeb => "mobile_web",
        /// Desktop browser.
        Desktop => "desktop",
        /// Mini program inside a super app (WeChat, Alipay, Douyin).
        MiniProgram => "mini_program",
    } other Other => "other"
}

symbol_enum! {
    /// Order lifecycle step.
    OrderEventType {
        /// Order placed, not yet paid.
        Created => "created",
        /// Payment captured.
        Paid => "paid",
        /// Cancelled (unpaid timeout, or by buyer or merchant before shipping).
        Cancelled => "cancelled",
        /// Money returned to the buyer, fully or partly.
        Refunded => "refunded",
    } other Unknown => "unknown"
}

symbol_enum! {
    /// Payment method of a paid order.
    PaymentMethod {
        /// Alipay (支付宝).
        Alipay => "alipay",
        /// WeChat Pay (微信支付).
        WechatPay => "wechat_pay",
        /// International card.
        Card => "card",
        /// UnionPay card.
        Unionpay => "unionpay",
        /// Cash on delivery.
        CashOnDelivery => "cash_on_delivery",
    } other Other => "other"
}

symbol_enum! {
    /// Normalised shipment status.
    ShipmentStatus {
        /// Waybill printed in the warehouse.
        LabelCreated => "label_created",
        /// Carrier took the parcel (揽收).
        PickedUp => "picked_up",
        /// Moving between hubs.
        InTransit => "in_transit",
        /// On the last-mile vehicle.
        OutForDelivery => "out_for_delivery",
        /// Signed for by the recipient (签收).
        Delivered => "delivered",
        /// Delivery attempted, nobody there.
        FailedAttempt => "failed_attempt",
        /// Lost, damaged, held at customs or similar.
        Exception => "exception",
        /// Sent back to the merchant.
        Returned => "returned",
    } other Unknown => "unknown"
}

/// One visitor interaction (topic `clickstream`, key `visitor_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "fields are documented in schemas/clickstream.avsc")]
pub struct ClickEvent {
    pub event_id: String,
    pub event_type: ClickEventType,
    pub event_time: EventTimeMs,
    pub visitor_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub utm_source: Option<String>,
    #[serde(default)]
    pub utm_medium: Option<String>,
    #[serde(default)]
    pub utm_campaign: Option<String>,
    #[serde(default)]
    pub referrer: Option<String>,
    pub device: Device,
    #[serde(default)]
    pub page: Option<String>,
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub category_id: Option<String>,
    #[serde(default)]
    pub price_minor: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub quantity: Option<i32>,
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

impl ClickEvent {
    /// A click with its required fields set and every optional field empty.
    pub fn new(
        event_id: String,
        event_type: ClickEventType,
        event_time: EventTimeMs,
        visitor_id: String,
        device: Device,
    ) -> Self {
        ClickEvent {
            event_id,
            event_type,
            event_time,
            visitor_id,
            user_id: None,
            session_id: None,
            channel: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            referrer: None,
            device,
            page: None,
            product_id: None,
            category_id: None,
            price_minor: None,
            currency: None,
            quantity: None,
            order_id: None,
            region: None,
        }
    }

    /// The channel the event counts under: the tagged one, else classified from utm and referrer.
    pub fn effective_channel(&self) -> Channel {
        self.channel.unwrap_or_else(|| {
            classify_channel(self.utm_source.as_deref(), self.utm_medium.as_deref(), self.referrer.as_deref())
        })
    }
}

/// One order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "fields are documented in schemas/orders.avsc")]
pub struct OrderItem {
    pub sku: String,
    #[serde(default)]
    pub category_id: Option<String>,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// One order lifecycle step (topic `orders`, key `order_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "fields are documented in schemas/orders.avsc")]
pub struct OrderEvent {
    pub event_id: String,
    pub event_type: OrderEventType,
    pub event_time: EventTimeMs,
    pub order_id: String,
    #[serde(default)]
    pub visitor_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    pub channel: Channel,
    pub device: Device,
    #[serde(default)]
    pub region: Option<String>,
    pub currency: String,
    pub items_subtotal_minor: i64,
    pub discount_minor: i64,
    pub shipping_minor: i64,
    pub paid_amount_minor: i64,
    #[serde(default)]
    pub refund_amount_minor: Option<i64>,
    pub items: Vec<OrderItem>,
    #[serde(default)]
    pub payment_method: Option<PaymentMethod>,
    #[serde(default)]
    pub warehouse: Option<String>,
    #[serde(default)]
    pub promised_ship_by: Option<EventTimeMs>,
    #[serde(default)]
    pub promised_deliver_by: Option<EventTimeMs>,
}

/// One shipment status change (topic `logistics`, key `order_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "fields are documented in schemas/logistics.avsc")]
pub struct ShipmentEvent {
    pub event_id: String,
    pub status: ShipmentStatus,
    pub event_time: EventTimeMs,
    pub order_id: String,
    pub shipment_id: String,
    pub carrier: String,
    pub warehouse: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub carrier_status_code: Option<String>,
    #[serde(default)]
    pub exception_reason: Option<String>,
}

/// Which of the three input streams a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Storefront interactions.
    Clickstream,
    /// Order lifecycle.
    Orders,
    /// Shipment scans.
    Logistics,
}

impl Stream {
    /// All streams, in a fixed order.
    pub const ALL: [Stream; 3] = [Stream::Clickstream, Stream::Orders, Stream::Logistics];

    /// Position in [`Stream::ALL`], for per-stream arrays.
    pub fn index(self) -> usize {
        match self {
            Stream::Clickstream => 0,
            Stream::Orders => 1,
            Stream::Logistics => 2,
        }
    }

    /// Short name, used as the default topic name and as a label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Clickstream => "clickstream",
            Stream::Orders => "orders",
            Stream::Logistics => "logistics",
        }
    }
}

/// A decoded event of any stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    /// From `clickstream`.
    Click(ClickEvent),
    /// From `orders`.
    Order(OrderEvent),
    /// From `logistics`.
    Shipment(ShipmentEvent),
}

impl Event {
    /// An event of `stream` with empty strings and the first symbol of every enum: something
    /// for a decoder to write into, never an input.
    pub fn placeholder(stream: Stream) -> Event {
        match stream {
            Stream::Clickstream => {
                Event::Click(ClickEvent::new(String::new(), ClickEventType::ALL[0], 0, String::new(), Device::ALL[0]))
            }
            Stream::Orders => Event::Order(OrderEvent {
                event_id: String::new(),
                event_type: OrderEventType::ALL[0],
                event_time: 0,
                order_id: String::new(),
                visitor_id: None,
                user_id: None,
                channel: Channel::ALL[0],
                device: Device::ALL[0],
                region: None,
                currency: String::new(),
                items_subtotal_minor: 0,
                discount_minor: 0,
                shipping_minor: 0,
                paid_amount_minor: 0,
                refund_amount_minor: None,
                items: Vec::new(),
                payment_method: None,
                warehouse: None,
                promised_ship_by: None,
                promised_deliver_by: None,
            }),
            Stream::Logistics => Event::Shipment(ShipmentEvent {
                event_id: String::new(),
                status: ShipmentStatus::ALL[0],
                event_time: 0,
                order_id: String::new(),
                shipment_id: String::new(),
                carrier: String::new(),
                warehouse: String::new(),
                region: None,
                carrier_status_code: None,
                exception_reason: None,
            }),
        }
    }

    /// The stream this event belongs on.
    pub fn stream(&self) -> Stream {
        match self {
            Event::Click(_) => Stream::Clickstream,
            Event::Order(_) => Stream::Orders,
            Event::Shipment(_) => Stream::Logistics,
        }
    }

    /// Event time in UTC milliseconds.
    pub fn event_time(&self) -> EventTimeMs {
        match self {
            Event::Click(e) => e.event_time,
            Event::Order(e) => e.event_time,
            Event::Shipment(e) => e.event_time,
        }
    }

    /// The producer's unique event id.
    pub fn event_id(&self) -> &str {
        match self {
            Event::Click(e) => &e.event_id,
            Event::Order(e) => &e.event_id,
            Event::Shipment(e) => &e.event_id,
        }
    }

    /// The Kafka message key: `visitor_id` for clicks, `order_id` otherwise.
    pub fn key(&self) -> &str {
        match self {
            Event::Click(e) => &e.visitor_id,
            Event::Order(e) => &e.order_id,
            Event::Shipment(e) => &e.order_id,
        }
    }
}
