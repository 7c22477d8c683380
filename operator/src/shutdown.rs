//! Shutdown: every long-running task of the operator is handed a `watch::Receiver<bool>` that
//! turns true once (on SIGTERM/SIGINT, or when its owner is done with it); [`stopped`] is how a
//! task waits for it inside a `select!`.

use tokio::sync::watch;

/// Resolves once `shutdown` is true or its sender is gone (an owner that went away stops its
/// tasks too).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C where the Unix signals are not available).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stopped;
    use std::time::Duration;
    use tokio::sync::watch;
    use tokio::time::timeout;

    #[tokio::test(start_paused = true)]
    async fn stopped_waits_for_true_or_a_gone_sender() {
        let second = Duration::from_secs(1);
        let (stop, mut shutdown) = watch::channel(false);
        assert!(
            timeout(second, stopped(&mut shutdown)).await.is_err(),
            "resolved while the flag is false"
        );
        stop.send_replace(true);
        timeout(second, stopped(&mut shutdown))
            .await
            .expect("true stops");
        let (stop, mut shutdown) = watch::channel(false);
        drop(stop);
        timeout(second, stopped(&mut shutdown))
            .await
            .expect("a gone sender stops");
    }
}
