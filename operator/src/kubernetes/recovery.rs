//! How the operator waits before retrying the API server: short, capped and reset on success,
//! so it resumes within seconds of the API server answering again.
//!
//! kube-runtime's `default_backoff()` is client-go's: 0.8 s doubling up to 30 s, and its
//! `StreamBackoff` pauses after *every* error, 410 Gone included. After a 28 s API server
//! restart that meant up to 30 s before the first retry, another wait for each 403 (RBAC not
//! loaded yet) and 410 (resource version compacted) that follow a restart: 44 s before a weight
//! edit was seen. Here:
//! - [`ApiBackoff`]: 200 ms doubling up to 2 s, each delay cut to a random 50–100 % of itself
//!   (so replicas and watches do not retry in step), back to 200 ms after a success. A 2 s cap
//!   costs an idle API server at most a few requests per second per replica, and bounds the
//!   delay between the API server coming back and the next attempt.
//! - [`recovering`]: the adapter for a kube-runtime `watcher` stream: the delay after an error
//!   is an [`ApiBackoff`]'s, except that a `410 Gone` is followed by the relist at once (the
//!   watcher has already dropped its resource version; waiting only delays the relist), unless
//!   the previous error was a 410 too, which then waits like any other error so a server that
//!   answers nothing but 410 is not hammered; and the first error the API server *answers*
//!   (an HTTP status) after errors it did not (refused connections, timeouts) starts the
//!   backoff over: the server is back, and the 403s and 410s of its restart are retried within
//!   fractions of a second while they last, then slower if they persist.
//!
//! Written here rather than configured: kube-runtime's `watcher::ExponentialBackoff`
//! constructor is private and its `StreamBackoff` cannot tell one error from another.

use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use std::time::Duration;

/// The first delay after a success.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest delay: how late, at worst, the operator notices the API server is back.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(2);

/// Exponential backoff with jitter between [`FIRST_DELAY`] and [`MAX_DELAY`].
#[derive(Debug, Clone)]
pub(crate) struct ApiBackoff {
    next: Duration,
}

impl Default for ApiBackoff {
    fn default() -> Self {
        Self { next: FIRST_DELAY }
    }
}

impl Iterator for ApiBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(MAX_DELAY);
        Some(delay.mul_f64(0.5 + fastrand::f64() / 2.0))
    }
}

impl Backoff for ApiBackoff {
    fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }
}

/// The HTTP status of a watch error, when the API server gave one.
pub(crate) fn status_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// The errors before the current one, since the last success.
#[derive(Debug, Clone, Copy, Default)]
struct Errors {
    /// There were some.
    any: bool,
    /// The last one was a 410.
    gone: bool,
    /// The last one had an HTTP status (the API server answered).
    answered: bool,
}

/// What to wait after `error`, given the errors before it; `before` becomes what follows it.
fn delay_after(backoff: &mut ApiBackoff, error: &watcher::Error, before: &mut Errors) -> Duration {
    let code = status_code(error);
    if code.is_some() && before.any && !before.answered {
        backoff.reset();
    }
    let delay = if code == Some(410) && !before.gone {
        Duration::ZERO
    } else {
        backoff.next().unwrap_or(MAX_DELAY)
    };
    *before = Errors {
        any: true,
        gone: code == Some(410),
        answered: code.is_some(),
    };
    delay
}

