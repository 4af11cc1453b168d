//! A small cache of token checks, keyed by the token's SHA-256 (the token
//! itself is never kept), each entry valid until its own deadline, and
//! bounded: when full, expired entries go first, then the one closest to
//! expiring.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// The key of a token in a [`TokenCache`].
pub type TokenDigest = [u8; 32];

/// The SHA-256 of a token.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Results of token checks, for a while each.
#[derive(Debug)]
pub struct TokenCache<V> {
    capacity: usize,
    entries: Mutex<HashMap<TokenDigest, (Instant, V)>>,
}

impl<V: Clone> TokenCache<V> {
    /// An empty cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value kept for `key`, if it has not expired by `now`.
    pub fn get(&self, key: &TokenDigest, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((until, value)) if *until > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `key` until `until`.
    pub fn insert(&self, key: TokenDigest, value: V, until: Instant, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.capacity
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| *k)
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(key, (until, value));
    }

    /// How many entries it holds (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_expire_and_the_size_stays_bounded() {
        let cache = TokenCache::new(2);
        let now = Instant::now();
        let secs = Duration::from_secs;
        cache.insert(digest("a"), 1, now + secs(10), now);
        cache.insert(digest("b"), 2, now + secs(20), now);
        assert_eq!(cache.get(&digest("a"), now), Some(1));
        assert_eq!(cache.get(&digest("a"), now + secs(10)), None, "expired");
        cache.insert(digest("a"), 1, now + secs(10), now);
        // Full: the entry closest to expiring makes room.
        cache.insert(digest("c"), 3, now + secs(30), now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&digest("a"), now), None);
        assert_eq!(cache.get(&digest("b"), now), Some(2));
        assert_eq!(cache.get(&digest("c"), now), Some(3));
        // Expired entries go before live ones.
        cache.insert(digest("d"), 4, now + secs(40), now + secs(25));
        assert_eq!(cache.get(&digest("c"), now + secs(25)), Some(3));
        assert_eq!(cache.get(&digest("d"), now + secs(25)), Some(4));
        assert_eq!(cache.len(), 2);
    }
}
