//! The SQLite back end's cache of users by id, for `GET /users/{id}`.
//!
//! A SQLite database is served by one skiff process, whose one writer task
//! makes every change (for many replicas, use PostgreSQL: it has no cache).
//! So the process knows when a cached user goes stale: the writer forgets
//! the users it updated or deleted once their transaction has committed
//! (and everything after a failed commit). Reads fill the cache; creates do
//! not touch it. A read that raced a write is not cached: each fill carries
//! the generation seen before its query, and any write since then voids it.
//!
//! Bounded: past `capacity` users an arbitrary one is dropped per fill.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::db::{User, UserId};

pub struct UserCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    users: HashMap<UserId, User>,
    /// Bumped by every forget; a fill from an older generation is dropped.
    generation: u64,
}

/// What a miss hands out: the generation to quote when filling.
#[derive(Debug, Clone, Copy)]
pub struct Miss(u64);

impl UserCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                users: HashMap::new(),
                generation: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic cannot leave the map half-changed: every critical section
        // is one std collection call.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached user, or a [`Miss`] to pass to [`Self::fill`] with what
    /// the database then says.
    pub fn get(&self, id: UserId) -> Result<User, Miss> {
        let inner = self.lock();
        inner.users.get(&id).cloned().ok_or(Miss(inner.generation))
    }

    /// Caches `user`, read from the database after `miss`, unless a write
    /// has committed since.
    pub fn fill(&self, miss: Miss, user: &User) {
        let mut inner = self.lock();
        if inner.generation != miss.0 {
            return;
        }
        if inner.users.len() >= self.capacity && !inner.users.contains_key(&user.id) {
            let any = inner.users.keys().next().copied();
            if let Some(any) = any {
                inner.users.remove(&any);
            }
        }
        inner.users.insert(user.id, user.clone());
    }

    /// Drops `ids` after a committed write changed them.
    pub fn forget(&self, ids: impl IntoIterator<Item = UserId>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for id in ids {
            inner.users.remove(&id);
        }
    }

    /// Drops everything: after a commit whose outcome is unknown.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.users.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Email, Millis, UserFields};

    fn user(email: &str) -> User {
        let fields = UserFields::with_email(Email::parse(email).unwrap());
        User::new(fields, Millis::now())
    }

    #[test]
    fn a_fill_serves_later_reads_until_forgotten() {
        let cache = UserCache::new(10);
        let ada = user("ada@example.com");
        let miss = cache.get(ada.id).unwrap_err();
        cache.fill(miss, &ada);
        assert_eq!(cache.get(ada.id).unwrap(), ada);
        cache.forget([ada.id]);
        assert!(cache.get(ada.id).is_err());
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let cache = UserCache::new(10);
        let ada = user("ada@example.com");
        let miss = cache.get(ada.id).unwrap_err();
        // A write commits while the read's query runs: what it read may be
        // the old row.
        cache.forget([ada.id]);
        cache.fill(miss, &ada);
        assert!(cache.get(ada.id).is_err());
        // After a clear too.
        let miss = cache.get(ada.id).unwrap_err();
        cache.clear();
        cache.fill(miss, &ada);
        assert!(cache.get(ada.id).is_err());
    }

    #[test]
    fn it_holds_at_most_its_capacity() {
        let cache = UserCache::new(3);
        let users: Vec<User> = (0..10)
            .map(|i| user(&format!("u{i}@example.com")))
            .collect();
        for u in &users {
            let miss = cache.get(u.id).unwrap_err();
            cache.fill(miss, u);
        }
        let cached = users.iter().filter(|u| cache.get(u.id).is_ok()).count();
        assert_eq!(cached, 3);
        // The last one filled is always there.
        assert!(cache.get(users[9].id).is_ok());
    }
}
