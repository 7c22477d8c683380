//! `weir-operator simulate-autoscaler`: the simulation's table and charts, or — in a binary built
//! without the `simulation` feature (the operator image) — an error that says how to get them.
//! It sits above `simulate` and `plot` so that neither needs the other's caller: `plot` draws
//! what `simulate` computed.

use std::path::Path;

/// What `weir-operator simulate-autoscaler` does: runs `curve` (a name or `all`) through both
/// autoscalers, writes one PNG per curve into `out_dir` when given, and returns the text to
/// print (the table, the legend of the charts, the files written).
#[cfg(feature = "simulation")]
pub fn run_simulation_command(curve: &str, out_dir: Option<&Path>) -> anyhow::Result<String> {
    use super::plot;
    use super::simulate::{Comparison, Curve, Scenario, chart_path, table};
    use std::fmt::Write as _;

    let curves: Vec<Curve> = if curve == "all" {
        Curve::ALL.to_vec()
    } else {
        vec![Curve::parse(curve).ok_or_else(|| {
            anyhow::anyhow!("unknown curve `{curve}`: step, ramp, spike, sine, noisy or all")
        })?]
    };
    let scenario = Scenario::default();
    let comparisons: Vec<Comparison> = curves
        .iter()
        .map(|c| Comparison::run(*c, &scenario))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Weir (sidecar in-flight every {} s, 20 s stable / 6 s panic window) vs a plain HPA \
         ({} s sync, {} s metrics, 300 s scale-down window); both: target {} in flight per pod, \
         {}–{} replicas, pods Ready {} s after creation, the HPA's default behavior.\n",
        scenario.weir_interval,
        scenario.hpa_sync,
        scenario.metrics_resolution,
        scenario.target,
        scenario.min_replicas,
        scenario.max_replicas,
        scenario.startup
    );
    out.push_str(&table(&comparisons));
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let _ = writeln!(
            out,
            "\nCharts (top: load in flight; bottom: pods — grey: needed, blue: Weir, orange: HPA; \
             thin: Ready pods):"
        );
        for comparison in &comparisons {
            let path = chart_path(dir, comparison.curve);
            plot::draw(comparison, &path)?;
            let _ = writeln!(out, "  {}", path.display());
        }
    }
    Ok(out)
}

/// Built without the `simulation` feature: the simulation, its charts and their PNG encoder are
/// not in this binary.
#[cfg(not(feature = "simulation"))]
pub fn run_simulation_command(curve: &str, out_dir: Option<&Path>) -> anyhow::Result<String> {
    let _ = (curve, out_dir);
    anyhow::bail!(
        "this weir-operator was built without the `simulation` feature (the operator image \
         leaves it out); build it with the default features, e.g. \
         `cargo run -p weir-operator -- simulate-autoscaler`, or add `--features simulation`"
    )
}

#[cfg(all(test, not(feature = "simulation")))]
mod tests {
    #[test]
    fn without_the_feature_the_command_says_how_to_get_it() {
        let error = super::run_simulation_command("all", None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("without the `simulation` feature") && error.contains("--features"),
            "{error}"
        );
    }
}
