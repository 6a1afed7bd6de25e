//! Matching inbound notifications to passive operations.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::key::NotificationKey;

/// Live passive operations by notification key.
///
/// Lookups are O(1). A key leaves the table when its operation ends — on the first matching
/// completion (SPEC §3 rule 4), on cancellation, on failure — so nothing accumulates per
/// finished operation. Iteration order is deterministic for a deterministic history (a fixed
/// hasher), which the simulator's reproducible traces rely on; keys are random, so a fixed
/// hasher gives a peer no leverage.
#[derive(Debug)]
pub struct KeyTable<T> {
    live: HashMap<NotificationKey, T, BuildHasherDefault<DefaultHasher>>,
    unmatched: u64,
}

impl<T> Default for KeyTable<T> {
    fn default() -> Self {
        KeyTable {
            live: HashMap::default(),
            unmatched: 0,
        }
    }
}

impl<T> KeyTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a live operation; `false` (and nothing changed) if the key is already live.
    pub fn insert(&mut self, key: NotificationKey, value: T) -> bool {
        match self.live.entry(key) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(value);
                true
            }
        }
    }

    /// The live operation with this key.
    pub fn get(&self, key: &NotificationKey) -> Option<&T> {
        self.live.get(key)
    }

    /// The live operation with this key, mutably.
    pub fn get_mut(&mut self, key: &NotificationKey) -> Option<&mut T> {
        self.live.get_mut(key)
    }

    /// Ends the operation with this key and hands it back. A key that is not live (never was,
    /// or already ended) is counted as unmatched and returns `None`.
    pub fn take(&mut self, key: &NotificationKey) -> Option<T> {
        let found = self.live.remove(key);
        if found.is_none() {
            self.unmatched += 1;
        }
        found
    }

    /// Removes a key without counting a miss (the operation ended on this side).
    pub fn remove(&mut self, key: &NotificationKey) -> Option<T> {
        self.live.remove(key)
    }

    /// Live operations.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no operation is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Notifications that matched no live key.
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }

    /// The live entries.
    pub fn iter(&self) -> impl Iterator<Item = (&NotificationKey, &T)> {
        self.live.iter()
    }

    /// The live entries, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&NotificationKey, &mut T)> {
        self.live.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_take_wins_and_nothing_remains() {
        let mut table = KeyTable::new();
        let key = NotificationKey::from_random_bytes([1; 16]);
        assert!(table.insert(key, 7));
        assert!(!table.insert(key, 8));
        assert_eq!(table.take(&key), Some(7));
        assert_eq!(table.take(&key), None);
        assert_eq!((table.len(), table.unmatched()), (0, 1));
    }
}
