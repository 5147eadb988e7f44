//! Consumer groups over real gRPC: several members of one group, each a raw
//! `Consume` stream, against the guarantees of the proto's "Consumer groups":
//! one unsettled delivery per key, in sequence order, across joins, leaves and
//! crashes of members; exhausted events parked (or their key blocked) while
//! other keys flow; expired leases delivered elsewhere with the late settle
//! refused; a server restart or `kill -9` delivers again only what was not
//! confirmed settled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stele::client::{TestServer, start_test_server};
use stele::wire::proto::stele_client::SteleClient;
use stele::wire::proto::{self, consume_request, consume_response};
use stele::{AppendRequest, Event, TopicOptions};
use tokio::sync::mpsc;
use tonic::transport::Channel;

#[path = "common/serve.rs"]
mod serve;
use serve::spawn_serve;

const STEP: Duration = Duration::from_secs(30);

async fn step<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .expect("step finished in time")
}

async fn connect(url: &str) -> SteleClient<Channel> {
    SteleClient::new(
        Channel::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
}

async fn topic(client: &stele::client::Client, name: &str, partitions: u32) {
    let options = TopicOptions {
        partitions,
        ..TopicOptions::default()
    };
    client.create_topic(name, &options).await.expect("create topic");
}

/// Appends `count` events per key, payload `<key>:<sequence>`.
async fn append(client: &stele::client::Client, topic: &str, keys: &[String], count: u64) {
    for sequence in 0..count {
        for key in keys {
            let event = Event::new("test", format!("{key}:{sequence}").into_bytes());
            client
                .append(topic, &AppendRequest::new(key.clone().into_bytes(), vec![event]))
                .await
                .expect("append");
        }
    }
}

async fn create_group(
    grpc: &mut SteleClient<Channel>,
    name: &str,
    topic: &str,
    settings: proto::GroupSettings,
) -> proto::Group {
    grpc.create_group(proto::CreateGroupRequest {
        name: name.into(),
        topic: topic.into(),
        settings: Some(settings),
        start: proto::GroupStart::Earliest as i32,
    })
    .await
    .expect("create group")
    .into_inner()
    .group
    .expect("group")
}

async fn describe(grpc: &mut SteleClient<Channel>, name: &str) -> proto::Group {
    grpc.describe_group(proto::DescribeGroupRequest { name: name.into() })
        .await
        .expect("describe group")
        .into_inner()
        .group
        .expect("group")
}

/// One member: a raw Consume stream.
struct Member {
    requests: mpsc::Sender<proto::ConsumeRequest>,
    responses: tonic::Streaming<proto::ConsumeResponse>,
    epoch: u64,
    /// Ids confirmed settled by the server.
    confirmed: HashSet<String>,
    /// Refusals received.
    refused: Vec<proto::SettleRefused>,
}

impl Member {
    async fn join(url: &str, group: &str, instance: &str, window: u32) -> Member {
        let mut grpc = connect(url).await;
        let (requests, receiver) = mpsc::channel(1024);
        requests
            .send(request(consume_request::Kind::Join(proto::Join {
                group: group.into(),
                instance_id: instance.into(),
                window,
            })))
            .await
            .expect("send join");
        let mut responses = grpc
            .consume(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .expect("consume")
            .into_inner();
        let first = step(responses.message())
            .await
            .expect("joined")
            .expect("a message");
        let Some(consume_response::Kind::Joined(joined)) = first.kind else {
            panic!("the first message is joined: {first:?}");
        };
        Member {
            requests,
            responses,
            epoch: joined.member_epoch,
            confirmed: HashSet::new(),
            refused: Vec::new(),
        }
    }

    /// The next delivery; confirmations and refusals met on the way are kept.
    async fn delivery(&mut self) -> proto::Delivery {
        step(async {
            loop {
                match self.message().await {
                    consume_response::Kind::Delivery(delivery) => return delivery,
                    consume_response::Kind::Joined(joined) => panic!("joined twice: {joined:?}"),
                    _ => {}
                }
            }
        })
        .await
    }

    /// The next message but heartbeats, within a step.
    async fn next(&mut self) -> consume_response::Kind {
        step(self.message()).await
    }

    /// The next message but heartbeats (which come every few seconds, so a
    /// caller bounds the whole wait, not one message).
    async fn message(&mut self) -> consume_response::Kind {
        loop {
            let message = self
                .responses
                .message()
                .await
                .expect("the stream goes on")
                .expect("a message");
            match message.kind.expect("a kind") {
                consume_response::Kind::Heartbeat(_) => {}
                consume_response::Kind::Settled(settled) => {
                    self.confirmed.extend(settled.delivery_ids.iter().cloned());
                    return consume_response::Kind::Settled(settled);
                }
                consume_response::Kind::Refused(refused) => {
                    self.refused.push(refused.clone());
                    return consume_response::Kind::Refused(refused);
                }
                other => return other,
            }
        }
    }

    /// Waits until every id of `ids` is confirmed; deliveries that come
    /// meanwhile are left unsettled (held until this member leaves).
    async fn confirmed(&mut self, ids: &[String]) {
        step(async {
            while !ids.iter().all(|id| self.confirmed.contains(id)) {
                self.message().await;
            }
        })
        .await
    }

    /// Waits for the refusal of `id`.
    async fn refusal(&mut self, id: &str) -> proto::SettleRefused {
        step(async {
            loop {
                if let Some(refused) = self.refused.iter().find(|refused| refused.delivery_id == id) {
                    return refused.clone();
                }
                if let consume_response::Kind::Delivery(delivery) = self.message().await {
                    panic!("unexpected delivery while waiting for a refusal: {delivery:?}");
                }
            }
        })
        .await
    }

    async fn send(&self, kind: consume_request::Kind) {
        self.requests.send(request(kind)).await.expect("send");
    }

    async fn ack(&self, id: &str) {
        self.send(consume_request::Kind::Ack(proto::Ack {
            delivery_ids: vec![id.to_string()],
        }))
        .await;
    }

    async fn retry(&self, id: &str, delay_ms: u64) {
        self.send(consume_request::Kind::Retry(proto::Retry {
            delivery_id: id.to_string(),
            delay_ms,
        }))
        .await;
    }
}

fn request(kind: consume_request::Kind) -> proto::ConsumeRequest {
    proto::ConsumeRequest { kind: Some(kind) }
}

fn payload(delivery: &proto::Delivery) -> String {
    String::from_utf8(delivery.event.as_ref().expect("event").payload.clone()).expect("utf-8")
}

fn key_and_sequence(delivery: &proto::Delivery) -> (String, u64) {
    let text = payload(delivery);
    let (key, sequence) = text.split_once(':').expect("key:sequence");
    (key.to_string(), sequence.parse().expect("sequence"))
}

fn keys(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("key-{index}")).collect()
}

/// What the members of one test saw, shared between their tasks.
#[derive(Default)]
struct Ledger {
    /// Keys held by a member now (delivered, not settled), with the holder.
    held: HashMap<String, String>,
    /// Per key, the sequences acked, in ack order.
    acked: BTreeMap<String, Vec<u64>>,
    violations: Vec<String>,
}

/// A member that acks everything it gets until told to stop; `crash` drops
/// its stream with its deliveries unsettled instead of leaving cleanly.
async fn run_member(
    url: String,
    group: &'static str,
    instance: String,
    ledger: Arc<Mutex<Ledger>>,
    acks_max: usize,
    crash: bool,
) -> usize {
    let mut member = Member::join(&url, group, &instance, 4).await;
    let mut acks = 0;
    let mut ids = Vec::new();
    while acks < acks_max {
        let delivery = member.delivery().await;
        let (key, sequence) = key_and_sequence(&delivery);
        {
            let mut ledger = ledger.lock().expect("ledger");
            if let Some(holder) = ledger.held.insert(key.clone(), instance.clone()) {
                let violation = format!("{key} delivered to {instance} while {holder} holds it");
                ledger.violations.push(violation);
            }
        }
        if crash && acks + 1 == acks_max {
            // Crash holding this delivery (and maybe others), once the acks
            // sent are durable (an unconfirmed ack may be lost with the
            // stream: its event comes again, at least once). The ledger
            // forgets what this member holds before its stream goes, so that
            // it never sees a redelivery before the release.
            member.confirmed(&ids).await;
            let mut ledger = ledger.lock().expect("ledger");
            ledger.held.retain(|_, holder| *holder != instance);
            return acks;
        }
        {
            let mut ledger = ledger.lock().expect("ledger");
            ledger.held.remove(&key);
            ledger.acked.entry(key).or_default().push(sequence);
        }
        member.ack(&delivery.delivery_id).await;
        ids.push(delivery.delivery_id);
        acks += 1;
    }
    // Leave once the acks are durable; deliveries sent meanwhile are taken
    // back when the stream ends.
    member.confirmed(&ids).await;
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_keys_in_order_while_joining_leaving_and_crashing() {
    let server = start_test_server().await;
    topic(&server.client, "orders", 4).await;
    let keys = keys(20);
    append(&server.client, "orders", &keys, 20).await;
    let mut grpc = connect(&server.url()).await;
    create_group(&mut grpc, "billing", "orders", proto::GroupSettings::default()).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let url = server.url();
    // A works alone, B joins and leaves after 60 acks, C crashes after 30, D
    // joins late and finishes: keys move at every change.
    let a = tokio::spawn(run_member(
        url.clone(),
        "billing",
        "a".into(),
        Arc::clone(&ledger),
        120,
        false,
    ));
    let b = tokio::spawn(run_member(
        url.clone(),
        "billing",
        "b".into(),
        Arc::clone(&ledger),
        60,
        false,
    ));
    let c = tokio::spawn(run_member(
        url.clone(),
        "billing",
        "c".into(),
        Arc::clone(&ledger),
        30,
        true,
    ));
    let (b_acks, c_acks) = (step(b).await.expect("b"), step(c).await.expect("c"));
    let d_acks_max = 400 - 120 - b_acks - (c_acks);
    let d = tokio::spawn(run_member(
        url.clone(),
        "billing",
        "d".into(),
        Arc::clone(&ledger),
        d_acks_max,
        false,
    ));
    let (a_acks, d_acks) = (step(a).await.expect("a"), step(d).await.expect("d"));
    assert_eq!(a_acks + b_acks + c_acks + d_acks, 400);
    {
        let ledger = ledger.lock().expect("ledger");
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        for key in &keys {
            assert_eq!(
                ledger.acked.get(key).cloned().unwrap_or_default(),
                (0..20).collect::<Vec<u64>>(),
                "{key}'s events are acked once each, in sequence order"
            );
        }
    }
    // Everything settled: the floor reaches the high watermark, nothing lags.
    let group = describe(&mut grpc, "billing").await;
    assert_eq!(group.lag, 0, "{group:?}");
    assert!(group.redelivered_count >= 1, "C's held deliveries went to others");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_key_is_parked_after_its_deliveries_while_others_flow_then_redriven() {
    let server = start_test_server().await;
    topic(&server.client, "payments", 2).await;
    let mut keys = keys(5);
    keys.push("poison".into());
    append(&server.client, "payments", &keys, 3).await;
    let mut grpc = connect(&server.url()).await;
    let settings = proto::GroupSettings {
        max_deliveries: 3,
        backoff_initial_ms: 10,
        backoff_max_ms: 20,
        ..proto::GroupSettings::default()
    };
    let group = create_group(&mut grpc, "ledger", "payments", settings).await;
    assert_eq!(
        group.settings.expect("settings").dead_letter_topic,
        "payments.parked"
    );
    let mut member = Member::join(&server.url(), "ledger", "only", 8).await;
    let mut poison_attempts = Vec::new();
    let mut acked = 0;
    let mut poison_after_park = None;
    while acked < 15 || poison_after_park.is_none() {
        let delivery = member.delivery().await;
        let (key, sequence) = key_and_sequence(&delivery);
        if key == "poison" && sequence == 0 {
            poison_attempts.push(delivery.attempt);
            member.retry(&delivery.delivery_id, 0).await;
        } else if key == "poison" {
            assert_eq!(
                poison_attempts.len(),
                3,
                "the key's next event waits for the park"
            );
            poison_after_park.get_or_insert((sequence, delivery.attempt));
            member.ack(&delivery.delivery_id).await;
        } else {
            member.ack(&delivery.delivery_id).await;
            acked += 1;
        }
    }
    assert_eq!(poison_attempts, vec![1, 2, 3], "three deliveries, then parked");
    assert!(
        matches!(poison_after_park, Some((1 | 2, 1))),
        "the key goes on after the park: {poison_after_park:?}"
    );
    let parked = grpc
        .list_parked(proto::ListParkedRequest {
            name: "ledger".into(),
            max_events: 0,
        })
        .await
        .expect("list parked")
        .into_inner()
        .events;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].key, b"poison");
    assert_eq!(
        (parked[0].sequence, parked[0].attempts, parked[0].blocked),
        (0, 3, false)
    );
    assert!(parked[0].reason.contains("exhausted"), "{}", parked[0].reason);
    // Redrive: the parked event comes again, attempt 1, from the dead letters.
    let redriven = grpc
        .redrive_parked(proto::RedriveParkedRequest {
            name: "ledger".into(),
        })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(redriven.redriven_count, 1);
    let delivery = loop {
        let delivery = member.delivery().await;
        // The last poison event may come first (again, if the redrive's reset
        // abandoned it in flight).
        member.ack(&delivery.delivery_id).await;
        if key_and_sequence(&delivery) == ("poison".into(), 0) {
            break delivery;
        }
    };
    assert_eq!(delivery.attempt, 1);
    assert!(delivery.delivery_id.starts_with("1."), "{}", delivery.delivery_id);
    let event = delivery.event.as_ref().expect("event");
    assert!(event.headers.keys().all(|name| !name.starts_with("stele-dl-")));
    assert_eq!(event.sequence, 0, "the original position, not the dead letter's");
    member
        .confirmed(std::slice::from_ref(&delivery.delivery_id))
        .await;
    let parked = grpc
        .list_parked(proto::ListParkedRequest {
            name: "ledger".into(),
            max_events: 0,
        })
        .await
        .expect("list parked")
        .into_inner()
        .events;
    assert!(parked.is_empty(), "{parked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_key_stops_while_others_flow_until_redriven() {
    let server = start_test_server().await;
    topic(&server.client, "accounts", 1).await;
    let keys = vec!["stuck".to_string(), "free".to_string()];
    append(&server.client, "accounts", &keys, 3).await;
    let mut grpc = connect(&server.url()).await;
    let settings = proto::GroupSettings {
        max_deliveries: 1,
        on_exhausted: proto::ExhaustedPolicy::Block as i32,
        ..proto::GroupSettings::default()
    };
    create_group(&mut grpc, "audit", "accounts", settings).await;
    let mut member = Member::join(&server.url(), "audit", "only", 8).await;
    let mut free = Vec::new();
    let mut stuck = Vec::new();
    while free.len() < 3 {
        let delivery = member.delivery().await;
        let (key, sequence) = key_and_sequence(&delivery);
        if key == "stuck" {
            stuck.push(sequence);
            member.retry(&delivery.delivery_id, 0).await;
        } else {
            free.push(sequence);
            member.ack(&delivery.delivery_id).await;
        }
    }
    assert_eq!(free, vec![0, 1, 2]);
    assert_eq!(stuck, vec![0], "one delivery, then the key is blocked");
    let group = describe(&mut grpc, "audit").await;
    assert_eq!(group.blocked_keys_count, 1);
    assert_eq!(
        group.partitions[0].floor, 0,
        "the floor stays at the blocked event"
    );
    let parked = grpc
        .list_parked(proto::ListParkedRequest {
            name: "audit".into(),
            max_events: 0,
        })
        .await
        .expect("list parked")
        .into_inner()
        .events;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].blocked);
    assert_eq!((parked[0].key.as_slice(), parked[0].sequence), (&b"stuck"[..], 0));
    let redriven = grpc
        .redrive_parked(proto::RedriveParkedRequest { name: "audit".into() })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(redriven.unblocked_keys_count, 1);
    let mut sequences = Vec::new();
    while sequences.len() < 3 {
        let delivery = member.delivery().await;
        let (key, sequence) = key_and_sequence(&delivery);
        assert_eq!(key, "stuck");
        assert_eq!(delivery.attempt, 1, "attempts start again");
        sequences.push(sequence);
        member.ack(&delivery.delivery_id).await;
    }
    assert_eq!(sequences, vec![0, 1, 2], "in order, after the unblock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_goes_to_another_member_and_the_late_settle_is_refused() {
    let server = start_test_server().await;
    topic(&server.client, "jobs", 1).await;
    append(&server.client, "jobs", &["only".to_string()], 1).await;
    let mut grpc = connect(&server.url()).await;
    let settings = proto::GroupSettings {
        lease_ms: 300,
        ..proto::GroupSettings::default()
    };
    create_group(&mut grpc, "workers", "jobs", settings).await;
    let mut slow = Member::join(&server.url(), "workers", "slow", 1).await;
    let first = slow.delivery().await;
    assert_eq!(first.attempt, 1);
    assert_eq!(first.member_epoch, slow.epoch);
    let mut fast = Member::join(&server.url(), "workers", "fast", 1).await;
    // The slow member lets the lease run out; the event goes to the other.
    let second = fast.delivery().await;
    assert_eq!(payload(&second), payload(&first));
    assert_eq!(second.attempt, 2);
    assert_ne!(second.delivery_id, first.delivery_id);
    slow.ack(&first.delivery_id).await;
    let refused = slow.refusal(&first.delivery_id).await;
    assert_eq!(refused.code, proto::ErrorCode::DeliveryStale as i32);
    // The refusal changed nothing: the holder settles.
    fast.ack(&second.delivery_id).await;
    fast.confirmed(std::slice::from_ref(&second.delivery_id)).await;
    let group = describe(&mut grpc, "workers").await;
    assert_eq!((group.partitions[0].floor, group.lag), (1, 0));
    assert_eq!(group.redelivered_count, 1);
    let instances: HashSet<String> = group
        .members
        .iter()
        .map(|member| member.instance_id.clone())
        .collect();
    assert_eq!(instances, HashSet::from(["slow".to_string(), "fast".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_with_the_same_instance_replaces_the_first() {
    let server = start_test_server().await;
    topic(&server.client, "jobs", 1).await;
    let mut grpc = connect(&server.url()).await;
    create_group(&mut grpc, "workers", "jobs", proto::GroupSettings::default()).await;
    let mut old = Member::join(&server.url(), "workers", "same", 1).await;
    let new = Member::join(&server.url(), "workers", "same", 1).await;
    assert!(new.epoch > old.epoch, "member epochs grow with every join");
    let status = loop {
        match step(old.responses.message()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the old stream ends with a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let group = describe(&mut grpc, "workers").await;
    assert_eq!(group.members.len(), 1);
    assert_eq!(group.members[0].member_epoch, new.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_rpcs_validate_and_answer_the_documented_codes() {
    let server = start_test_server().await;
    topic(&server.client, "orders", 2).await;
    let mut grpc = connect(&server.url()).await;
    let missing = grpc
        .create_group(proto::CreateGroupRequest {
            name: "g".into(),
            topic: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown topic");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    for (settings, what) in [
        (
            proto::GroupSettings {
                lease_ms: 50,
                ..Default::default()
            },
            "lease",
        ),
        (
            proto::GroupSettings {
                max_deliveries: 5000,
                ..Default::default()
            },
            "deliveries",
        ),
        (
            proto::GroupSettings {
                dead_letter_topic: "orders".into(),
                ..Default::default()
            },
            "dead-letter topic",
        ),
        (
            proto::GroupSettings {
                on_exhausted: 9,
                ..Default::default()
            },
            "policy",
        ),
    ] {
        let refused = grpc
            .create_group(proto::CreateGroupRequest {
                name: "g".into(),
                topic: "orders".into(),
                settings: Some(settings),
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{what}: {refused:?}"
        );
    }
    let bad_name = grpc
        .create_group(proto::CreateGroupRequest {
            name: "no spaces".into(),
            topic: "orders".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);
    let group = create_group(&mut grpc, "g", "orders", proto::GroupSettings::default()).await;
    let settings = group.settings.expect("settings");
    assert_eq!((settings.lease_ms, settings.max_deliveries), (30_000, 10));
    let exists = grpc
        .create_group(proto::CreateGroupRequest {
            name: "g".into(),
            topic: "orders".into(),
            ..Default::default()
        })
        .await
        .expect_err("exists");
    assert_eq!(exists.code(), tonic::Code::AlreadyExists);
    let listed = grpc
        .list_groups(proto::ListGroupsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 1);
    let seek_past = grpc
        .seek_group(proto::SeekGroupRequest {
            name: "g".into(),
            position: Some(proto::seek_group_request::Position::Offsets(
                proto::PartitionOffsets {
                    offsets: HashMap::from([(0, 99)]),
                },
            )),
        })
        .await
        .expect_err("past the high watermark");
    assert_eq!(seek_past.code(), tonic::Code::OutOfRange);
    let mut member = Member::join(&server.url(), "g", "m", 1).await;
    grpc.delete_group(proto::DeleteGroupRequest { name: "g".into() })
        .await
        .expect("delete");
    let ended = loop {
        match step(member.responses.message()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the member's stream ends with a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::NotFound, "{ended:?}");
    let gone = grpc
        .describe_group(proto::DescribeGroupRequest { name: "g".into() })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // A Consume stream must start with a join.
    let (requests, receiver) = mpsc::channel(4);
    requests
        .send(request(consume_request::Kind::Ack(proto::Ack::default())))
        .await
        .expect("send");
    let refused = grpc
        .consume(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect_err("no join");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_replays_from_a_timestamp_or_offset_and_abandons_deliveries_in_flight() {
    let server = start_test_server().await;
    topic(&server.client, "audit", 1).await;
    append(&server.client, "audit", &["k".to_string()], 5).await;
    let mut grpc = connect(&server.url()).await;
    create_group(&mut grpc, "replay", "audit", proto::GroupSettings::default()).await;
    let mut member = Member::join(&server.url(), "replay", "m", 1).await;
    let mut ids = Vec::new();
    for expected in 0..5 {
        let delivery = member.delivery().await;
        assert_eq!(key_and_sequence(&delivery).1, expected);
        member.ack(&delivery.delivery_id).await;
        ids.push(delivery.delivery_id);
    }
    member.confirmed(&ids).await;
    let group = grpc
        .seek_group(proto::SeekGroupRequest {
            name: "replay".into(),
            position: Some(proto::seek_group_request::Position::Offsets(
                proto::PartitionOffsets {
                    offsets: HashMap::from([(0, 3)]),
                },
            )),
        })
        .await
        .expect("seek")
        .into_inner()
        .group
        .expect("group");
    assert_eq!(group.partitions[0].floor, 3);
    let delivery = member.delivery().await;
    assert_eq!(key_and_sequence(&delivery).1, 3, "replay from offset 3");
    // Seek again while it is in flight: its settle is refused.
    grpc.seek_group(proto::SeekGroupRequest {
        name: "replay".into(),
        position: Some(proto::seek_group_request::Position::TimestampMs(0)),
    })
    .await
    .expect("seek to time 0");
    member.ack(&delivery.delivery_id).await;
    let mut sequences = Vec::new();
    let mut refused = false;
    while sequences.len() < 5 {
        match member.next().await {
            consume_response::Kind::Delivery(delivery) => {
                sequences.push(key_and_sequence(&delivery).1);
                member.ack(&delivery.delivery_id).await;
            }
            consume_response::Kind::Refused(stale) => {
                assert_eq!(stale.delivery_id, delivery.delivery_id);
                refused = true;
            }
            _ => {}
        }
    }
    assert!(refused, "the settle of the abandoned delivery is refused");
    assert_eq!(sequences, vec![0, 1, 2, 3, 4], "everything again, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_again_only_what_was_not_settled() {
    let mut server: TestServer = start_test_server().await;
    topic(&server.client, "orders", 2).await;
    let keys = keys(10);
    append(&server.client, "orders", &keys, 4).await;
    let mut grpc = connect(&server.url()).await;
    let settings = proto::GroupSettings {
        backoff_initial_ms: 100,
        ..Default::default()
    };
    create_group(&mut grpc, "billing", "orders", settings).await;
    let mut member = Member::join(&server.url(), "billing", "m", 64).await;
    // Ack the first two events of every key; retry the third of key-0; keep
    // the third of the others in flight through the restart.
    let mut settled = HashSet::new();
    let mut confirmations = Vec::new();
    let mut held = HashSet::new();
    while settled.len() < 20 || held.len() < 10 {
        let delivery = member.delivery().await;
        let (key, sequence) = key_and_sequence(&delivery);
        if sequence < 2 {
            member.ack(&delivery.delivery_id).await;
            settled.insert((key, sequence));
            confirmations.push(delivery.delivery_id);
        } else if key == "key-0" && delivery.attempt == 1 {
            member.retry(&delivery.delivery_id, 60_000).await;
            confirmations.push(delivery.delivery_id);
            held.insert((key, sequence));
        } else {
            held.insert((key, sequence));
        }
    }
    member.confirmed(&confirmations).await;
    drop(member);
    server.restart().await;
    let mut grpc = connect(&server.url()).await;
    let group = describe(&mut grpc, "billing").await;
    let settled_above: u64 = group
        .partitions
        .iter()
        .map(|p| p.floor + p.settled_above_floor)
        .sum();
    assert_eq!(settled_above, 20, "the settles survived: {group:?}");
    let mut member = Member::join(&server.url(), "billing", "m", 64).await;
    let mut again = HashSet::new();
    // The nine held third events come again (attempt 1: in flight at the
    // restart, not counted); key-0's waits for its retry time (a minute).
    while again.len() < 9 {
        let delivery = member.delivery().await;
        let (key, sequence) = key_and_sequence(&delivery);
        assert!(
            !settled.contains(&(key.clone(), sequence)),
            "settled {key}:{sequence} came again"
        );
        assert_eq!(sequence, 2, "only the unsettled third events: {key}:{sequence}");
        assert_ne!(key, "key-0", "the retried event waits for its time");
        again.insert((key, sequence));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_delivers_again_only_what_was_not_confirmed() {
    let dir = std::env::temp_dir().join(format!("stele-groups-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let serve = spawn_serve(&dir);
    let client = stele::client::Client::connect(serve.url.clone())
        .await
        .expect("connect");
    topic(&client, "orders", 3).await;
    let keys = keys(30);
    append(&client, "orders", &keys, 10).await;
    let mut grpc = connect(&serve.url).await;
    create_group(&mut grpc, "billing", "orders", proto::GroupSettings::default()).await;
    let mut member = Member::join(&serve.url, "billing", "m", 32).await;
    // Settle 200 events, wait for the confirmation of the first 150, and kill
    // the server with the rest of the acks (and 30 deliveries) in flight.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut delivered_before = HashSet::new();
    while acked.len() < 200 {
        let delivery = member.delivery().await;
        member.ack(&delivery.delivery_id).await;
        delivered_before.insert(payload(&delivery));
        acked.push((payload(&delivery), delivery.delivery_id));
    }
    let confirmed_ids: Vec<String> = acked[..150].iter().map(|(_, id)| id.clone()).collect();
    member.confirmed(&confirmed_ids).await;
    let confirmed: HashSet<String> = acked
        .iter()
        .filter(|(_, id)| member.confirmed.contains(id))
        .map(|(payload, _)| payload.clone())
        .collect();
    let mut serve = serve;
    serve.child.kill().expect("SIGKILL");
    serve.child.wait().expect("wait");
    drop(member);
    let serve = spawn_serve(&dir);
    let mut member = Member::join(&serve.url, "billing", "m", 32).await;
    let mut grpc = connect(&serve.url).await;
    let mut seen = HashSet::new();
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // Until everything is settled: what was acked but not confirmed may come
    // again or not (its write may have made it), nothing confirmed may. Each
    // ack's confirmation wakes the loop to look at the lag again.
    while describe(&mut grpc, "billing").await.lag > 0 {
        let consume_response::Kind::Delivery(delivery) = member.next().await else {
            continue;
        };
        let text = payload(&delivery);
        assert!(
            !confirmed.contains(&text),
            "{text} was confirmed settled, yet came again"
        );
        let (key, sequence) = key_and_sequence(&delivery);
        per_key.entry(key).or_default().push(sequence);
        seen.insert(text);
        member.ack(&delivery.delivery_id).await;
    }
    // Everything never acked came (acked but unconfirmed ones may have been
    // written in time, or not).
    let acked_before: HashSet<String> = acked.iter().map(|(payload, _)| payload.clone()).collect();
    for key in &keys {
        for sequence in 0..10 {
            let text = format!("{key}:{sequence}");
            if !acked_before.contains(&text) {
                assert!(
                    seen.contains(&text),
                    "{text} was never acked, yet not delivered again"
                );
            }
        }
    }
    assert!(seen.len() >= 100, "{}", seen.len());
    assert!(delivered_before.len() >= 200);
    for (key, sequences) in per_key {
        assert!(
            sequences.windows(2).all(|pair| pair[0] < pair[1]),
            "{key}: {sequences:?}"
        );
    }
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
