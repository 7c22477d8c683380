//! Weir's autoscaler against load curves, beside a plain HPA (15 s sync, metrics.k8s.io-style
//! 15 s samples, 300 s scale-down window), in simulated time: reaction, overshoot, capacity,
//! replica-minutes and flaps. Everything is deterministic (the noisy curve has a fixed seed), so
//! the bounds below are checked against exact runs; they leave room for small tuning changes
//! but fail on a regression of the behaviour they name.

use weir_operator::autoscaler::run_simulation_command;
use weir_operator::autoscaler::simulate::{Comparison, Curve, Scenario, Stats, chart_path};

fn run(curve: Curve) -> Comparison {
    Comparison::run(curve, &Scenario::default())
}

fn show(c: &Comparison) -> String {
    weir_operator::autoscaler::simulate::table(std::slice::from_ref(c))
}

/// Asserts that Weir spent at most `factor` times the HPA's replica-minutes on `c`.
fn costs_at_most(c: &Comparison, factor: f64) {
    let (weir, hpa) = (c.weir.stats.replica_minutes, c.hpa.stats.replica_minutes);
    assert!(
        weir <= hpa * factor,
        "{weir} > {factor} × {hpa}\n{}",
        show(c)
    );
}

fn final_replicas(stats_of: &weir_operator::autoscaler::simulate::Run) -> i32 {
    stats_of.timeline.last().unwrap().replicas
}

#[test]
fn step_weir_reaches_capacity_within_20s_and_faster_than_the_hpa() {
    let c = run(Curve::Step);
    let (weir, hpa): (&Stats, &Stats) = (&c.weir.stats, &c.hpa.stats);
    let table = show(&c);
    // Panic mode: pods are asked for within a tick or two, Ready 10 s later.
    let reaction = weir.reaction.expect("weir reaches capacity");
    assert!(reaction <= 20, "{table}");
    let hpa_reaction = hpa.reaction.expect("the HPA gets there too");
    assert!(hpa_reaction >= reaction + 15, "{table}");
    // No overshoot: 160 in flight at 10 per pod is 16 pods, and no more.
    assert_eq!(weir.peak_replicas, 16, "{table}");
    // Up once (in a few quick steps), down once.
    assert_eq!(weir.flaps, 1, "{table}");
    assert!(weir.scale_changes <= 6, "{table}");
    assert_eq!(final_replicas(&c.weir), 4);
}

#[test]
fn ramp_weir_follows_closer_than_the_hpa() {
    let c = run(Curve::Ramp);
    let table = show(&c);
    assert!(
        c.weir.stats.under_capacity < c.hpa.stats.under_capacity,
        "{table}"
    );
    assert!(
        c.weir.stats.reaction.unwrap() < c.hpa.stats.reaction.unwrap(),
        "{table}"
    );
    // 200 in flight needs 20 pods; at most one more.
    assert!(c.weir.stats.peak_replicas <= 21, "{table}");
    assert_eq!(c.weir.stats.flaps, 1, "{table}");
    // Faster without costing more than a few per cent.
    costs_at_most(&c, 1.03);
}

#[test]
fn spike_weir_serves_it_the_hpa_misses_it() {
    let c = run(Curve::Spike);
    let table = show(&c);
    // 300 in flight for 30 s: Weir has the pods Ready within the spike, the HPA never does.
    assert!(c.weir.stats.reaction.is_some_and(|r| r <= 20), "{table}");
    assert_eq!(c.hpa.stats.reaction, None, "{table}");
    assert!(c.weir.stats.under_capacity < c.hpa.stats.under_capacity);
    // 30 pods for 300 in flight: the panic count, no more.
    assert!(c.weir.stats.peak_replicas <= 30, "{table}");
    assert_eq!(c.weir.stats.flaps, 1, "{table}");
    // And back to the floor after the scale-down window.
    assert_eq!(final_replicas(&c.weir), 4, "{table}");
}

#[test]
fn sine_weir_tracks_the_wave_without_extra_flaps() {
    let c = run(Curve::Sine);
    let table = show(&c);
    assert!(
        c.weir.stats.under_capacity * 3 < c.hpa.stats.under_capacity * 2,
        "{table}"
    );
    // Two 10-minute periods: at most one up and one down phase each.
    assert!(c.weir.stats.flaps <= 3, "{table}");
    assert!(c.weir.stats.flaps <= c.hpa.stats.flaps, "{table}");
    costs_at_most(&c, 1.02);
}

#[test]
fn noisy_weir_does_not_flap() {
    let c = run(Curve::Noisy);
    let table = show(&c);
    // ±20 % per-second noise around 80 in flight: the windows average it out.
    assert_eq!(c.weir.stats.flaps, 0, "{table}");
    assert!(c.weir.stats.scale_changes <= 2, "{table}");
    assert!(c.weir.stats.scale_changes <= c.hpa.stats.scale_changes);
    costs_at_most(&c, 1.02);
}

#[test]
fn runs_are_deterministic() {
    for curve in Curve::ALL {
        assert_eq!(run(curve), run(curve), "{}", curve.name());
    }
}

/// Decodes a PNG: (width, height, RGB pixels).
fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buffer.truncate(info.buffer_size());
    (info.width, info.height, buffer)
}

#[test]
fn the_command_prints_the_table_and_draws_each_curve() {
    let folder = weir_testkit::temp_dir("weir-autoscaler-command");
    let dir = folder.path();
    let out = run_simulation_command("step", Some(dir)).unwrap();
    assert!(out.contains("to capacity after"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("step   weir")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("step   hpa")), "{out}");
    let path = chart_path(dir, Curve::Step);
    assert!(out.contains(&path.display().to_string()), "{out}");
    let (width, height, pixels) = decode(&path);
    assert_eq!((width, height), (1200, 760));
    // Both autoscalers' lines are there, in their colours.
    let count = |rgb: [u8; 3]| pixels.chunks(3).filter(|p| *p == rgb).count();
    assert!(count([31, 119, 180]) > 1000, "Weir's blue line");
    assert!(count([255, 127, 14]) > 1000, "the HPA's orange line");

    // `all` runs every curve; no directory: no files, the table alone.
    let out = run_simulation_command("all", None).unwrap();
    for curve in Curve::ALL {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{:<6} weir", curve.name()))),
            "{out}"
        );
    }
    assert!(!out.contains(".png"));
    let error = run_simulation_command("sawtooth", None).unwrap_err();
    assert!(error.to_string().contains("unknown curve"), "{error}");
}
