use std::time::Duration;

use super::*;

fn pending(sizes: &[u64]) -> Vec<Pending> {
    sizes.iter().enumerate().map(|(i, &size)| Pending { seq: 10 + 3 * i as u64, size }).collect()
}

fn config(max_changes: u32, max_bytes: u64) -> PushConfig {
    PushConfig {
        ceiling: BatchPolicy { max_changes, max_bytes },
        floor: BatchPolicy { max_changes: 2, max_bytes: 100 },
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    }
}

fn plan(p: &PushPlanner, pending: &[Pending]) -> Batch {
    p.plan(pending).expect("ascending").expect("something to send")
}

/// xorshift64: deterministic, no RNG crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn nothing_pending_plans_nothing() {
    assert_eq!(PushPlanner::default().plan(&[]), Ok(None));
}

#[test]
fn batches_respect_count_and_bytes() {
    let p = PushPlanner::new(config(3, 1000));
    let b = plan(&p, &pending(&[10, 10, 10, 10]));
    assert_eq!((b.first_seq, b.last_seq, b.count, b.bytes), (10, 16, 3, 30));

    let b = plan(&p, &pending(&[400, 500, 200]));
    assert_eq!((b.count, b.bytes), (2, 900));

    // Exactly at the budget is allowed.
    let b = plan(&p, &pending(&[500, 500, 1]));
    assert_eq!((b.count, b.bytes), (2, 1000));
}

#[test]
fn an_oversized_change_goes_alone() {
    let p = PushPlanner::new(config(10, 1000));
    let b = plan(&p, &pending(&[5000, 1]));
    assert_eq!((b.count, b.bytes, b.last_seq), (1, 5000, 10));
    // Behind a small one it waits for the next batch.
    let b = plan(&p, &pending(&[1, 5000]));
    assert_eq!((b.count, b.bytes), (1, 1));
}

#[test]
fn unordered_pending_is_refused() {
    let p = PushPlanner::default();
    let bad = [Pending { seq: 5, size: 1 }, Pending { seq: 5, size: 1 }];
    assert_eq!(p.plan(&bad), Err(NotAscending { seq: 5 }));
    let bad = [Pending { seq: 5, size: 1 }, Pending { seq: 4, size: 1 }];
    assert_eq!(p.plan(&bad), Err(NotAscending { seq: 4 }));
}

#[test]
fn ack_marks_through_the_batch_at_most() {
    let mut p = PushPlanner::new(config(2, 1000));
    let b = plan(&p, &pending(&[1, 1, 1]));
    assert_eq!(b.last_seq, 13);
    // The hub may know later seqs (from a response that was lost); the edge
    // still marks only what this batch carried.
    assert_eq!(p.record(&b, PushOutcome::Acked { through: 99 }, 0.0), Next::MarkSentThrough { seq: 13 });
    // A partial ack marks the part.
    assert_eq!(p.record(&b, PushOutcome::Acked { through: 10 }, 0.0), Next::MarkSentThrough { seq: 10 });
    // An ack below the batch is a failure, not progress.
    assert_eq!(p.record(&b, PushOutcome::Acked { through: 9 }, 0.0), Next::Retry);
    assert!(p.next_delay() > Duration::ZERO);
}

#[test]
fn failures_shrink_to_the_floor_and_success_grows_back() {
    let mut p = PushPlanner::new(config(64, 64_000));
    let all = pending(&[10; 200]);
    let mut sizes = vec![];
    for _ in 0..10 {
        let b = plan(&p, &all);
        sizes.push(b.count);
        assert_eq!(p.record(&b, PushOutcome::Retryable, 0.5), Next::Retry);
    }
    assert_eq!(sizes[..6], [64, 32, 16, 8, 4, 2]);
    assert!(sizes[6..].iter().all(|&n| n == 2), "floor holds: {sizes:?}");
    assert_eq!(p.consecutive_failures(), 10);

    let mut grown = vec![];
    for _ in 0..20 {
        let b = plan(&p, &all);
        grown.push(b.count);
        assert!(matches!(p.record(&b, PushOutcome::Acked { through: b.last_seq }, 0.5), Next::MarkSentThrough { .. }));
        assert_eq!(p.next_delay(), Duration::ZERO);
    }
    assert!(grown.windows(2).all(|w| w[1] >= w[0]), "{grown:?}");
    assert!(grown[1] < 2 * grown[0], "gradual: {grown:?}");
    assert_eq!(*grown.last().expect("some"), 64, "back at the ceiling: {grown:?}");
    assert_eq!(p.policy(), config(64, 64_000).ceiling);
}

