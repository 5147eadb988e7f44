//! TEMPORARY stand-in with the final API; replaced before this lands.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::io::Storage;

pub(crate) struct CursorStore {
    partitions: u32,
    cursors: Mutex<BTreeMap<String, Vec<Option<Offset>>>>,
}

impl CursorStore {
    pub(crate) fn open(_storage: Arc<dyn Storage>, _path: PathBuf, partitions: u32) -> Result<CursorStore> {
        Ok(CursorStore {
            partitions,
            cursors: Mutex::new(BTreeMap::new()),
        })
    }
    pub(crate) fn commit(
        &self,
        name: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
        high_watermark: &dyn Fn(PartitionId) -> Offset,
    ) -> Result<()> {
        let mut cursors = self.cursors.lock().expect("lock");
        let current = cursors
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![None; self.partitions as usize]);
        let mut next = current.clone();
        for (partition, offset) in offsets {
            if partition.0 >= self.partitions {
                return Err(Error::InvalidArgument(format!(
                    "partition {partition} out of range"
                )));
            }
            let hw = high_watermark(*partition);
            if *offset > hw {
                return Err(Error::CursorAheadOfHighWatermark {
                    partition: *partition,
                    requested: *offset,
                    high_watermark: hw,
                });
            }
            if let Some(committed) = current[partition.0 as usize] {
                if *offset < committed && !allow_backwards {
                    return Err(Error::CursorBackwards {
                        partition: *partition,
                        committed,
                        requested: *offset,
                    });
                }
            }
            next[partition.0 as usize] = Some(*offset);
        }
        cursors.insert(name.to_string(), next);
        Ok(())
    }
    pub(crate) fn get(&self, name: &str) -> Result<Vec<Option<Offset>>> {
        self.cursors
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .ok_or_else(|| Error::CursorNotFound(name.to_string()))
    }
    pub(crate) fn list(&self) -> Vec<(String, Vec<Option<Offset>>)> {
        self.cursors
            .lock()
            .expect("lock")
            .iter()
            .map(|(name, offsets)| (name.clone(), offsets.clone()))
            .collect()
    }
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        self.cursors
            .lock()
            .expect("lock")
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::CursorNotFound(name.to_string()))
    }
}
