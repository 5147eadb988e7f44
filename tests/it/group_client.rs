//! Consumer groups through the typed client against a real server:
//! `GroupConsumer` members sharing a topic (every event handled, each key in
//! sequence order and one delivery at a time), retries and parking with
//! `ListParked` and `RedriveParked`, and a graceful stop after which a new
//! member with the same instance id resumes where the old one stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::support::step;
use stele::client::{
    Client, Delivery, GroupConsumer, GroupCounters, GroupOptions, GroupSettings, GroupStart, Settlement,
    ShutdownHandle, TestServer, start_test_server,
};
use stele::{AppendRequest, Event, TopicOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A member running in the background.
struct Member {
    run: JoinHandle<stele::client::ClientResult<()>>,
    shutdown: ShutdownHandle,
    counters: GroupCounters,
}

impl Member {
    /// Stops the member gracefully and returns its counters' final counts.
    async fn stop(self) -> stele::client::GroupCounts {
        self.shutdown.shutdown();
        step(self.run)
            .await
            .expect("the member's task")
            .expect("a graceful stop");
        self.counters.snapshot()
    }
}

fn member<F, Fut>(client: &Client, group: &str, instance_id: &str, window: u32, handler: F) -> Member
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Settlement> + Send + 'static,
{
    let consumer: GroupConsumer = client.group_consumer(group, instance_id).window(window).build();
    let shutdown = consumer.shutdown_handle();
    let counters = consumer.counters();
    Member {
        run: tokio::spawn(consumer.run(handler)),
        shutdown,
        counters,
    }
}

/// A topic of `partitions` partitions and a group on it that starts at the earliest event.
async fn topic_and_group(
    server: &TestServer,
    topic: &str,
    partitions: u32,
    group: &str,
    settings: GroupSettings,
) {
    server
        .client
        .create_topic(topic, &TopicOptions::default().partitions(partitions))
        .await
        .expect("create the topic");
    let created = server
        .client
        .create_group(
            group,
            topic,
            &GroupOptions {
                settings,
                start: GroupStart::Earliest,
            },
        )
        .await
        .expect("create the group");
    assert_eq!((created.name.as_str(), created.topic.as_str()), (group, topic));
    assert_eq!(created.partitions.len(), partitions as usize);
}

/// Appends `rounds` events to each key, one round after the other, so that
/// each key's sequence `i` is appended in round `i`.
async fn append_rounds(client: &Client, topic: &str, keys: &[String], rounds: u64) {
    for round in 0..rounds {
        let appends: Vec<AppendRequest> = keys
            .iter()
            .map(|key| {
                AppendRequest::new(
                    key.as_str(),
                    vec![Event::new("step", round.to_string().into_bytes())],
                )
            })
            .collect();
        for outcome in client
            .append_batch(topic, &appends)
            .await
            .expect("append a round")
        {
            outcome.expect("an append of the round");
        }
    }
}

fn key_of(delivery: &Delivery) -> String {
    String::from_utf8(delivery.event.key.clone()).expect("UTF-8 key")
}

/// What the handlers of one test saw, shared by every member.
#[derive(Default)]
struct Recorder {
    /// Keys whose handler is running now.
    running: BTreeSet<String>,
    /// Per key, the sequences handled, in the order their handlers started.
    handled: BTreeMap<String, Vec<u64>>,
    /// Deliveries that started while another of their key was running.
    overlaps: Vec<(String, u64)>,
}

#[tokio::test(flavor = "multi_thread")]
async fn two_members_handle_every_event_once_each_key_in_order_and_one_at_a_time() {
    // Goal: two GroupConsumers share a topic of 4 partitions: all 200 events
    // (20 keys x 10) are handled, each key's events in sequence order, and no
    // delivery of a key starts while another of that key is being handled
    // (across both members). Method: both members join before anything is
    // appended; the handlers record per key a running flag and the sequences,
    // and yield while "working" so that handlers overlap in time.
    let server = start_test_server().await;
    topic_and_group(&server, "orders", 4, "billing", GroupSettings::default()).await;
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let (handled, mut handled_events) = mpsc::unbounded_channel();
    let handler = {
        let recorder = Arc::clone(&recorder);
        move |delivery: Delivery| {
            let recorder = Arc::clone(&recorder);
            let handled = handled.clone();
            async move {
                let key = key_of(&delivery);
                let sequence = delivery.event.sequence.0;
                {
                    let mut recorder = recorder.lock().expect("recorder");
                    if !recorder.running.insert(key.clone()) {
                        recorder.overlaps.push((key.clone(), sequence));
                    }
                    recorder.handled.entry(key.clone()).or_default().push(sequence);
                }
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                recorder.lock().expect("recorder").running.remove(&key);
                handled.send((key, sequence)).expect("the test listens");
                Settlement::Ack
            }
        }
    };
    let first = member(&server.client, "billing", "worker-1", 4, handler.clone());
    let second = member(&server.client, "billing", "worker-2", 4, handler);
    step(async {
        // Bounded by the step's timeout; each round is a call to the server.
        while server
            .client
            .describe_group("billing")
            .await
            .expect("describe the group")
            .members
            .len()
            < 2
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let keys: Vec<String> = (0..20).map(|index| format!("key-{index:02}")).collect();
    append_rounds(&server.client, "orders", &keys, 10).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 200 {
        let event = step(handled_events.recv()).await.expect("a handled event");
        seen.insert(event);
    }
    let first = first.stop().await;
    let second = second.stop().await;
    {
        let recorder = recorder.lock().expect("recorder");
        assert_eq!(recorder.overlaps, Vec::new(), "deliveries of a key overlapped");
        assert_eq!(recorder.handled.len(), 20);
        for (key, sequences) in &recorder.handled {
            assert_eq!(sequences, &(0..10).collect::<Vec<u64>>(), "key {key}");
        }
        assert!(first.delivered > 0, "worker-1 got nothing: {first:?}");
        assert!(second.delivered > 0, "worker-2 got nothing: {second:?}");
        assert_eq!(first.acked + second.acked, 200, "{first:?} {second:?}");
        assert_eq!(first.refused + second.refused, 0);
    }
    // Both members left gracefully, after their last acks: the group is
    // settled and empty (the server may take a moment to drop a member).
    step(async {
        // Bounded by the step's timeout; each round is a call to the server.
        loop {
            let group = server.client.describe_group("billing").await.expect("describe");
            if group.lag == 0 && group.members.is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_event_comes_back_as_attempt_2_and_a_parked_one_is_listed_then_redriven() {
    // Goal: a handler's Retry brings the event back with attempt 2 (then acked);
    // a Park puts the event in ListParked with the handler's reason, and
    // RedriveParked delivers it again, at its original position, from attempt 1.
    let server = start_test_server().await;
    let settings = GroupSettings {
        backoff_initial_ms: 100,
        backoff_max_ms: 200,
        ..GroupSettings::default()
    };
    topic_and_group(&server, "jobs", 1, "runners", settings).await;
    let redriven = Arc::new(AtomicBool::new(false));
    let (seen, mut deliveries) = mpsc::unbounded_channel();
    let handler = {
        let redriven = Arc::clone(&redriven);
        move |delivery: Delivery| {
            let redriven = Arc::clone(&redriven);
            let seen = seen.clone();
            async move {
                let key = key_of(&delivery);
                let settlement = match key.as_str() {
                    "flaky" if delivery.attempt == 1 => Settlement::Retry {
                        delay: Some(Duration::from_millis(20)),
                    },
                    "poison" if !redriven.load(Ordering::SeqCst) => Settlement::Park {
                        reason: "cannot parse".into(),
                    },
                    _ => Settlement::Ack,
                };
                seen.send((key, delivery.attempt, delivery.event.offset.0))
                    .expect("the test listens");
                settlement
            }
        }
    };
    let worker = member(&server.client, "runners", "worker-1", 0, handler);
    for key in ["flaky", "poison", "fine"] {
        server
            .client
            .append(
                "jobs",
                &AppendRequest::new(key, vec![Event::new("job", b"{}".to_vec())]),
            )
            .await
            .expect("append");
    }
    let mut attempts: HashMap<String, Vec<u32>> = HashMap::new();
    let mut poison_offset = None;
    while attempts.get("flaky").map(Vec::len) != Some(2)
        || !attempts.contains_key("poison")
        || !attempts.contains_key("fine")
    {
        let (key, attempt, offset) = step(deliveries.recv()).await.expect("a delivery");
        if key == "poison" {
            poison_offset = Some(offset);
        }
        attempts.entry(key).or_default().push(attempt);
    }
    assert_eq!(attempts["flaky"], vec![1, 2]);
    assert_eq!(attempts["fine"], vec![1]);
    let parked = step(async {
        // Bounded by the step's timeout: the park is stored after the handler returns.
        loop {
            let parked = server
                .client
                .list_parked("runners", 0)
                .await
                .expect("list parked");
            if !parked.is_empty() {
                return parked;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].key, b"poison".to_vec());
    assert_eq!(parked[0].reason, "cannot parse");
    assert!(!parked[0].blocked);
    assert_eq!(Some(parked[0].offset.0), poison_offset);
    assert_eq!(parked[0].attempts, 1);
    redriven.store(true, Ordering::SeqCst);
    let redrive = server.client.redrive_parked("runners").await.expect("redrive");
    assert_eq!(redrive.redriven_count, 1);
    assert!(
        server
            .client
            .list_parked("runners", 0)
            .await
            .expect("list parked")
            .is_empty(),
        "a redriven event is listed no more"
    );
    let (key, attempt, offset) = step(deliveries.recv()).await.expect("the redriven delivery");
    assert_eq!((key.as_str(), attempt), ("poison", 1));
    assert_eq!(Some(offset), poison_offset, "redriven at its original position");
    let counts = worker.stop().await;
    assert_eq!((counts.retried, counts.parked), (1, 1), "{counts:?}");
    assert_eq!(counts.acked, 3, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_graceful_stop_a_member_with_the_same_instance_id_resumes_without_repeats() {
    // Goal: a member stopped gracefully settles what its handlers finished and
    // leaves; a new member with the same instance id handles the rest: every
    // event is handled, none twice, each key in sequence order over both.
    // Method: the first member asks for its own stop from its tenth handler.
    let server = start_test_server().await;
    topic_and_group(&server, "audit", 2, "archivers", GroupSettings::default()).await;
    let keys: Vec<String> = (0..4).map(|index| format!("key-{index}")).collect();
    append_rounds(&server.client, "audit", &keys, 6).await;
    let handled = Arc::new(Mutex::new(Vec::<(String, u64, &'static str)>::new()));
    let (done, mut dones) = mpsc::unbounded_channel();
    let recorder = |name: &'static str, stop_after: Option<(u64, Arc<Mutex<Option<ShutdownHandle>>>)>| {
        let handled = Arc::clone(&handled);
        let done = done.clone();
        let count = Arc::new(AtomicU64::new(0));
        move |delivery: Delivery| {
            let handled = Arc::clone(&handled);
            let done = done.clone();
            let count = Arc::clone(&count);
            let stop_after = stop_after.clone();
            async move {
                handled
                    .lock()
                    .expect("handled")
                    .push((key_of(&delivery), delivery.event.sequence.0, name));
                let handled_count = count.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some((limit, shutdown)) = stop_after
                    && handled_count == limit
                    && let Some(shutdown) = shutdown.lock().expect("handle").as_ref()
                {
                    shutdown.shutdown();
                }
                done.send(()).expect("the test listens");
                Settlement::Ack
            }
        }
    };
    let first_handle = Arc::new(Mutex::new(None));
    let first = member(
        &server.client,
        "archivers",
        "worker-1",
        2,
        recorder("first", Some((10, Arc::clone(&first_handle)))),
    );
    *first_handle.lock().expect("handle") = Some(first.shutdown.clone());
    for _ in 0..10 {
        step(dones.recv()).await.expect("a handled event");
    }
    let first_counts = first.stop().await;
    let by_first = handled.lock().expect("handled").len() as u64;
    assert!(by_first >= 10, "{by_first}");
    assert_eq!(
        first_counts.acked, by_first,
        "every finished handler was acked: {first_counts:?}"
    );
    let second = member(
        &server.client,
        "archivers",
        "worker-1",
        2,
        recorder("second", None),
    );
    while handled.lock().expect("handled").len() < 24 {
        step(dones.recv()).await.expect("a handled event");
    }
    let second_counts = second.stop().await;
    assert_eq!(second_counts.reconnects, 0);
    let handled = handled.lock().expect("handled");
    assert_eq!(handled.len(), 24, "an event was handled twice: {handled:?}");
    let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (key, sequence, _) in handled.iter() {
        per_key.entry(key.as_str()).or_default().push(*sequence);
    }
    for (key, sequences) in &per_key {
        assert_eq!(sequences, &(0..6).collect::<Vec<u64>>(), "key {key}");
    }
    assert!(
        handled.iter().any(|(_, _, name)| *name == "second"),
        "the second member resumed nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_of_an_unknown_group_stops_at_once_with_group_not_found() {
    // Goal: an unknown group is fatal for a GroupConsumer: run returns
    // NOT_FOUND (GROUP_NOT_FOUND) instead of trying to join again, and the raw
    // stream reports the same.
    let server = start_test_server().await;
    let consumer = server.client.group_consumer("nobody", "worker-1").build();
    let error = step(consumer.run(|_delivery: Delivery| async { Settlement::Ack }))
        .await
        .expect_err("an unknown group");
    assert_eq!(error.code(), Some(stele::client::GrpcCode::NotFound), "{error}");
    assert_eq!(error.kind(), Some(stele::ErrorKind::GroupNotFound), "{error}");
    let raw = match server.client.consume("nobody", "worker-1", 0).await {
        Err(error) => error,
        Ok(mut stream) => step(stream.next())
            .await
            .expect("the stream ends with a status")
            .expect_err("an unknown group"),
    };
    assert_eq!(raw.kind(), Some(stele::ErrorKind::GroupNotFound), "{raw}");
}