#[test]
fn backoff_doubles_jitters_and_is_capped() {
    let mut p = PushPlanner::new(config(10, 1000));
    let b = plan(&p, &pending(&[1]));
    let mut upper = vec![];
    for _ in 0..12 {
        p.record(&b, PushOutcome::Retryable, 0.999_999);
        upper.push(p.next_delay().as_secs_f64().round() as u64);
    }
    assert_eq!(upper[..7], [1, 2, 4, 8, 16, 32, 60]);
    assert!(upper[7..].iter().all(|&s| s == 60));

    // Jitter spreads each step over its upper half, deterministically.
    let mut a = PushPlanner::new(config(10, 1000));
    for _ in 0..4 {
        a.record(&b, PushOutcome::Retryable, 0.0);
    }
    assert_eq!(a.next_delay(), Duration::from_secs(4));
    let mut c = a.clone();
    a.record(&b, PushOutcome::Retryable, 0.25);
    c.record(&b, PushOutcome::Retryable, 0.25);
    assert_eq!(a.next_delay(), c.next_delay());
    assert_eq!(a.next_delay(), Duration::from_secs(10));
    // Out-of-range jitter is clamped, never a panic or a zero wait.
    for j in [f64::NAN, -3.0, 7.0, f64::INFINITY] {
        let mut d = a.clone();
        d.record(&b, PushOutcome::Retryable, j);
        assert!(d.next_delay() >= Duration::from_secs(16) && d.next_delay() <= Duration::from_secs(32));
    }
}

#[test]
fn too_large_halves_at_once_and_is_remembered() {
    let mut p = PushPlanner::new(config(100, 10_000));
    let all = pending(&[100; 300]);
    let b = plan(&p, &all);
    assert_eq!((b.count, b.bytes), (100, 10_000));
    assert_eq!(p.record(&b, PushOutcome::TooLarge, 0.0), Next::Retry);
    assert_eq!(p.next_delay(), Duration::ZERO);
    let b = plan(&p, &all);
    assert_eq!((b.count, b.bytes), (50, 5_000));
    // Growing back stays under the 10,000 bytes the hub refused.
    for _ in 0..20 {
        let b = plan(&p, &all);
        assert!(b.bytes < 10_000);
        p.record(&b, PushOutcome::Acked { through: b.last_seq }, 0.0);
    }
    assert_eq!(p.policy().max_bytes, 9_999);
    p.reset();
    assert_eq!(p.policy().max_bytes, 9_999);
}

