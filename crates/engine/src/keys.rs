//! Per-key state of one partition: each key's last sequence and where its last
//! event is.
//!
//! Keys are held by a 64-bit hash (xxh3) to keep memory near 25 bytes per key.
//! A hash match is confirmed against the key stored in the log, so two keys with
//! the same hash never share a sequence: the second one lives in a small side
//! table keyed by its full bytes.
//!
//! Invariant: `last_offset` of every entry is a published record of that key, and
//! its `sequence` field equals `last_sequence`.
//! This module does not read the log itself; callers pass a check.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::Result;
use crate::event::{Offset, Sequence};

/// The hash that identifies a key inside a partition.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A key's state: its last sequence and the offset of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// The sequence of the key's last event.
    pub last_sequence: Sequence,
    /// The offset of the key's last event.
    pub last_offset: Offset,
}

/// Passes a precomputed 64-bit hash through.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | *byte as u64;
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type ByHash = HashMap<u64, KeyState, BuildHasherDefault<IdentityHasher>>;

/// Bytes of key copies kept to confirm hash holders without reading the log.
const CONFIRMED_KEYS_SIZE_BYTES_MAX: usize = 1 << 20;
/// What one cached key costs beyond its bytes: the table slot and the
/// allocation's header and rounding.
const CONFIRMED_KEY_OVERHEAD_BYTES: usize = 64;

/// The published key states of one partition.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    by_hash: ByHash,
    /// Keys whose hash is taken by another key.
    collided: HashMap<Box<[u8]>, KeyState>,
    /// The key bytes of recently confirmed hash holders: a bounded cache that
    /// spares the log read of a confirmation. Cleared whole when full.
    /// Invariant: an entry names the key that holds its hash in `by_hash`.
    confirmed: HashMap<u64, Box<[u8]>, BuildHasherDefault<IdentityHasher>>,
    confirmed_size: usize,
}

impl KeyIndex {
    /// The state of `key`. `is_key_at(offset)` reads the log and says whether the
    /// record at `offset` belongs to `key`.
    pub(crate) fn get(
        &mut self,
        key: &[u8],
        hash: u64,
        is_key_at: impl FnOnce(Offset) -> Result<bool>,
    ) -> Result<Option<KeyState>> {
        if !self.collided.is_empty()
            && let Some(state) = self.collided.get(key)
        {
            return Ok(Some(*state));
        }
        let Some(state) = self.by_hash.get(&hash).copied() else {
            return Ok(None);
        };
        if let Some(confirmed) = self.confirmed.get(&hash) {
            return Ok((**confirmed == *key).then_some(state));
        }
        if is_key_at(state.last_offset)? {
            self.remember(hash, key);
            Ok(Some(state))
        } else {
            Ok(None)
        }
    }

    /// Remembers that `key` holds `hash`.
    fn remember(&mut self, hash: u64, key: &[u8]) {
        let cost = key.len() + CONFIRMED_KEY_OVERHEAD_BYTES;
        if self.confirmed_size + cost > CONFIRMED_KEYS_SIZE_BYTES_MAX {
            self.confirmed.clear();
            self.confirmed_size = 0;
        }
        if self.confirmed.insert(hash, key.into()).is_none() {
            self.confirmed_size += cost;
        }
    }

    /// Sets the state of `key`. `owns_hash` says whether `key` is the key whose
    /// state is held under `hash` (or the hash is free), as found by `get`.
    pub(crate) fn set(&mut self, key: &[u8], hash: u64, state: KeyState, owns_hash: bool) {
        if owns_hash {
            self.by_hash.insert(hash, state);
            if !key.is_empty() {
                self.remember(hash, key);
            }
        } else {
            self.collided.insert(key.into(), state);
        }
    }

    /// Whether `hash` is held by some key.
    pub(crate) fn contains_hash(&self, hash: u64) -> bool {
        self.by_hash.contains_key(&hash)
    }

    /// Whether `key` is in the side table of colliding keys.
    pub(crate) fn is_collided(&self, key: &[u8]) -> bool {
        !self.collided.is_empty() && self.collided.contains_key(key)
    }

