//! TEMPORARY in-memory stand-in with the final API; replaced by the persistent
//! fingerprint store before this lands.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::event::Offset;
use crate::io::Storage;

pub(crate) struct DedupOpenReport {
    pub(crate) runs_dropped: usize,
}

pub(crate) struct DedupIndex {
    window_ms: u64,
    entries: HashMap<u64, Vec<(Offset, i64)>>,
}

impl DedupIndex {
    pub(crate) fn open(
        _storage: Arc<dyn Storage>,
        _dir: PathBuf,
        window_ms: u64,
    ) -> Result<(DedupIndex, DedupOpenReport)> {
        Ok((
            DedupIndex {
                window_ms,
                entries: HashMap::new(),
            },
            DedupOpenReport { runs_dropped: 0 },
        ))
    }
    pub(crate) fn persisted_end(&self) -> Offset {
        Offset(0)
    }
    pub(crate) fn insert(&mut self, fingerprint: u64, offset: Offset, timestamp_ms: i64) -> Result<()> {
        self.entries
            .entry(fingerprint)
            .or_default()
            .push((offset, timestamp_ms));
        Ok(())
    }
    pub(crate) fn candidates(&self, fingerprint: u64, now_ms: i64, out: &mut Vec<Offset>) -> Result<()> {
        if let Some(list) = self.entries.get(&fingerprint) {
            for (offset, timestamp) in list.iter().rev() {
                if now_ms.saturating_sub(*timestamp) < self.window_ms as i64 {
                    out.push(*offset);
                }
            }
        }
        Ok(())
    }
    pub(crate) fn truncate_from(&mut self, from: Offset) {
        for list in self.entries.values_mut() {
            list.retain(|(offset, _)| *offset < from);
        }
    }
    pub(crate) fn maintain(&mut self, _now_ms: i64) -> Result<()> {
        Ok(())
    }
    pub(crate) fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    pub(crate) fn memory_bytes(&self) -> usize {
        self.entries.len() * 48
    }
    pub(crate) fn runs_count(&self) -> usize {
        0
    }
}
