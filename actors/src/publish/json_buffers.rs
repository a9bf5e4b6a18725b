//! The buffers events are serialized into, handed back by the sinks to be filled again.
//!
//! Every event is serialized on the worker thread that read its frame ([`super::queue`]) and
//! its buffer used to be freed on the sink's thread once the event was durable. With glibc's
//! allocator, freeing a chunk that another thread's arena handed out takes that arena's lock
//! and merges the chunk into its free lists, and the worker's next allocation of that size
//! then takes the slow path through those lists: together about 5% of the node's CPU when
//! each read carries one location. A sink now gives its buffers back here once it is done
//! with them, and the workers take them again, so a buffer is allocated once and reused.
//!
//! Bounded: the shared pool keeps at most [`POOL_BUFFERS`] buffers (four commits' worth at
//! 20,000 events per second and the default 25 ms between commits), each thread at most
//! [`LOCAL_BUFFERS`], and a buffer that grew past [`MAX_KEPT_CAPACITY`] is freed rather than
//! kept. Buffers beyond those bounds are simply freed, as before.

use std::cell::RefCell;
use std::sync::Mutex;

use iothub::event::{Event, JSON_CAPACITY};

/// Most buffers the shared pool keeps: 2,048 × 512 bytes, 1 MiB.
pub const POOL_BUFFERS: usize = 2048;
/// Most buffers one thread takes from the pool at once and keeps.
pub const LOCAL_BUFFERS: usize = 64;
/// Largest buffer worth keeping: a record that large is rare.
pub const MAX_KEPT_CAPACITY: usize = 4096;

/// Buffers given back, shared by all threads.
struct Pool {
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// A buffer from `local`, which is refilled from the pool when empty, or a new one.
    fn take(&self, local: &mut Vec<Vec<u8>>) -> Vec<u8> {
        if local.is_empty() {
            let mut buffers = self.lock();
            let from = buffers.len().saturating_sub(LOCAL_BUFFERS);
            local.extend(buffers.drain(from..));
        }
        local
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(JSON_CAPACITY))
    }

    /// Keeps the buffers, emptied, up to the bounds; frees the others.
    fn give_back(&self, given: impl IntoIterator<Item = Vec<u8>>) {
        let mut buffers = self.lock();
        for mut buffer in given {
            if buffers.len() >= POOL_BUFFERS {
                break;
            }
            if (JSON_CAPACITY..=MAX_KEPT_CAPACITY).contains(&buffer.capacity()) {
                buffer.clear();
                buffers.push(buffer);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // Poisoned only if a thread panicked while holding it; the buffers are still
        // plain vectors, emptied before they were pushed.
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static POOL: Pool = Pool::new();

thread_local! {
    /// Buffers this thread took from the pool and has not filled yet: one lock of the pool
    /// per [`LOCAL_BUFFERS`] events rather than one per event.
    static LOCAL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// The event's record as JSON, in a buffer given back if there is one, else a new one.
pub fn json_of(event: &Event) -> Vec<u8> {
    let mut json = LOCAL.with_borrow_mut(|local| POOL.take(local));
    event.write_json(&mut json);
    json
}

/// Gives buffers back once their events are durable; those past the bounds are freed.
pub fn give_back(buffers: impl IntoIterator<Item = Vec<u8>>) {
    POOL.give_back(buffers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_buffer() -> Vec<u8> {
        let mut buffer = Vec::with_capacity(JSON_CAPACITY);
        buffer.extend_from_slice(b"{\"imei\":\"864717003283581\"}");
        buffer
    }

    fn pooled(pool: &Pool) -> usize {
        pool.lock().len()
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_empty() {
        let pool = Pool::new();
        let buffer = record_buffer();
        let address = buffer.as_ptr();
        pool.give_back([buffer]);
        let taken = pool.take(&mut Vec::new());
        assert_eq!(taken.as_ptr(), address);
        assert!(taken.is_empty());
    }

    #[test]
    fn an_empty_pool_gives_a_new_buffer_with_room_for_a_record() {
        let taken = Pool::new().take(&mut Vec::new());
        assert!(taken.capacity() >= JSON_CAPACITY);
    }

    #[test]
    fn a_thread_takes_at_most_its_local_share_at_once() {
        let pool = Pool::new();
        pool.give_back((0..LOCAL_BUFFERS + 10).map(|_| record_buffer()));
        let mut local = Vec::new();
        pool.take(&mut local);
        assert_eq!(local.len(), LOCAL_BUFFERS - 1);
        assert_eq!(pooled(&pool), 10);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_bound() {
        let pool = Pool::new();
        pool.give_back((0..POOL_BUFFERS + 10).map(|_| record_buffer()));
        assert_eq!(pooled(&pool), POOL_BUFFERS);
    }

    #[test]
    fn a_buffer_too_small_is_not_kept() {
        let pool = Pool::new();
        pool.give_back([Vec::with_capacity(16)]);
        assert_eq!(pooled(&pool), 0);
    }

    #[test]
    fn a_buffer_grown_past_the_limit_is_not_kept() {
        let pool = Pool::new();
        pool.give_back([Vec::with_capacity(MAX_KEPT_CAPACITY + 1)]);
        assert_eq!(pooled(&pool), 0);
    }
}
