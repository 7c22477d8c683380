//! The retry budget of a service: retries stay within `ratio` of the requests of the last ten
//! seconds, plus `minPerSecond`, and are paid out as they are earned rather than in lumps.
//!
//! Our own rather than tower's `TpsBudget`: that budget pays its reserve out in bursts when its
//! window turns, and its ratio arithmetic makes a ratio of 0.6 behave as 1.0 (tower#857), while
//! the contract promises an exact ratio over a sliding 10 s window with no bursts. It still
//! implements tower's [`Budget`] trait, so callers use it as they would tower's.
//!
//! How it pays:
//! - Time is cut into 1 s slots kept in a ring of ten; each slot counts the requests (deposits)
//!   and the retries paid in it. Memory is fixed whatever the traffic.
//! - **The ratio**: a retry is paid when the retries paid by the ratio in the last ten slots
//!   stay within `ratio` × the requests of those slots, and, so that a reserve earned during a
//!   calm spell is not spent at once when failures start, when the retries paid by the ratio in
//!   the current slot stay within `ratio` × the requests of the current and the previous slot.
//!   Under steady failure the ratio holds exactly: 0.6 means 60 %.
//! - **The floor**: otherwise a retry is paid from a token bucket refilled at `minPerSecond`
//!   that holds one second's worth (so it is a rate, never a lump per window), and never more
//!   than `minPerSecond` × 10 in the last ten slots.

use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tower::retry::budget::Budget;
use weir_proxy_api::RetryBudget as Config;

/// The length of one slot of the window.
const SLOT: Duration = Duration::from_secs(1);
/// Slots in the window: ten seconds.
const SLOTS: usize = 10;
/// Allowance for floating-point rounding in `ratio` × requests (0.6 × 5 must allow 3).
const EPSILON: f64 = 1e-9;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which slot since the budget's epoch these counts belong to.
    index: u64,
    requests: u64,
    ratio_retries: u64,
    floor_retries: u64,
}

#[derive(Debug)]
struct State {
    slots: [Slot; SLOTS],
    /// Floor tokens in hand, and when they were last refilled.
    floor_tokens: f64,
    floor_at: Instant,
}

/// A service's retry budget; see the module doc for how it pays.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Floor tokens per second.
    floor_rate: f64,
    /// Floor tokens the bucket holds at most: one second's worth, at least one.
    floor_capacity: f64,
    epoch: Instant,
    state: Mutex<State>,
}

impl RetryBudget {
    pub fn new(config: &Config, now: Instant) -> Self {
        // Out-of-range values are refused by validation; here they only need to be harmless.
        let ratio = if config.ratio.is_finite() {
            config.ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let floor_rate = f64::from(config.min_per_second);
        let floor_capacity = floor_rate.max(1.0);
        Self {
            ratio,
            floor_rate,
            floor_capacity,
            epoch: now,
            state: Mutex::new(State {
                slots: [Slot::default(); SLOTS],
                // Full: `minPerSecond` means that many retries in any second, the first one
                // included (the ten-second cap still holds).
                floor_tokens: if floor_rate > 0.0 {
                    floor_capacity
                } else {
                    0.0
                },
                floor_at: now,
            }),
        }
    }

    fn index(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / SLOT.as_secs()
    }

    /// Counts a request: it earns `ratio` of a retry for the next ten seconds.
    pub fn deposit_at(&self, now: Instant) {
        let index = self.index(now);
        let mut state = self.state.lock();
        let slot = current(&mut state, index);
        slot.requests = slot.requests.saturating_add(1);
    }

    /// Pays for one retry if the budget allows it.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        let index = self.index(now);
        let mut state = self.state.lock();
        let window = |field: fn(&Slot) -> u64| -> u64 {
            state
                .slots
                .iter()
                .filter(|s| s.index <= index && index - s.index < SLOTS as u64)
                .map(field)
                .sum()
        };
        let requests = window(|s| s.requests);
        let ratio_retries = window(|s| s.ratio_retries);
        let floor_retries = window(|s| s.floor_retries);
        let at = |i: u64| {
            let slot = state.slots[(i % SLOTS as u64) as usize];
            if slot.index == i {
                slot
            } else {
                Slot::default()
            }
        };
        let this = at(index);
        let previous = index.checked_sub(1).map(at).unwrap_or_default();

        let earned = self.ratio * requests as f64 + EPSILON;
        let earned_lately =
            self.ratio * this.requests.saturating_add(previous.requests) as f64 + EPSILON;
        if (ratio_retries + 1) as f64 <= earned && (this.ratio_retries + 1) as f64 <= earned_lately
        {
            let slot = current(&mut state, index);
            slot.ratio_retries += 1;
            return true;
        }

        let elapsed = now.saturating_duration_since(state.floor_at).as_secs_f64();
        state.floor_tokens =
            (state.floor_tokens + elapsed * self.floor_rate).min(self.floor_capacity);
        state.floor_at = now;
        let floor_in_window = (floor_retries + 1) as f64 <= self.floor_rate * SLOTS as f64;
        if !floor_in_window {
            // Tokens that the ten-second cap keeps from being spent are not saved up either,
            // or they would come out in a lump when the window moves on.
            state.floor_tokens = state.floor_tokens.min(1.0);
        }
        if state.floor_tokens >= 1.0 && floor_in_window {
            state.floor_tokens -= 1.0;
            let slot = current(&mut state, index);
            slot.floor_retries += 1;
            return true;
        }
        false
    }
}

