//! A route table's services, in chunks shared between tables: a table that replaces one
//! service (a weight step) copies one chunk and the list of chunks, and shares the rest
//! with the table before it, so a step costs about the same with 1,000 services as with one.

use std::collections::HashMap;
use std::sync::Arc;

use super::table::Service;

/// Services per chunk.
const CHUNK: usize = 32;

/// The services of a table, by index, with an index by name.
#[derive(Clone, Default)]
pub(crate) struct ServiceList {
    chunks: Vec<Arc<[Arc<Service>]>>,
    by_name: Arc<HashMap<String, usize>>,
}

impl ServiceList {
    pub(crate) fn new(services: Vec<Arc<Service>>) -> ServiceList {
        let by_name = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        ServiceList {
            chunks: services.chunks(CHUNK).map(Arc::from).collect(),
            by_name: Arc::new(by_name),
        }
    }

    pub(crate) fn get(&self, i: usize) -> Option<&Arc<Service>> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The index of the service with this name.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The same list with service `i` replaced by `service` (of the same name).
    pub(crate) fn with(&self, i: usize, service: Arc<Service>) -> ServiceList {
        let mut out = self.clone();
        if let Some(chunk) = out.chunks.get_mut(i / CHUNK) {
            let mut copy: Vec<Arc<Service>> = chunk.to_vec();
            if let Some(slot) = copy.get_mut(i % CHUNK) {
                *slot = service;
            }
            *chunk = Arc::from(copy);
        }
        out
    }
}