/// `events` (a kube-runtime `watcher` stream) paused after each error as the module doc says;
/// every item, errors included, is passed on.
pub(crate) fn recovering<K, S>(events: S) -> impl Stream<Item = S::Item> + Send
where
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    K: Send + 'static,
{
    struct Recovery<S> {
        events: std::pin::Pin<Box<S>>,
        backoff: ApiBackoff,
        errors: Errors,
        pause: Duration,
    }
    let start = Recovery {
        events: Box::pin(events),
        backoff: ApiBackoff::default(),
        errors: Errors::default(),
        pause: Duration::ZERO,
    };
    futures::stream::unfold(start, |mut state| async move {
        if !state.pause.is_zero() {
            tokio::time::sleep(state.pause).await;
        }
        let item = state.events.next().await?;
        match &item {
            Ok(_) => {
                state.backoff.reset();
                state.errors = Errors::default();
                state.pause = Duration::ZERO;
            }
            Err(error) => {
                state.pause = delay_after(&mut state.backoff, error, &mut state.errors);
            }
        }
        Some((item, state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn gone() -> watcher::Error {
        let mut status = Status::failure("too old resource version", "Expired");
        status.code = 410;
        watcher::Error::WatchError(Box::new(status))
    }

    fn forbidden() -> watcher::Error {
        let mut status = Status::failure("forbidden", "Forbidden");
        status.code = 403;
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn delays_double_up_to_two_seconds_with_jitter_and_reset() {
        let mut backoff = ApiBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next().unwrap()).collect();
        let caps = [200, 400, 800, 1600, 2000, 2000, 2000, 2000];
        for (delay, cap) in delays.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(*delay <= cap && *delay >= cap / 2, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next().unwrap() <= FIRST_DELAY);
    }

    fn refused() -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Service(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        ))
    }

    #[test]
    fn a_gone_is_relisted_at_once_but_not_twice_in_a_row() {
        let mut backoff = ApiBackoff::default();
        let mut errors = Errors::default();
        assert_eq!(
            delay_after(&mut backoff, &gone(), &mut errors),
            Duration::ZERO
        );
        assert!(delay_after(&mut backoff, &gone(), &mut errors) > Duration::ZERO);
        let forbidden = delay_after(&mut backoff, &forbidden(), &mut errors);
        assert!(
            forbidden > Duration::ZERO && forbidden <= MAX_DELAY,
            "{forbidden:?}"
        );
    }

    #[test]
    fn the_first_answer_after_an_outage_starts_the_backoff_over() {
        let mut backoff = ApiBackoff::default();
        let mut errors = Errors::default();
        for _ in 0..10 {
            delay_after(&mut backoff, &refused(), &mut errors);
        }
        assert!(delay_after(&mut backoff, &refused(), &mut errors) >= MAX_DELAY / 2);
        // Back, but RBAC is not loaded yet: retried quickly, then slower while it lasts.
        let forbidden: Vec<Duration> = (0..6)
            .map(|_| delay_after(&mut backoff, &forbidden(), &mut errors))
            .collect();
        assert!(forbidden[0] <= FIRST_DELAY, "{forbidden:?}");
        assert!(forbidden[5] >= MAX_DELAY / 2, "{forbidden:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_resumes_within_the_cap_after_any_run_of_errors() {
        // A long outage: 100 errors, then events again; one more error; a 410.
        let items: Vec<watcher::Result<watcher::Event<()>>> = (0..100)
            .map(|_| Err(forbidden()))
            .chain([
                Ok(watcher::Event::Init),
                Err(forbidden()),
                Ok(watcher::Event::Init),
            ])
            .chain([Err(gone()), Ok(watcher::Event::Init)])
            .collect();
        let stream = recovering(futures::stream::iter(items));
        let mut stream = std::pin::pin!(stream);
        let mut last = tokio::time::Instant::now();
        // Per item: the time since the one before it (the pause after that one).
        let mut waits = Vec::new();
        while let Some(item) = stream.next().await {
            let now = tokio::time::Instant::now();
            waits.push((item.is_ok(), now - last));
            last = now;
        }
        assert_eq!(waits.len(), 105);
        assert!(
            waits.iter().all(|(_, wait)| *wait <= MAX_DELAY),
            "never more than the cap: {waits:?}"
        );
        assert!(waits[100].1 >= MAX_DELAY / 2, "the cap is reached");
        assert!(
            waits[102].1 <= FIRST_DELAY,
            "after a success, the first delay again: {:?}",
            waits[102]
        );
        assert_eq!(
            waits[104],
            (true, Duration::ZERO),
            "the relist after a 410 is not delayed"
        );
    }
}
