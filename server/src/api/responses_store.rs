//! Stored responses, for `previous_response_id` and `GET /v1/responses/{id}`: in memory,
//! bounded by bytes (`--responses-store-memory`), the oldest dropped first.
//!
//! Each entry keeps its own input items and output, not the whole conversation: a follow-up
//! walks the `previous_response_id` links, so a long chat costs its length once, not its
//! length squared. A chain whose earlier link was dropped is refused by name.

use super::responses_types::ResponseObject;
use crate::metrics::Metrics;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// One stored response.
#[derive(Debug, Clone)]
pub struct Stored {
    pub response: ResponseObject,
    /// Its input items as sent, each with an id.
    pub input: Vec<Value>,
    /// Its output items as input items (the same JSON).
    pub output: Vec<Value>,
    /// Bytes it is counted as (its JSON).
    size: usize,
}

impl Stored {
    pub fn new(response: ResponseObject, input: Vec<Value>) -> Self {
        let output: Vec<Value> = response
            .output
            .iter()
            .filter_map(|item| serde_json::to_value(item).ok())
            .collect();
        let json_len = |v: &Value| v.to_string().len();
        // The response, its input, and its output again as items.
        let size = serde_json::to_string(&response).map_or(0, |s| s.len())
            + input.iter().chain(&output).map(json_len).sum::<usize>();
        Self {
            response,
            input,
            output,
            size,
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Stored>,
    /// Ids, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

/// The store; `capacity` 0 keeps nothing.
pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<Inner>,
    /// Where its size is reported (`lowbit:responses_*`).
    metrics: Option<Metrics>,
}

/// Why a conversation could not be rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainError {
    /// The id itself is not stored.
    NotFound(String),
    /// An earlier response of the chain was dropped to make room.
    Broken(String),
}

impl ResponseStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
            metrics: None,
        }
    }

    /// The same, reporting its size and evictions to `metrics`.
    pub fn with_metrics(capacity: usize, metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::new(capacity)
        }
    }

    fn report(&self, inner: &Inner, evicted: u64) {
        if let Some(m) = &self.metrics {
            m.responses_stored.set(inner.entries.len() as i64);
            m.responses_store_bytes.set(inner.bytes as i64);
            m.responses_evicted_total.inc_by(evicted);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves whole entries: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a response, dropping the oldest until it fits; one larger than the whole store
    /// is not kept (`false`).
    pub fn put(&self, entry: Stored) -> bool {
        if entry.size > self.capacity {
            return false;
        }
        let mut inner = self.lock();
        let mut evicted = 0;
        while inner.bytes + entry.size > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&old) {
                inner.bytes -= e.size;
                evicted += 1;
            }
        }
        let id = entry.response.id.clone();
        inner.bytes += entry.size;
        inner.order.push_back(id.clone());
        if let Some(old) = inner.entries.insert(id.clone(), entry) {
            // (Ids are new: a replaced entry would be a bug, but not a leak of its bytes.)
            inner.bytes -= old.size;
            inner.order.retain(|k| *k != id);
            inner.order.push_back(id);
        }
        self.report(&inner, evicted);
        true
    }

    pub fn get(&self, id: &str) -> Option<Stored> {
        self.lock().entries.get(id).cloned()
    }

    /// Removes a response; `false` if it was not stored.
    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.entries.remove(id) {
            Some(e) => {
                inner.bytes -= e.size;
                inner.order.retain(|k| k != id);
                self.report(&inner, 0);
                true
            }
            None => false,
        }
    }

    /// The items of the conversation that ends with response `id`, oldest first: each
    /// response's input, then its output.
    pub fn conversation(&self, id: &str) -> Result<Vec<Value>, ChainError> {
        let inner = self.lock();
        let mut chain = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(at) = next {
            let Some(entry) = inner.entries.get(&at) else {
                return Err(if at == id {
                    ChainError::NotFound(at)
                } else {
                    ChainError::Broken(at)
                });
            };
            // A cycle cannot be stored (ids are new), but never loop on one.
            if chain.len() > inner.entries.len() {
                return Err(ChainError::Broken(at));
            }
            chain.push(entry);
            next = entry.response.previous_response_id.clone();
        }
        Ok(chain
            .iter()
            .rev()
            .flat_map(|e| e.input.iter().chain(&e.output).cloned())
            .collect())
    }

    /// An item of a stored response, input or output, by its id (`item_reference`). A scan:
    /// references are rare, and the store is bounded.
    pub fn find_item(&self, id: &str) -> Option<Value> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .flat_map(|e| e.input.iter().chain(&e.output))
            .filter(|item| item.get("type").and_then(Value::as_str) != Some("item_reference"))
            .find(|item| item.get("id").and_then(Value::as_str) == Some(id))
            .cloned()
    }

    /// Bytes held (the metric `lowbit:responses_store_bytes` reports it).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::Echo;
    use serde_json::json;

    fn response(id: &str, previous: Option<&str>) -> Stored {
        let mut echo = Echo::for_tests();
        echo.previous_response_id = previous.map(str::to_string);
        let r = echo.object(id, 0, "completed", Vec::new(), None);
        Stored::new(
            r,
            vec![json!({"type": "message", "role": "user", "content": id})],
        )
    }

    #[test]
    fn a_chain_is_walked_oldest_first_and_the_oldest_dropped_for_room() {
        let first = response("resp_1", None).size;
        let later = response("resp_2", Some("resp_1")).size;
        // Room for three later entries, not for all four.
        let metrics = Metrics::new();
        let store = ResponseStore::with_metrics(3 * later, metrics.clone());
        store.put(response("resp_1", None));
        store.put(response("resp_2", Some("resp_1")));
        store.put(response("resp_3", Some("resp_2")));
        let texts: Vec<Value> = store
            .conversation("resp_3")
            .unwrap()
            .into_iter()
            .map(|v| v["content"].clone())
            .collect();
        assert_eq!(texts, [json!("resp_1"), json!("resp_2"), json!("resp_3")]);
        assert_eq!(store.bytes(), first + 2 * later);
        store.put(response("resp_4", Some("resp_3")));
        assert!(store.get("resp_1").is_none());
        assert_eq!(store.bytes(), 3 * later);
        assert_eq!(metrics.responses_evicted_total.get(), 1);
        assert_eq!(metrics.responses_stored.get(), 3);
        assert_eq!(metrics.responses_store_bytes.get(), (3 * later) as i64);
        assert_eq!(
            store.conversation("resp_4"),
            Err(ChainError::Broken("resp_1".into()))
        );
        assert_eq!(
            store.conversation("resp_1"),
            Err(ChainError::NotFound("resp_1".into()))
        );
        assert!(store.delete("resp_3"));
        assert!(!store.delete("resp_3"));
        assert_eq!(store.bytes(), 2 * later);
        assert_eq!(metrics.responses_stored.get(), 2);
        // Nothing is kept by an empty store, nor an entry larger than the whole store.
        let none = ResponseStore::new(0);
        none.put(response("resp_1", None));
        assert!(none.get("resp_1").is_none());
        assert_eq!(none.bytes(), 0);
    }
}
