//! `weir-operator local --dir DIR`: the control plane fed by YAML files instead of the
//! Kubernetes API.
//!
//! Every `*.yaml`/`*.yml` under DIR (multi-document allowed) may hold TrafficSplit,
//! ResiliencePolicy, Autoscaler and LocalService resources; LocalServices say where each
//! service's endpoints are. The folder is polled every 250 ms (size, modification time and inode
//! of each file, then its bytes) rather than watched with inotify: polling sees editors'
//! rename-on-save, deleted and new files alike with no extra crate, and an edit is live well
//! within the 1 s the design asks for. A file that does not parse or validate is reported (file,
//! document, field) and the last good resources of that file stay in force. Each look (reading,
//! parsing, translating) runs on tokio's blocking pool, so a huge or pathological file never
//! stalls the async threads that serve the admin listener and the config API.
//!
//! [`run`] publishes two things: the config snapshot the config API serves, and the resources it
//! was translated from (a `watch` of [`Resources`]), which the local Autoscaler loop
//! ([`crate::autoscaler::local`]) reads: an endpoint's optional `admin` address is where that
//! loop scrapes the sidecar's `/metrics` (without it, the sidecar connected to the config API
//! whose inbound listener is the endpoint's address is scraped), and the Autoscalers' desired
//! counts are served on the admin listener's `/autoscalers` for whoever starts and stops the
//! instances. The same channel carries the TrafficSplits with an analysis to the rollout loop
//! ([`crate::analysis::local`]), whose canary weights come back on [`crate::admin::StatusFeeds`]
//! and are applied to the splits before each translation (a weight change alone translates
//! again); the verdicts of each translation go out the same way, for the admin's `/status`.
//!
//! Layout: `documents` parses a file's documents into [`Resources`] (refusals name file,
//! document and field); `services` turns LocalServices into the translation's services and
//! endpoints; `folder` reads the folder (what changed since the last look) and keeps every file's
//! last good resources, stored once ([`Folder`]); `control` is the loop that looks at the folder,
//! translates what changed and publishes the snapshot, the loaded resources and the verdicts
//! (for `/status`). Tests are in `tests`.

mod control;
mod documents;
mod folder;
mod services;
#[cfg(test)]
mod tests;

pub use control::run;
pub use documents::{FileError, parse_file};
pub(crate) use folder::collect_yaml;
pub use folder::{Folder, autoscaling_inputs, inputs_of};
pub use services::services_and_endpoints;

use weir_crds::{Autoscaler, LocalService, ResiliencePolicy, TrafficSplit};

/// The resources of one file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Resources {
    pub splits: Vec<TrafficSplit>,
    pub policies: Vec<ResiliencePolicy>,
    pub autoscalers: Vec<Autoscaler>,
    pub local_services: Vec<LocalService>,
}
