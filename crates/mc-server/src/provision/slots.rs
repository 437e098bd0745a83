//! Each gateway's job slots: at most as many jobs as its generation allows talk to one
//! gateway at once.
//!
//! A job already under way (a retry: its bound counts from its first attempt, so it is
//! running) gets a free slot before a job that has not started yet (whose bound starts only
//! with its first attempt). Without that, a retry in a burst of new jobs waits behind all of
//! them and spends its whole bound in the queue. Within each kind, first come, first served.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Which kind of attempt waits for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A job that has had its first attempt.
    Retry,
    /// A job's first attempt.
    First,
}

/// One gateway's slots.
#[derive(Debug)]
pub struct GatewaySlots {
    limit: usize,
    state: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    taken: usize,
    retries: VecDeque<oneshot::Sender<SlotPermit>>,
    firsts: VecDeque<oneshot::Sender<SlotPermit>>,
}

/// A job's slot on its gateway; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct SlotPermit {
    slots: Option<Arc<GatewaySlots>>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

impl GatewaySlots {
    /// `limit` slots, all free.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            state: Mutex::new(Waiting::default()),
        })
    }

    /// Waits for a slot: a free one at once, else after every retry waiting before it and,
    /// for a first attempt, after every first attempt waiting before it too.
    pub async fn acquire(self: &Arc<Self>, turn: Turn) -> SlotPermit {
        let handed = {
            let mut waiting = self.state.lock();
            if waiting.taken < self.limit {
                waiting.taken += 1;
                return SlotPermit {
                    slots: Some(Arc::clone(self)),
                };
            }
            let (sender, receiver) = oneshot::channel();
            match turn {
                Turn::Retry => waiting.retries.push_back(sender),
                Turn::First => waiting.firsts.push_back(sender),
            }
            receiver
        };
        // A waiter's sender is dropped unsent only with the slots, which it holds.
        handed.await.expect("the slots outlive their waiters")
    }

    /// Hands a freed slot to the next waiter that still waits, or marks it free.
    fn release(self: &Arc<Self>) {
        loop {
            let next = {
                let mut waiting = self.state.lock();
                match waiting
                    .retries
                    .pop_front()
                    .or_else(|| waiting.firsts.pop_front())
                {
                    Some(next) => next,
                    None => {
                        waiting.taken -= 1;
                        return;
                    }
                }
            };
            let permit = SlotPermit {
                slots: Some(Arc::clone(self)),
            };
            match next.send(permit) {
                Ok(()) => return,
                // That waiter gave up: the slot goes to the one after it.
                Err(mut unclaimed) => drop(unclaimed.slots.take()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `future` completes without waiting.
    async fn ready<F: std::future::Future>(future: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(50), future)
            .await
            .ok()
    }

    #[tokio::test]
    async fn free_slots_are_taken_at_once_and_the_next_job_waits() {
        let slots = GatewaySlots::new(2);
        let first = ready(slots.acquire(Turn::First)).await;
        let second = ready(slots.acquire(Turn::First)).await;
        assert!(first.is_some() && second.is_some());
        assert!(ready(slots.acquire(Turn::Retry)).await.is_none());
        drop(first);
        assert!(ready(slots.acquire(Turn::First)).await.is_some());
    }

    #[tokio::test]
    async fn a_retry_gets_the_next_slot_before_first_attempts_that_waited_longer() {
        let slots = GatewaySlots::new(1);
        let held = slots.acquire(Turn::First).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, turn) in [
            ("first a", Turn::First),
            ("first b", Turn::First),
            ("retry", Turn::Retry),
        ] {
            let (slots, order) = (Arc::clone(&slots), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let _slot = slots.acquire(turn).await;
                order.lock().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            // Each is queued before the next one asks.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.expect("a waiter ran");
        }
        assert_eq!(*order.lock(), ["retry", "first a", "first b"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_passes_its_slot_on() {
        let slots = GatewaySlots::new(1);
        let held = slots.acquire(Turn::First).await;
        assert!(ready(slots.acquire(Turn::Retry)).await.is_none());
        let after = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire(Turn::First).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let permit = tokio::time::timeout(Duration::from_secs(5), after)
            .await
            .expect("the slot was passed on")
            .expect("the waiter ran");
        drop(permit);
        assert!(ready(slots.acquire(Turn::First)).await.is_some());
    }
}
