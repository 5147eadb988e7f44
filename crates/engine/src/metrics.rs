//! Engine metrics: what the storage engine measures about itself.
//!
//! One [`EngineMetrics`] belongs to each [`Log`](crate::Log) (no global state);
//! `Log::metrics` hands it to whoever exposes metrics (the server registers it
//! in its Prometheus registry with [`EngineMetrics::register`]).
//! Each topic resolves its label set once, when it opens, into a
//! `TopicMetrics` of metric handles; partitions record into those handles.
//!
//! Invariant: nothing is recorded per event or per append on the engine's hot
//! path: group commit records once per group, and the other points (fdatasync,
//! segment roll, retention) are per file operation.
//! Labels are the topic name only: per-partition figures (high watermark,
//! earliest offset, bytes) are read at scrape time by the server instead of
//! being kept here.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the fdatasync duration buckets, in seconds: 50 µs to 2.5 s.
pub const FSYNC_BUCKETS_SECONDS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds of the group commit size buckets (appends or events per group):
/// powers of two from 1 to 8192.
pub const GROUP_SIZE_BUCKETS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// The label set of a per-topic metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The topic's name.
    pub topic: String,
}

impl TopicLabels {
    /// The labels of `topic`.
    pub fn new(topic: &str) -> TopicLabels {
        TopicLabels {
            topic: topic.to_string(),
        }
    }
}

/// A histogram family whose histograms all have the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn fsync_histogram() -> Histogram {
    Histogram::new(FSYNC_BUCKETS_SECONDS)
}

fn group_size_histogram() -> Histogram {
    Histogram::new(GROUP_SIZE_BUCKETS)
}

/// Wraps a metric family so that its `# HELP` and `# TYPE` lines are written
/// even before it has a sample.
///
/// prometheus-client leaves out families without label sets; dashboards and
/// alert rules are checked against the exposition, and a scraper should see
/// every family the server can emit from its first scrape.
#[derive(Debug)]
pub struct Declared<M>(pub M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The engine's metric families, per [`Log`](crate::Log).
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    fsync_duration_seconds: HistogramFamily<TopicLabels>,
    group_commit_appends: HistogramFamily<TopicLabels>,
    group_commit_events: HistogramFamily<TopicLabels>,
    segment_rolls: Family<TopicLabels, Counter>,
    retention_deleted_segments: Family<TopicLabels, Counter>,
    retention_deleted_bytes: Family<TopicLabels, Counter>,
}

impl Default for EngineMetrics {
    fn default() -> EngineMetrics {
        EngineMetrics::new()
    }
}

impl EngineMetrics {
    /// Empty families.
    pub fn new() -> EngineMetrics {
        EngineMetrics {
            fsync_duration_seconds: Family::new_with_constructor(fsync_histogram),
            group_commit_appends: Family::new_with_constructor(group_size_histogram),
            group_commit_events: Family::new_with_constructor(group_size_histogram),
            segment_rolls: Family::default(),
            retention_deleted_segments: Family::default(),
            retention_deleted_bytes: Family::default(),
        }
    }

