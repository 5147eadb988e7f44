//! Smoke test of `stele bench`'s library: every scenario with tiny counts
//! against an in-process server, with both durabilities; the JSON fields and
//! the correctness checks (cas stale rejection, dedup exact repeats, group
//! settles in per-key order with lag 0).

use std::time::Duration;

use serde_json::Value;
use stele::Durability;
use stele::loadgen::{AnyScenario, BenchConfig, GroupScenario, Scenario, median_run, run_scenario};

fn assert_common(line: &Value, scenario: impl Into<AnyScenario>, durability: &str, events: u64) {
    let scenario = scenario.into();
    assert_eq!(line["scenario"], scenario.name(), "{line}");
    assert_eq!(line["durability"], durability, "{line}");
    assert_eq!(line["events"].as_u64(), Some(events), "{line}");
    assert!(
        line["seconds"].as_f64().is_some_and(|seconds| seconds > 0.0),
        "{line}"
    );
    assert!(
        line["events_per_s"].as_u64().is_some_and(|rate| rate > 0),
        "{line}"
    );
    assert!(line["mb_per_s"].as_f64().is_some(), "{line}");
    for percentile in ["p50", "p99", "p999"] {
        assert!(line["latency_us"][percentile].as_u64().is_some(), "{line}");
    }
    let p50 = line["latency_us"]["p50"].as_u64().unwrap_or_default();
    let p999 = line["latency_us"]["p999"].as_u64().unwrap_or_default();
    assert!(p50 <= p999, "{line}");
    assert_eq!(line["errors"].as_u64(), Some(0), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_checks() {
    let server = stele::client::start_test_server().await;
    let url = server.url();
    let config = BenchConfig {
        count: Some(300),
        keys: 20,
        concurrency: 2,
        in_flight: 16,
        batch: 10,
        fsync_probe_dir: server.data_dir().to_path_buf(),
        fsync_probe_duration: Duration::from_millis(50),
        slow_consumer: Some(Duration::from_micros(100)),
        read_batch_events: 50,
        server_pid: Some(std::process::id()),
        ..BenchConfig::default()
    };
    for durability in [Durability::Always, Durability::None] {
        let name = stele::loadgen::durability_name(durability);
        for scenario in Scenario::ALL {
            let line = run_scenario(
                &stele::loadgen::Target::new(url.clone()),
                scenario,
                durability,
                &config,
                0,
            )
            .await
            .expect("the scenario runs");
            let events = match scenario {
                // 300 unique events, every 10th sent twice.
                Scenario::Dedup => 330,
                _ => 300,
            };
            assert_common(&line, scenario, name, events);
            assert!(stele::loadgen::checks_passed(&line), "{line}");
            assert!(line["server_memory_kb"]["vm_hwm"].as_u64().is_some(), "{line}");
            match scenario {
                Scenario::Sequential => {
                    assert!(line["fsync_p50_us"].as_u64().is_some(), "{line}");
                    assert!(line["p50_minus_fsync_p50_us"].as_i64().is_some(), "{line}");
                    assert_eq!(line["rpc_probe"]["calls"], line["events"], "{line}");
                    assert!(
                        line["rpc_probe"]["p50_us"].as_u64().is_some_and(|p50| p50 > 0),
                        "{line}"
                    );
                    assert!(line["p50_minus_rpc_p50_us"].as_i64().is_some(), "{line}");
                    // The transport floor ran its round trips: a microsecond
                    // at least each, a p99 no lower than its p50.
                    let floor = &line["transport_floor"];
                    assert_eq!(floor["calls"], line["events"], "{line}");
                    for measure in ["tcp_echo", "grpc"] {
                        let p50 = floor[format!("{measure}_p50_us")].as_u64().unwrap_or_default();
                        let p99 = floor[format!("{measure}_p99_us")].as_u64().unwrap_or_default();
                        assert!(p50 > 0 && p99 >= p50, "{measure}: {line}");
                    }
                    assert!(line["p50_minus_grpc_floor_p50_us"].as_i64().is_some(), "{line}");
                }
                Scenario::Cas => {
                    assert_eq!(line["conflicts"].as_u64(), Some(0), "{line}");
                    assert_eq!(line["sequences_ok"], true, "{line}");
                    assert_eq!(line["stale_check"]["rejected"], true, "{line}");
                    assert_eq!(line["stale_check"]["code"], "FailedPrecondition", "{line}");
                    // 300 events over 20 keys: 15 each, the last sequence is 14.
                    assert_eq!(
                        line["stale_check"]["actual_sequence"].as_u64(),
                        Some(14),
                        "{line}"
                    );
                }
                Scenario::Dedup => {
                    assert_eq!(line["unique"].as_u64(), Some(300), "{line}");
                    assert_eq!(line["duplicates_expected"].as_u64(), Some(30), "{line}");
                    assert_eq!(line["duplicates_reported"].as_u64(), Some(30), "{line}");
                    assert_eq!(line["wrong_duplicate_flags"].as_u64(), Some(0), "{line}");
                    assert_eq!(line["repeat_positions_match"], true, "{line}");
                    assert_eq!(line["high_watermark_sum"].as_u64(), Some(300), "{line}");
                    assert_eq!(line["dedup_ok"], true, "{line}");
                }
                Scenario::Read => {
                    assert_eq!(line["caught_up"], true, "{line}");
                    assert_eq!(line["read_ok"], true, "{line}");
                    assert!(
                        line["messages"].as_u64().is_some_and(|messages| messages >= 6),
                        "{line}"
                    );
                    assert!(
                        line["server_vmrss_kb_max_during_read"].as_u64().is_some(),
                        "{line}"
                    );
                }
                Scenario::Pipelined | Scenario::Batched => {}
            }
        }
    }
    // The median of three runs is the middle rate.
    let runs: Vec<Value> = [5u64, 1, 3]
        .iter()
        .map(|rate| serde_json::json!({"scenario": "x", "events_per_s": rate}))
        .collect();
    let median = median_run(&runs).expect("a median");
    assert_eq!(median["events_per_s"].as_u64(), Some(3));
    assert_eq!(median["run"], "median");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_scenarios_settle_everything_in_key_order() {
    // Goal: the consumer-group scenarios run end to end and report their
    // checks. Method: `group` and `group-baseline` with 300 events over 20
    // keys and 4 partitions, 4 members (or subscriptions) with small windows,
    // both durabilities, against an in-process server.
    let server = stele::client::start_test_server().await;
    let config = BenchConfig {
        count: Some(300),
        keys: 20,
        concurrency: 4,
        in_flight: 8,
        batch: 10,
        read_batch_events: 50,
        server_pid: Some(std::process::id()),
        ..BenchConfig::default()
    };
    let target = stele::loadgen::Target::new(server.url());
    for durability in [Durability::Always, Durability::None] {
        let name = stele::loadgen::durability_name(durability);
        for scenario in GroupScenario::ALL {
            let line = run_scenario(&target, scenario, durability, &config, 0)
                .await
                .expect("the scenario runs");
            assert_common(&line, scenario, name, 300);
            assert!(stele::loadgen::checks_passed(&line), "{line}");
            assert_eq!(line["redelivered"].as_u64(), Some(0), "{line}");
            assert_eq!(line["order_violations"].as_u64(), Some(0), "{line}");
            assert!(line["fill_events_per_s"].as_u64().is_some(), "{line}");
            assert!(line["server_cpu_seconds"].as_f64().is_some(), "{line}");
            match scenario {
                GroupScenario::Group => {
                    assert_eq!(line["group_ok"], true, "{line}");
                    assert_eq!(line["members"].as_u64(), Some(4), "{line}");
                    assert_eq!(line["window"], serde_json::json!([8, 8, 8, 8]), "{line}");
                    assert_eq!(line["deliveries"].as_u64(), Some(300), "{line}");
                    assert_eq!(line["refused"].as_u64(), Some(0), "{line}");
                    assert_eq!(line["stalled"], false, "{line}");
                    assert_eq!(line["described"]["lag"].as_u64(), Some(0), "{line}");
                    assert_eq!(line["described"]["in_flight"].as_u64(), Some(0), "{line}");
                    assert!(
                        line["ack_messages"]
                            .as_u64()
                            .is_some_and(|messages| messages >= 1),
                        "{line}"
                    );
                    assert!(
                        line["unacked_max"].as_u64().is_some_and(|unacked| unacked <= 20),
                        "at most one unsettled delivery per key: {line}"
                    );
                }
                GroupScenario::Baseline => {
                    assert_eq!(line["read_ok"], true, "{line}");
                    assert_eq!(line["caught_up"], true, "{line}");
                    assert_eq!(line["subscribers"].as_u64(), Some(4), "{line}");
                }
            }
        }
    }
    // Both kinds of scenario are selectable by name.
    assert_eq!(
        AnyScenario::from_name("group-baseline"),
        Some(AnyScenario::Group(GroupScenario::Baseline))
    );
    assert_eq!(
        AnyScenario::from_name("read"),
        Some(AnyScenario::Log(Scenario::Read))
    );
}

/// `partitions` on a small scale: every partition of every topic gets its
/// share, and the server's footprint is reported before, idle and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_scenario_appends_to_every_partition_and_reports_the_footprint() {
    let server = stele::client::start_test_server().await;
    let config = BenchConfig {
        count: Some(120),
        topics: 3,
        topic_partitions: 4,
        concurrency: 2,
        in_flight: 8,
        server_pid: Some(std::process::id()),
        ..BenchConfig::default()
    };
    let scenario = AnyScenario::from_name("partitions").expect("a named scenario");
    assert!(!AnyScenario::ALL.contains(&scenario), "`all` leaves it out");
    let line = run_scenario(
        &stele::loadgen::Target::new(server.url()),
        scenario,
        Durability::Always,
        &config,
        0,
    )
    .await
    .expect("the scenario runs");
    assert_eq!(line["scenario"], "partitions", "{line}");
    assert_eq!(line["partitions"], 12, "{line}");
    assert_eq!(line["high_watermark_sum"], 120, "{line}");
    assert_eq!(line["appends_ok"], true, "{line}");
    assert_eq!(line["errors"], 0, "{line}");
    for stage in ["before", "idle", "after_appends"] {
        assert!(
            line["server"][stage]["threads"]
                .as_u64()
                .is_some_and(|threads| threads > 0),
            "{line}"
        );
        assert!(
            line["server"][stage]["vm_rss_kb"]
                .as_u64()
                .is_some_and(|rss| rss > 0),
            "{line}"
        );
    }
    assert!(line["idle_kb_per_partition"].is_number(), "{line}");
    assert!(line["server_cpu_us_per_event"].is_number(), "{line}");
}
