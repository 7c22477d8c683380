//! The run's own mesh folder (`DATA/mesh`), the one the control plane reads in local mode.
//!
//! The launcher rewrites the file that holds the orders LocalService there, from the source
//! file with the endpoints replaced, whenever the instances or the source change (see
//! [`super::scaling`]). The other files are links to the source folder (a plain run, so editing
//! `examples/shop/mesh/payments-split.yaml` still moves the canary) or copies of it (a
//! scenario, which edits them itself).
//!
//! The documents are edited as untyped JSON values: only the orders endpoints change, and every
//! other field (even one the CRD types would not know) is written back as it was. Keys come back
//! sorted and comments are dropped; what the control plane reads is the same.

use super::topology::{self, Instance, ORDERS};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The mesh file with the orders Autoscaler: left out of the scenarios' mesh copies but the
/// autoscale one, so the other stories run with one orders instance as they were written.
pub(super) const AUTOSCALER_FILE: &str = "autoscaler.yaml";

/// `text` (a mesh file, multi-document YAML) with the endpoints of the orders LocalService
/// replaced by `instances` (their sidecars' inbound listeners, with their admin listeners for
/// the autoscaler); `None` when the file holds no such LocalService. Other documents are kept
/// as they are (their comments are not).
pub fn with_orders_endpoints(text: &str, instances: &[Instance]) -> Result<Option<String>> {
    let mut documents: Vec<Value> = serde_saphyr::from_multiple(text)?;
    documents.retain(|document| !document.is_null());
    let mut found = false;
    for document in &mut documents {
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(&*document, |v, key| v.get(*key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        if field(&["kind"]).as_deref() != Some("LocalService") {
            continue;
        }
        let is_orders = field(&["metadata", "name"]).as_deref() == Some(ORDERS.service)
            && field(&["metadata", "namespace"]).is_none_or(|ns| ns == topology::NAMESPACE);
        if !is_orders {
            move_ports(document, topology::port_base());
            continue;
        }
        found = true;
        let spec = document
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .context("the orders LocalService has no spec")?;
        // The labels the source gives its first endpoint go to every instance.
        let labels = spec
            .get("endpoints")
            .and_then(|e| e.get(0))
            .and_then(|e| e.get("labels"))
            .cloned()
            .unwrap_or_else(|| json!({"app": "orders", "version": "v1"}));
        let endpoints = instances
            .iter()
            .map(|i| {
                json!({
                    "address": i.inbound_addr().to_string(),
                    "admin": i.admin_addr().to_string(),
                    "labels": labels,
                })
            })
            .collect();
        spec.insert("endpoints".into(), Value::Array(endpoints));
    }
    if !found {
        return Ok(None);
    }
    let mut out = String::from(
        "# Written by `weir-shop demo`: the orders LocalService lists the orders instances that\n\
         # run and are ready now; the other documents are as in the source mesh folder.\n",
    );
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(document)?);
    }
    Ok(Some(out))
}

/// Moves the endpoint addresses of a LocalService that are in the demo's table (loopback, ports
/// 18000–18328) to `base` (`--port-base`); other addresses stay as they are.
fn move_ports(local_service: &mut Value, base: u16) {
    let Some(endpoints) = local_service
        .get_mut("spec")
        .and_then(|s| s.get_mut("endpoints"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let table = topology::DEFAULT_PORT_BASE..=topology::DEFAULT_PORT_BASE + topology::PORT_SPAN;
    for endpoint in endpoints {
        for key in ["address", "admin"] {
            let Some(text) = endpoint.get(key).and_then(|a| a.as_str()) else {
                continue;
            };
            let Ok(mut addr) = text.parse::<std::net::SocketAddr>() else {
                continue;
            };
            if addr.ip().is_loopback() && table.contains(&addr.port()) {
                addr.set_port(addr.port() - topology::DEFAULT_PORT_BASE + base);
                endpoint[key] = addr.to_string().into();
            }
        }
    }
}

/// The first YAML file of `dir` (sorted by name) that holds the orders LocalService.
fn orders_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files.into_iter().find(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|text| with_orders_endpoints(&text, &[ORDERS]).ok().flatten())
            .is_some()
    })
}

/// How the run's mesh folder refers to the source's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MeshFiles {
    /// Symbolic links: edits of the source apply to the run (a plain run).
    Link,
    /// Copies the run edits itself (a scenario); `autoscale` keeps the Autoscaler file.
    Copy { autoscale: bool },
}

/// Fills `run` (emptied first) from `source`: every YAML file linked or copied, but the one
/// holding the orders LocalService, which is written with replica 1 as its only endpoint.
/// Returns the source and run paths of that file, when there is one.
pub(super) fn prepare_mesh(
    source: &Path,
    run: &Path,
    files: MeshFiles,
) -> Result<Option<(PathBuf, PathBuf)>> {
    if run.exists() {
        std::fs::remove_dir_all(run).with_context(|| format!("emptying {}", run.display()))?;
    }
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let orders = orders_file(source);
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let name = path.file_name().context("a file has a name")?;
        let target = run.join(name);
        if Some(&path) == orders.as_ref() {
            continue;
        }
        match files {
            MeshFiles::Link => std::os::unix::fs::symlink(&path, &target)
                .with_context(|| format!("linking {}", target.display()))?,
            MeshFiles::Copy { autoscale } => {
                if !autoscale && name == AUTOSCALER_FILE {
                    continue;
                }
                std::fs::copy(&path, &target)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    let Some(source_file) = orders else {
        return Ok(None);
    };
    let run_file = run.join(source_file.file_name().context("a file has a name")?);
    write_orders_file(&source_file, &run_file, &[ORDERS])?;
    Ok(Some((source_file, run_file)))
}

/// Keeps a linked run folder in step with its source: links files added to the source since
/// (they take effect as they would in the source folder itself) and removes links whose file
/// is gone. The file with the orders LocalService is the launcher's own and left alone.
pub(super) fn sync_links(source: &Path, run: &Path, orders_file: Option<&Path>) -> Result<()> {
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            || Some(path.as_path()) == orders_file
        {
            continue;
        }
        let target = run.join(path.file_name().context("a file has a name")?);
        if std::fs::symlink_metadata(&target).is_err() {
            std::os::unix::fs::symlink(&path, &target)
                .with_context(|| format!("linking {}", target.display()))?;
        }
    }
    for entry in std::fs::read_dir(run)? {
        let path = entry?.path();
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && std::fs::metadata(&path).is_err() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes `run_file` from `source_file` with `instances` as the orders endpoints, atomically
/// (a temporary file renamed over it), so the control plane never reads half a file.
pub(super) fn write_orders_file(
    source_file: &Path,
    run_file: &Path,
    instances: &[Instance],
) -> Result<()> {
    let text = std::fs::read_to_string(source_file)
        .with_context(|| format!("reading {}", source_file.display()))?;
    let Some(out) = with_orders_endpoints(&text, instances)
        .with_context(|| format!("{} does not parse", source_file.display()))?
    else {
        bail!(
            "{} no longer holds the orders LocalService",
            source_file.display()
        );
    };
    // Not `.yaml`: the control plane reads only those.
    let temporary = run_file.with_extension("yaml.tmp");
    std::fs::write(&temporary, out)?;
    std::fs::rename(&temporary, run_file)?;
    Ok(())
}

#[cfg(test)]
mod tests;