    /// Registers every family (names prefixed `stele_`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "stele_fsync_duration_seconds",
            "Duration of each fdatasync of a segment file (group commit, interval sync, checkpoint)",
            Declared(self.fsync_duration_seconds.clone()),
        );
        registry.register(
            "stele_group_commit_appends",
            "Appends acknowledged by one group commit (durability always)",
            Declared(self.group_commit_appends.clone()),
        );
        registry.register(
            "stele_group_commit_events",
            "Events written by one group commit (durability always)",
            Declared(self.group_commit_events.clone()),
        );
        registry.register(
            "stele_segment_rolls",
            "Segments started because the active one was full or old",
            Declared(self.segment_rolls.clone()),
        );
        registry.register(
            "stele_retention_deleted_segments",
            "Sealed segments deleted by retention",
            Declared(self.retention_deleted_segments.clone()),
        );
        registry.register(
            "stele_retention_deleted_bytes",
            "Bytes of sealed segments deleted by retention",
            Declared(self.retention_deleted_bytes.clone()),
        );
    }

    /// The handles a topic's partitions record into.
    pub(crate) fn topic(&self, topic: &str) -> TopicMetrics {
        let labels = TopicLabels::new(topic);
        TopicMetrics {
            fsync_duration_seconds: self.fsync_duration_seconds.get_or_create_owned(&labels),
            group_commit_appends: self.group_commit_appends.get_or_create_owned(&labels),
            group_commit_events: self.group_commit_events.get_or_create_owned(&labels),
            segment_rolls: self.segment_rolls.get_or_create_owned(&labels),
            retention_deleted_segments: self.retention_deleted_segments.get_or_create_owned(&labels),
            retention_deleted_bytes: self.retention_deleted_bytes.get_or_create_owned(&labels),
        }
    }

    /// Drops a deleted topic's label sets, so that it leaves the exposition.
    pub(crate) fn remove_topic(&self, topic: &str) {
        let labels = TopicLabels::new(topic);
        self.fsync_duration_seconds.remove(&labels);
        self.group_commit_appends.remove(&labels);
        self.group_commit_events.remove(&labels);
        self.segment_rolls.remove(&labels);
        self.retention_deleted_segments.remove(&labels);
        self.retention_deleted_bytes.remove(&labels);
    }
}

/// One topic's metric handles (cheap clones sharing the values in the families).
#[derive(Clone, Debug)]
pub(crate) struct TopicMetrics {
    fsync_duration_seconds: Histogram,
    group_commit_appends: Histogram,
    group_commit_events: Histogram,
    segment_rolls: Counter,
    retention_deleted_segments: Counter,
    retention_deleted_bytes: Counter,
}

impl TopicMetrics {
    /// One fdatasync of a segment took `duration`.
    pub(crate) fn fsync(&self, duration: std::time::Duration) {
        self.fsync_duration_seconds.observe(duration.as_secs_f64());
    }

    /// A group commit acknowledged `appends` appends holding `events` events.
    pub(crate) fn group_commit(&self, appends: usize, events: u64) {
        self.group_commit_appends.observe(appends as f64);
        self.group_commit_events.observe(events as f64);
    }

    /// A new active segment was started.
    pub(crate) fn segment_rolled(&self) {
        self.segment_rolls.inc();
    }

    /// Retention deleted `segments` segments of `bytes` bytes in all.
    pub(crate) fn retention_deleted(&self, segments: usize, bytes: u64) {
        self.retention_deleted_segments.inc_by(segments as u64);
        self.retention_deleted_bytes.inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_families_are_declared_and_removed_topics_leave() {
        // Goal: every family is in the exposition before any sample, and a
        // removed topic's samples are gone. Method: encode with the Prometheus
        // text encoder before and after recording, then after removing.
        let metrics = EngineMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let encode = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry).expect("encodes");
            text
        };
        let empty = encode(&registry);
        for name in [
            "stele_fsync_duration_seconds histogram",
            "stele_group_commit_appends histogram",
            "stele_group_commit_events histogram",
            "stele_segment_rolls_total counter",
            "stele_retention_deleted_segments_total counter",
            "stele_retention_deleted_bytes_total counter",
        ] {
            assert!(
                empty.contains(&format!("# TYPE {name}\n")),
                "{name} missing in:\n{empty}"
            );
        }
        let topic = metrics.topic("orders");
        topic.segment_rolled();
        topic.group_commit(3, 7);
        let recorded = encode(&registry);
        assert!(
            recorded.contains("stele_segment_rolls_total{topic=\"orders\"} 1\n"),
            "{recorded}"
        );
        assert!(
            recorded.contains("stele_group_commit_events_sum{topic=\"orders\"} 7"),
            "{recorded}"
        );
        metrics.remove_topic("orders");
        let removed = encode(&registry);
        assert!(!removed.contains("orders"), "{removed}");
    }
}
