//! TEMPORARY stand-in with the final API; replaced before this lands.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::event::{Epoch, ProducerId};
use crate::io::Storage;

pub(crate) struct ProducerRegistry {
    by_name: RwLock<HashMap<String, (ProducerId, Epoch)>>,
    epochs: RwLock<HashMap<ProducerId, Epoch>>,
}

impl ProducerRegistry {
    pub(crate) fn open(_storage: Arc<dyn Storage>, _path: PathBuf) -> Result<ProducerRegistry> {
        Ok(ProducerRegistry {
            by_name: RwLock::new(HashMap::new()),
            epochs: RwLock::new(HashMap::new()),
        })
    }
    pub(crate) fn open_producer(&self, name: &str) -> Result<(ProducerId, Epoch)> {
        let mut by_name = self.by_name.write().expect("lock");
        let next_id = ProducerId(by_name.len() as u64 + 1);
        let entry = by_name
            .entry(name.to_string())
            .and_modify(|(_, epoch)| epoch.0 += 1)
            .or_insert((next_id, Epoch(0)));
        self.epochs.write().expect("lock").insert(entry.0, entry.1);
        Ok(*entry)
    }
    pub(crate) fn current_epoch(&self, producer: ProducerId) -> Option<Epoch> {
        self.epochs.read().expect("lock").get(&producer).copied()
    }
    pub(crate) fn list(&self) -> Vec<(String, ProducerId, Epoch)> {
        let mut list: Vec<_> = self
            .by_name
            .read()
            .expect("lock")
            .iter()
            .map(|(name, (id, epoch))| (name.clone(), *id, *epoch))
            .collect();
        list.sort();
        list
    }
}