#[test]
fn what_was_learnt_carries_over_to_the_next_run() {
    use super::Learnt;
    let mut p = PushPlanner::new(config(100, 10_000));
    let all = pending(&[100; 300]);
    // Two runs' worth of failures: a 413, then a cut link.
    let b = plan(&p, &all);
    p.record(&b, PushOutcome::TooLarge, 0.0);
    let b = plan(&p, &all);
    p.record(&b, PushOutcome::Retryable, 0.0);
    let learnt = p.learnt();
    assert_eq!(
        learnt,
        Learnt { current: BatchPolicy { max_changes: 25, max_bytes: 2_500 }, hub_limit_bytes: Some(9_999) }
    );
    assert_eq!(Learnt::from_text(&learnt.to_text()), Some(learnt));

    // A new run starts small, not at the ceiling, and forgets the delay.
    let mut next = PushPlanner::resume(config(100, 10_000), learnt);
    assert_eq!(next.next_delay(), Duration::ZERO);
    assert_eq!(plan(&next, &all).count, 25);
    for _ in 0..20 {
        let b = plan(&next, &all);
        next.record(&b, PushOutcome::Acked { through: b.last_seq }, 0.0);
    }
    assert_eq!(next.policy().max_bytes, 9_999, "still under what the hub refused");

    // Resuming stays within the run's own bounds.
    let tight = PushPlanner::resume(config(10, 500), learnt);
    assert_eq!(tight.policy(), BatchPolicy { max_changes: 10, max_bytes: 500 });
    let fresh = PushPlanner::new(config(100, 10_000)).learnt();
    assert_eq!(fresh.hub_limit_bytes, None);
    assert_eq!(Learnt::from_text(&fresh.to_text()), Some(fresh));
    for bad in ["", "1,2", "1,2,3,4", "a,2,-", "1,2,x"] {
        assert_eq!(Learnt::from_text(bad), None, "{bad:?}");
    }
}

#[test]
fn a_single_change_too_large_stops() {
    let mut p = PushPlanner::new(config(10, 1000));
    let all = pending(&[5000, 1]);
    let b = plan(&p, &all);
    assert_eq!(p.record(&b, PushOutcome::TooLarge, 0.0), Next::Stop(StopReason::ChangeTooLarge { seq: 10 }));
    assert_eq!(p.plan(&all), Ok(None));
}

#[test]
fn permanent_failure_stops_until_reset() {
    let mut p = PushPlanner::new(config(10, 1000));
    let all = pending(&[1, 2, 3]);
    let b = plan(&p, &all);
    assert_eq!(p.record(&b, PushOutcome::Permanent, 0.0), Next::Stop(StopReason::Permanent));
    assert_eq!(p.stopped(), Some(StopReason::Permanent));
    assert_eq!(p.plan(&all), Ok(None));
    p.reset();
    assert_eq!(plan(&p, &all).count, 3);
}

#[test]
fn failures_are_classified() {
    use PushOutcome::{Permanent, Retryable, TooLarge};
    assert_eq!(PushOutcome::from_failure(None, None), Retryable);
    assert_eq!(PushOutcome::from_failure(Some(413), Some(false)), TooLarge);
    assert_eq!(PushOutcome::from_failure(Some(502), None), Retryable);
    assert_eq!(PushOutcome::from_failure(Some(429), None), Retryable);
    assert_eq!(PushOutcome::from_failure(Some(503), Some(true)), Retryable);
    assert_eq!(PushOutcome::from_failure(Some(500), Some(false)), Permanent);
    assert_eq!(PushOutcome::from_failure(Some(401), None), Permanent);
    assert_eq!(PushOutcome::from_failure(Some(403), Some(false)), Permanent);
    assert_eq!(PushOutcome::from_failure(Some(409), Some(true)), Retryable);
}

#[test]
fn page_len_follows_the_same_rule() {
    assert_eq!(page_len([], 100), 0);
    assert_eq!(page_len([500, 1], 100), 1);
    assert_eq!(page_len([50, 50, 1], 100), 2);
    assert_eq!(page_len([10, 20, 30], 1000), 3);
    assert_eq!(page_len([u64::MAX, u64::MAX], 10), 1);
}