/// The slot for `index`, emptied first when it still holds an older second's counts.
fn current(state: &mut State, index: u64) -> &mut Slot {
    let slot = &mut state.slots[(index % SLOTS as u64) as usize];
    // A caller whose clock reading is ten seconds stale counts into the newer slot rather than
    // wiping it.
    if slot.index < index {
        *slot = Slot {
            index,
            ..Slot::default()
        };
    }
    slot
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32, now: Instant) -> RetryBudget {
        RetryBudget::new(
            &Config {
                ratio,
                min_per_second,
            },
            now,
        )
    }

    /// `seconds` of `rate` requests per second that all fail and want `attempts` retries each;
    /// returns the retries paid in each second.
    fn always_failing(
        b: &RetryBudget,
        t0: Instant,
        rate: u32,
        seconds: u32,
        attempts: u32,
    ) -> Vec<u32> {
        let step = Duration::from_secs(1) / rate;
        let mut per_second = vec![0; seconds as usize];
        for n in 0..rate * seconds {
            let now = t0 + step * n;
            b.deposit_at(now);
            for _ in 0..attempts {
                if !b.withdraw_at(now) {
                    break;
                }
                per_second[(n / rate) as usize] += 1;
            }
        }
        per_second
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_budget_at_twenty_per_second_of_failures_pays_the_contract_and_no_burst() {
        // Through tower's trait and the (paused) clock, as the outbound proxy uses it.
        let b = budget(0.2, 10, Instant::now());
        let mut per_second = vec![0u32; 30];
        for n in 0..600 {
            b.deposit();
            for _ in 0..3 {
                if !b.withdraw() {
                    break;
                }
                per_second[n / 20] += 1;
            }
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        let total: u32 = per_second.iter().sum();
        eprintln!("600 requests, {total} retries; per second {per_second:?}");
        // 600 requests × 0.2 + 10/s × 30 s = 420.
        assert!(
            (410..=421).contains(&total),
            "{total} retries: {per_second:?}"
        );
        // Ratio and floor together pay 4 + 10 per second; never a lump.
        let worst = *per_second.iter().max().unwrap();
        assert!(worst <= 2 * (4 + 10), "a burst of {worst}: {per_second:?}");
        // After the first second (whose floor starts with one second's worth in hand), steady.
        let steady = *per_second[1..].iter().max().unwrap();
        assert!(steady <= 4 + 10 + 1, "a burst of {steady}: {per_second:?}");
        // At any moment, the last 10 s hold no more than 0.2 × 200 + 10 × 10 = 140.
        for end in 10..=30 {
            let window: u32 = per_second[end - 10..end].iter().sum();
            assert!(window <= 141, "{window} retries in the 10 s before {end} s");
        }
    }

    #[test]
    fn the_ratio_is_exact_for_any_value() {
        for (ratio, expected) in [(0.0, 0), (0.1, 60), (0.6, 360), (1.0, 600)] {
            let t0 = Instant::now();
            let b = budget(ratio, 0, t0);
            let total: u32 = always_failing(&b, t0, 20, 30, 3).iter().sum();
            assert_eq!(total, expected, "ratio {ratio}");
        }
    }

    /// How many retries the budget pays for at one instant, all asked for together.
    fn paid_at_once(b: &RetryBudget, now: Instant) -> usize {
        (0..1000).take_while(|_| b.withdraw_at(now)).count()
    }

    #[test]
    fn a_reserve_earned_while_calm_is_paid_out_gradually() {
        let t0 = Instant::now();
        let b = budget(0.5, 0, t0);
        // 9 s of 100 requests per second without failures: 450 retries earned.
        for n in 0..900 {
            b.deposit_at(t0 + Duration::from_millis(10) * n);
        }
        let paid = paid_at_once(&b, t0 + Duration::from_millis(9_000));
        // Only what the last two seconds earned: 0.5 × 100.
        assert_eq!(paid, 50);
    }

    #[test]
    fn the_floor_is_a_rate_not_a_lump() {
        let t0 = Instant::now();
        let b = budget(0.0, 10, t0);
        let mut paid = Vec::new();
        // A retry wanted every 10 ms for 20 s, with no requests to earn a ratio.
        for n in 0..2000u32 {
            let now = t0 + Duration::from_millis(10) * n;
            if b.withdraw_at(now) {
                paid.push(n / 100);
            }
        }
        // Never more than 10 × 10 in any ten seconds.
        assert!((195..=200).contains(&paid.len()), "{}", paid.len());
        for second in 0..20 {
            let n = paid.iter().filter(|&&s| s == second).count();
            // A full bucket of one second's worth plus that second's refill, at most.
            assert!(n <= 20, "{n} in second {second}");
        }
        // A quiet spell refills one second's worth, no more.
        let burst = paid_at_once(&b, t0 + Duration::from_secs(100));
        assert_eq!(burst, 10);
    }

    #[test]
    fn extreme_values_neither_panic_nor_overflow() {
        let t0 = Instant::now();
        for (ratio, floor) in [
            (0.0, 0),
            (1.0, 1_000_000),
            (f64::NAN, u32::MAX),
            (-1.0, 0),
            (7.0, 1),
        ] {
            let b = budget(ratio, floor, t0);
            for now in [t0, t0 + Duration::from_secs(86_400 * 365 * 100)] {
                for _ in 0..1000 {
                    b.deposit_at(now);
                    b.withdraw_at(now);
                }
            }
            // The clock going backwards (a caller's stale `now`) is harmless too.
            b.withdraw_at(t0);
        }
        let b = budget(1.0, 1_000_000, t0);
        let paid = (0..3_000_000)
            .take_while(|_| b.withdraw_at(t0 + Duration::from_secs(5)))
            .count();
        assert_eq!(paid, 1_000_000, "one second's worth of the floor");
    }
}