    /// Applies a record found while replaying the log. The record names its key's
    /// previous offset, which tells whether it continues the chain held under its
    /// hash without reading the log.
    pub(crate) fn replay(
        &mut self,
        key: &[u8],
        hash: u64,
        sequence: Sequence,
        offset: Offset,
        previous: u64,
    ) {
        let state = KeyState {
            last_sequence: sequence,
            last_offset: offset,
        };
        if !self.collided.is_empty()
            && let Some(existing) = self.collided.get_mut(key)
        {
            *existing = state;
            return;
        }
        // One hash probe per record: the entry either is vacant or holds a chain.
        let existing = match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(state);
                return;
            }
            std::collections::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
        };
        match existing {
            existing if existing.last_offset.0 == previous => *existing = state,
            _ if previous == crate::format::record::NO_PREVIOUS || sequence == Sequence(0) => {
                // A new key whose hash is taken.
                self.collided.insert(key.into(), state);
            }
            existing => {
                self.confirmed.remove(&hash);
                // The chain does not continue: the hash holder was replaced by a
                // checkpoint older than this record, or the key is new; trust the
                // record, which is the newest fact.
                *existing = state;
            }
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }

    /// Iterates (hash, state) of keys held by hash.
    pub(crate) fn iter_by_hash(&self) -> impl Iterator<Item = (u64, KeyState)> + '_ {
        self.by_hash.iter().map(|(hash, state)| (*hash, *state))
    }

    /// Iterates (key, state) of colliding keys.
    pub(crate) fn iter_collided(&self) -> impl Iterator<Item = (&[u8], KeyState)> + '_ {
        self.collided.iter().map(|(key, state)| (&key[..], *state))
    }

    /// Pre-sizes the table.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.by_hash.reserve(additional);
    }

    /// Bytes of RAM held by the per-key tables (excluding allocator overhead
    /// and the bounded confirmation cache, about 1 MiB per partition).
    pub(crate) fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, KeyState)>() + 1;
        self.by_hash.capacity() * entry
            + self
                .collided
                .keys()
                .map(|key| key.len() + std::mem::size_of::<(Box<[u8]>, KeyState)>() + 1)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_keys_keep_separate_sequences() {
        // Goal: two keys forced onto one hash never share a sequence.
        // Method: store key "a" under hash 7, then look up key "b" under hash 7
        // with a check that says the log holds "a" at that offset.
        let mut index = KeyIndex::default();
        let a = KeyState {
            last_sequence: Sequence(4),
            last_offset: Offset(10),
        };
        index.set(b"a", 7, a, true);
        let b_lookup = index
            .get(b"b", 7, |offset| Ok(offset != Offset(10)))
            .expect("no I/O");
        assert_eq!(b_lookup, None);
        let b = KeyState {
            last_sequence: Sequence(0),
            last_offset: Offset(11),
        };
        index.set(b"b", 7, b, false);
        assert_eq!(index.get(b"b", 7, |_| Ok(false)).expect("no I/O"), Some(b));
        assert_eq!(
            index
                .get(b"a", 7, |offset| Ok(offset == Offset(10)))
                .expect("no I/O"),
            Some(a)
        );
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn replay_separates_a_new_colliding_key() {
        let mut index = KeyIndex::default();
        index.replay(
            b"a",
            7,
            Sequence(0),
            Offset(0),
            crate::format::record::NO_PREVIOUS,
        );
        index.replay(b"a", 7, Sequence(1), Offset(1), 0);
        index.replay(
            b"b",
            7,
            Sequence(0),
            Offset(2),
            crate::format::record::NO_PREVIOUS,
        );
        index.replay(b"b", 7, Sequence(1), Offset(3), 2);
        index.replay(b"a", 7, Sequence(2), Offset(4), 1);
        assert!(index.is_collided(b"b"));
        assert_eq!(
            index
                .get(b"a", 7, |offset| Ok(offset == Offset(4)))
                .expect("no I/O"),
            Some(KeyState {
                last_sequence: Sequence(2),
                last_offset: Offset(4)
            })
        );
        assert_eq!(
            index.get(b"b", 7, |_| Ok(false)).expect("no I/O"),
            Some(KeyState {
                last_sequence: Sequence(1),
                last_offset: Offset(3)
            })
        );
    }
}