/// Drive the planner against a simulated hub and link, from many seeds: every
/// change reaches the hub, in order, each stored once; no batch skips,
/// reorders or breaks its budget; delays stay capped.
#[test]
fn seeded_simulation_delivers_everything_in_order() {
    // How often each outcome occurred, so the test cannot pass vacuously.
    let mut seen = [0u32; 3]; // acked, too large, retryable
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let ceiling = BatchPolicy { max_changes: 1 + rng.below(50) as u32, max_bytes: 1 + rng.below(5_000) };
        let cfg = PushConfig {
            ceiling,
            floor: BatchPolicy { max_changes: 1 + rng.below(4) as u32, max_bytes: 1 + rng.below(500) },
            base_delay: Duration::from_millis(1 + rng.below(2000)),
            max_delay: Duration::from_secs(1 + rng.below(600)),
        };
        let mut p = PushPlanner::new(cfg);
        let hub_limit = 200 + rng.below(8_000);

        let mut next_seq = 1 + rng.below(1000);
        let mut outbox: Vec<Pending> = vec![];
        let mut hub: Vec<u64> = vec![]; // seqs stored, in order, once each
        let mut made: Vec<u64> = vec![];

        for _round in 0..400 {
            // The clinic keeps working: new changes join the outbox.
            for _ in 0..rng.below(4) {
                // Mostly small; now and then one bigger than a batch budget.
                let size = if rng.below(50) == 0 { 6_000 } else { 1 + rng.below(600) };
                outbox.push(Pending { seq: next_seq, size });
                made.push(next_seq);
                next_seq += 1 + rng.below(2); // gaps in seq are allowed
            }
            let Some(b) = p.plan(&outbox).expect("ascending") else {
                if p.stopped().is_some() {
                    break;
                }
                continue;
            };
            // Prefix, budgets.
            assert_eq!(b.first_seq, outbox[0].seq, "seed {seed}");
            assert_eq!(b.last_seq, outbox[b.count - 1].seq, "seed {seed}");
            assert_eq!(b.bytes, outbox[..b.count].iter().map(|e| e.size).sum::<u64>());
            let pol = p.policy();
            assert!(b.count <= pol.max_changes as usize, "seed {seed}");
            assert!(b.bytes <= pol.max_bytes || b.count == 1, "seed {seed}: {b:?} {pol:?}");

            let outcome = if b.bytes > hub_limit && b.count > 1 {
                PushOutcome::TooLarge
            } else if b.bytes > hub_limit {
                // The sim hub accepts a lone oversized change (its real limit
                // is set above the largest change the edge can make).
                store(&mut hub, &outbox[..b.count]);
                PushOutcome::Acked { through: b.last_seq }
            } else {
                match rng.below(10) {
                    // Lost before the hub.
                    0 | 1 => PushOutcome::Retryable,
                    // Stored, but the response was lost: sent again later.
                    2 => {
                        store(&mut hub, &outbox[..b.count]);
                        PushOutcome::Retryable
                    }
                    _ => {
                        store(&mut hub, &outbox[..b.count]);
                        PushOutcome::Acked { through: b.last_seq }
                    }
                }
            };
            seen[match outcome {
                PushOutcome::Acked { .. } => 0,
                PushOutcome::TooLarge => 1,
                _ => 2,
            }] += 1;
            match p.record(&b, outcome, rng.unit()) {
                Next::MarkSentThrough { seq } => {
                    assert!(seq >= b.first_seq && seq <= b.last_seq);
                    assert_eq!(p.next_delay(), Duration::ZERO);
                    outbox.retain(|e| e.seq > seq);
                }
                Next::Retry => assert!(p.next_delay() <= cfg.max_delay),
                Next::Stop(r) => panic!("seed {seed}: stopped: {r:?}"),
            }
        }
        // Link heals: drain.
        while let Some(b) = p.plan(&outbox).expect("ascending") {
            let outcome = if b.bytes > hub_limit && b.count > 1 {
                PushOutcome::TooLarge
            } else {
                store(&mut hub, &outbox[..b.count]);
                PushOutcome::Acked { through: b.last_seq }
            };
            if let Next::MarkSentThrough { seq } = p.record(&b, outcome, 0.5) {
                outbox.retain(|e| e.seq > seq);
            }
        }
        assert!(outbox.is_empty(), "seed {seed}");
        assert_eq!(hub, made, "seed {seed}: every change once, in order");
    }
    assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
}

/// The hub's dedup by change hash, reduced to seqs.
fn store(hub: &mut Vec<u64>, batch: &[Pending]) {
    for e in batch {
        if !hub.contains(&e.seq) {
            assert!(hub.last().is_none_or(|&l| l < e.seq), "hub sees seqs in order");
            hub.push(e.seq);
        }
    }
}
