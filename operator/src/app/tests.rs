use super::{Subsystems, first_change};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::timeout;

#[tokio::test(start_paused = true)]
async fn the_first_state_is_notified_once_and_never_when_the_source_gave_up() {
    let second = Duration::from_secs(1);
    let (loaded, changes) = watch::channel(0);
    let mut first = std::pin::pin!(first_change(changes));
    assert!(
        timeout(second, &mut first).await.is_err(),
        "resolved before anything was loaded"
    );
    loaded.send_replace(1);
    timeout(second, &mut first)
        .await
        .expect("the first state resolves it");
    // A source that ends before loading anything leaves the config API unserved.
    let (gone, changes) = watch::channel(0);
    drop(gone);
    assert!(timeout(second, first_change(changes)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn every_subsystem_is_awaited_even_after_one_panicked() {
    let (stop, stopped) = watch::channel(false);
    let drained = Arc::new(AtomicBool::new(false));
    let mut subsystems = Subsystems::default();
    subsystems.start("panics", async { panic!("a bug in one subsystem") });
    let (mut shutdown, done) = (stopped.clone(), drained.clone());
    subsystems.start("drains", async move {
        crate::shutdown::stopped(&mut shutdown).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        done.store(true, Ordering::SeqCst);
    });
    stop.send_replace(true);
    timeout(Duration::from_secs(10), subsystems.join())
        .await
        .expect("join ends");
    assert!(
        drained.load(Ordering::SeqCst),
        "join returned before the drain"
    );
}
