//! Partition leases on a real 3-node cluster: one holder at a time, renewal by
//! compare-and-set, takeover only after expiry, and a holder that was away
//! finds its lease invalid and its renewal refused.

use std::time::Duration;

use stele_nats::lease::{CLOCK_SKEW_MAX, LeaseBucket};

mod support;
use support::cluster;

const LEASE: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_holds_a_partition_until_its_lease_expires() {
    let (_cluster, connection, _serial) = cluster().await;
    let leases = LeaseBucket::open(&connection).await.expect("open the bucket");
    let key = "b3JkZXJz.0";

    let mut first = leases
        .acquire(key, "server-a", LEASE)
        .await
        .expect("acquire")
        .expect("nobody held it");
    assert_eq!(first.holder().epoch, 1);
    assert!(first.is_valid());
    assert!(
        leases
            .acquire(key, "server-b", LEASE)
            .await
            .expect("acquire")
            .is_none(),
        "a held lease is not taken"
    );
    assert!(
        leases.renew(&mut first, LEASE).await.expect("renew"),
        "the holder renews"
    );
    let (holder, _) = leases.holder(key).await.expect("read").expect("held");
    assert_eq!(holder.owner, "server-a");

    // server-a goes quiet (a pause, a partition): its lease runs out by its
    // own monotonic clock first, then by everyone's wall clock plus the margin.
    let expired_at = first.holder().until_ms + CLOCK_SKEW_MAX.as_millis() as u64;
    let wait_ms = expired_at.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
    );
    // Waiting for a lease to expire is the behaviour under test, not a stand-in
    // for synchronisation: the deadline is the lease's own.
    tokio::time::sleep(Duration::from_millis(wait_ms + 1)).await;
    assert!(
        !first.is_valid(),
        "the quiet holder must not believe it still owns"
    );
    let second = leases
        .acquire(key, "server-b", LEASE)
        .await
        .expect("acquire")
        .expect("an expired lease is taken");
    assert_eq!(second.holder().epoch, 2);
    assert_eq!(second.holder().owner, "server-b");

    // server-a comes back: its renewal is refused, and it stays invalid.
    assert!(
        !leases.renew(&mut first, LEASE).await.expect("renew"),
        "a lost lease is not renewed"
    );
    assert!(!first.is_valid());
    let (holder, _) = leases.holder(key).await.expect("read").expect("held");
    assert_eq!((holder.owner.as_str(), holder.epoch), ("server-b", 2));

    // Releasing hands it over at once.
    leases.release(second).await.expect("release");
    let third = leases
        .acquire(key, "server-a", LEASE)
        .await
        .expect("acquire")
        .expect("a released lease is taken at once");
    assert_eq!(third.holder().epoch, 3);
    assert!(
        leases
            .acquire(key, "server-c", Duration::from_millis(500))
            .await
            .is_err(),
        "too short a lease"
    );
}
