//! Webhook endpoints as the API shows them: what a client sends to create one and
//! what the server lists. The definitions are stored by the engine
//! (`stele_engine::webhook`); the server delivers (`stele_server::webhook`).

use stele_engine::CursorPosition;
use stele_engine::webhook::{DeliverySettings, Endpoint};

/// What a new endpoint is made of.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    /// Unique name.
    pub name: String,
    /// Target URL.
    pub url: String,
    /// The topic to deliver.
    pub topic: String,
    /// Only these event types (empty = all).
    pub event_types: Vec<String>,
    /// Only keys with this prefix (empty = all).
    pub key_prefix: Vec<u8>,
    /// `whsec_...`; `None` generates one.
    pub secret: Option<String>,
    /// Settings; zero fields take the defaults.
    pub settings: WebhookSettings,
    /// Deliver every retained event, not only those appended from now on.
    pub from_earliest: bool,
}

/// Requested delivery settings: the fields of [`DeliverySettings`], where zero (or
/// empty) means the default.
pub type WebhookSettings = DeliverySettings;

/// An endpoint as listed.
#[derive(Debug, Clone)]
pub struct WebhookView {
    /// The definition (its `secret` is emptied).
    pub endpoint: Endpoint,
    /// `closed`, `half_open` or `open`.
    pub circuit: &'static str,
    /// The endpoint cursor's positions and lag, by partition.
    pub partitions: Vec<CursorPosition>,
    /// Events not yet finished.
    pub lag: u64,
    /// The last failure, empty when none.
    pub last_error: String,
    /// Its HTTP status, 0 for none.
    pub last_status: u16,
    /// Delivered since the server started.
    pub delivered_count: u64,
    /// Dead-lettered since the server started.
    pub dead_lettered_count: u64,
}

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterView {
    /// Where it is stored.
    pub dead_letter_partition: u32,
    /// Where it is stored.
    pub dead_letter_offset: u64,
    /// The original topic.
    pub topic: String,
    /// The original partition.
    pub partition: u32,
    /// The original offset.
    pub offset: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The event type.
    pub event_type: String,
    /// The id it was sent with.
    pub webhook_id: String,
    /// Why it failed.
    pub reason: String,
    /// The last HTTP status, 0 for none.
    pub last_status: u16,
    /// Attempts made.
    pub attempts: u32,
}
