//! Translating again only what an edit touches.
//!
//! [`crate::translate::translate`] builds the config of every Service at once. At 10,000
//! services that is a whole second translation made beside the one in force for each edit of
//! one weight: the largest part of local mode's peak memory, and time spent rebuilding configs
//! that did not change. Yet a Service's config and the verdicts about it depend only on what
//! names that Service:
//! - the Service itself (its ports) and its endpoints;
//! - the TrafficSplits whose `spec.service` it is (they compete with one another only);
//! - the ResiliencePolicies whose `targetRef` is `{kind: Service, name: it}` (likewise);
//! - what the previous translation had for that Service and for those resources (the last good
//!   policy, a refused split's last good weights).
//!
//! So an edit is translated for the Services it touches ([`Touched`]: those named by the
//! resources it removed and by those it added) and the result replaces their part of the
//! previous translation ([`retranslate`]); the other Services keep their `Arc<ServiceConfig>`,
//! shared between the old translation, the new one and the snapshots made from them.
//!
//! A ResiliencePolicy whose `targetRef.kind` is not `Service` (a namespace or mesh default, or
//! a kind unknown today) may govern any Service, so its scope is unknown here: an edit of one,
//! and any edit while one exists, translates everything, as before. Correct first; a finer
//! scope can come once such policies are resolved.
//!
//! A full translation is made in chunks of [`CHUNK`] Services, each over the inputs of its
//! Services only, so the translation's working data (endpoint lists per Service, converted
//! policies) is held for a chunk at a time rather than for the whole mesh.
//!
//! One case is left as it was: two TrafficSplits of one name and namespace (which only files
//! allow: the API server keeps names unique) for two different Services. A refused one keeps
//! the weights of the first previous verdict of that name, whichever Service that verdict was
//! about, so even translating everything twice over the same inputs can move them; translated
//! again or not, such a split's kept weights are a guess either way.
//!
//! Otherwise the result equals a full translation of the same inputs against the same previous
//! translation (the property test in this module checks it over random edit sequences), verdict
//! order included: verdicts are sorted by kind, namespace, name and then Service, so that two
//! resources of the same name (in two files) keep one order whatever part they were made in.

use crate::snapshot::ServiceKey;
use crate::translate::{
    EndpointInfo, Inputs, Scope, ServiceInfo, Translation, Verdict, sort_verdicts, translate,
};
use std::collections::HashSet;
use weir_crds::{ResiliencePolicy, TrafficSplit};

/// Services translated together in a full translation.
pub const CHUNK: usize = 1_024;

/// The Services an edit touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Every Service (the first look, or a resource whose reach is not one Service).
    All,
    /// These Services only (none: nothing to translate).
    Services(HashSet<ServiceKey>),
}

impl Default for Touched {
    fn default() -> Self {
        Self::Services(HashSet::new())
    }
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Services(keys) if keys.is_empty())
    }

    pub fn all(&mut self) {
        *self = Self::All;
    }

    pub fn service(&mut self, key: &ServiceKey) {
        if let Self::Services(keys) = self
            && !keys.contains(key)
        {
            keys.insert(key.clone());
        }
    }

    pub fn split(&mut self, split: &TrafficSplit) {
        self.service(&split_service(split));
    }

    pub fn policy(&mut self, policy: &ResiliencePolicy) {
        match policy_service(policy) {
            Some(key) => self.service(&key),
            None => self.all(),
        }
    }

    pub fn merge(&mut self, other: Touched) {
        match other {
            Self::All => self.all(),
            Self::Services(keys) => {
                if let Self::Services(mine) = self {
                    mine.extend(keys);
                }
            }
        }
    }
}

/// The Service a split is about.
fn split_service(split: &TrafficSplit) -> ServiceKey {
    ServiceKey::new(
        split.metadata.namespace.as_deref().unwrap_or_default(),
        split.spec.service.as_str(),
    )
}

/// The one Service a policy governs; `None` when its reach is not one Service.
fn policy_service(policy: &ResiliencePolicy) -> Option<ServiceKey> {
    let target = &policy.spec.target_ref;
    (target.kind == "Service").then(|| {
        ServiceKey::new(
            policy.metadata.namespace.as_deref().unwrap_or_default(),
            target.name.as_str(),
        )
    })
}

/// Where the translation's inputs come from: lent in place, except the endpoints, which are
/// made for the Services asked (a source may store them more compactly than
/// [`EndpointInfo`]s: local mode keeps a Service's key once, not once per endpoint).
pub trait Source {
    /// The splits, policies and services; its `endpoints` are not read.
    fn inputs(&self) -> Inputs<'_>;
    /// The Services that have endpoints (repeats allowed).
    fn endpoint_services(&self) -> Vec<&ServiceKey>;
    /// The endpoints of the Services `wanted` accepts, in the source's order.
    fn endpoints_of(&self, wanted: &dyn Fn(&ServiceKey) -> bool) -> Vec<EndpointInfo>;
}

impl Source for Inputs<'_> {
    fn inputs(&self) -> Inputs<'_> {
        *self
    }

    fn endpoint_services(&self) -> Vec<&ServiceKey> {
        self.endpoints.iter().map(|e| &e.service).collect()
    }

    fn endpoints_of(&self, wanted: &dyn Fn(&ServiceKey) -> bool) -> Vec<EndpointInfo> {
        self.endpoints
            .iter()
            .filter(|e| wanted(&e.service))
            .cloned()
            .collect()
    }
}

/// Translates `touched` of `inputs` and puts the result in place of their part of `previous`;
/// the other Services' configs, inbound policies and verdicts are kept as they are.
/// `adjust` is applied to the splits before translation (the rollouts' canary weights), to the
/// touched ones only.
pub fn retranslate(
    source: &dyn Source,
    mut previous: Translation,
    touched: &Touched,
    adjust: &dyn Fn(&mut [TrafficSplit]),
    report: &mut dyn FnMut(&Translation, &[Verdict]),
) -> Translation {
    let inputs = &source.inputs();
    let unknown_reach = inputs.policies.iter().any(|p| policy_service(p).is_none());
    let keys = match touched {
        Touched::Services(keys) if !unknown_reach => keys,
        _ => {
            let next = if unknown_reach {
                // One translation of everything: such a policy may reach any Service.
                let mut splits = inputs.splits.to_vec();
                adjust(&mut splits);
                let endpoints = source.endpoints_of(&|_| true);
                translate(
                    &Inputs {
                        splits: &splits,
                        endpoints: &endpoints,
                        ..*inputs
                    },
                    &previous,
                )
            } else {
                full_in_chunks(source, &previous, adjust)
            };
            report(&previous, &next.verdicts);
            return next;
        }
    };
    if keys.is_empty() {
        return previous;
    }
    let part = translate_part(source, keys, &previous, adjust);
    report(&previous, &part.verdicts);
    previous.services.retain(|key, _| !keys.contains(key));
    previous.inbound.retain(|key, _| !keys.contains(key));
    previous.verdicts.retain(|v| !keys.contains(&v.service));
    previous
        .policies
        .retain(|scope, _| !matches!(scope, Scope::Service(key) if keys.contains(key)));
    previous.services.extend(part.services);
    previous.inbound.extend(part.inbound);
    previous.policies.extend(part.policies);
    previous.verdicts.extend(part.verdicts);
    sort_verdicts(&mut previous.verdicts);
    previous
}

/// Every Service, a chunk at a time, each against the unchanged `previous` (a split that moved
/// from one Service to another finds its last good weights whatever chunk had it before).
fn full_in_chunks(
    source: &dyn Source,
    previous: &Translation,
    adjust: &dyn Fn(&mut [TrafficSplit]),
) -> Translation {
    let inputs = &source.inputs();
    // Every key something names, Services that do not exist included (their splits and
    // policies get a verdict too), in a stable order.
    let mut all = std::collections::BTreeSet::new();
    all.extend(inputs.services.iter().map(|s| &s.key));
    all.extend(source.endpoint_services());
    let named: Vec<ServiceKey> = inputs
        .splits
        .iter()
        .map(split_service)
        .chain(inputs.policies.iter().filter_map(policy_service))
        .collect();
    all.extend(named.iter());
    let all: Vec<&ServiceKey> = all.into_iter().collect();
    let mut next = Translation::default();
    // Sized once: grown by doubling, the largest would keep up to twice what it holds.
    next.services.reserve(inputs.services.len());
    next.verdicts
        .reserve_exact(inputs.splits.len() + inputs.policies.len());
    for chunk in all.chunks(CHUNK) {
        let keys: HashSet<ServiceKey> = chunk.iter().map(|k| (*k).clone()).collect();
        let part = translate_part(source, &keys, previous, adjust);
        next.services.extend(part.services);
        next.inbound.extend(part.inbound);
        next.verdicts.extend(part.verdicts);
        next.policies.extend(part.policies);
    }
    next.services.shrink_to_fit();
    next.inbound.shrink_to_fit();
    next.verdicts.shrink_to_fit();
    sort_verdicts(&mut next.verdicts);
    next
}

/// The translation of `keys`' Services alone: the inputs that name them, copied (a few).
fn translate_part(
    source: &dyn Source,
    keys: &HashSet<ServiceKey>,
    previous: &Translation,
    adjust: &dyn Fn(&mut [TrafficSplit]),
) -> Translation {
    let inputs = &source.inputs();
    let mut splits: Vec<TrafficSplit> = inputs
        .splits
        .iter()
        .filter(|s| keys.contains(&split_service(s)))
        .cloned()
        .collect();
    adjust(&mut splits);
    let policies: Vec<ResiliencePolicy> = inputs
        .policies
        .iter()
        .filter(|p| policy_service(p).is_some_and(|k| keys.contains(&k)))
        .cloned()
        .collect();
    let services: Vec<ServiceInfo> = inputs
        .services
        .iter()
        .filter(|s| keys.contains(&s.key))
        .cloned()
        .collect();
    let endpoints = source.endpoints_of(&|key| keys.contains(key));
    translate(
        &Inputs {
            splits: &splits,
            policies: &policies,
            services: &services,
            endpoints: &endpoints,
            operator_namespace: inputs.operator_namespace,
        },
        previous,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::Folder;
    use proptest::prelude::*;

    /// One resource of a generated file: (kind, name, parameter, parameter).
    type Generated = (u8, u8, u8, u8);

    fn yaml(resources: &[Generated]) -> String {
        let mut text = String::new();
        for &(kind, name, a, b) in resources {
            let head = |kind: &str, name: String| {
                format!(
                    "---\napiVersion: weir.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: shop}}\n"
                )
            };
            match kind % 4 {
                // A LocalService s0..s3 (s4 never exists), routed as one or per port.
                0 => {
                    text.push_str(&head("LocalService", format!("s{}", name % 4)));
                    let endpoint = |i: u8| {
                        format!(
                            "{{address: \"127.0.0.{}:{}\", labels: {{version: v{}}}}}",
                            i + 1,
                            9000 + u16::from(a),
                            (b + i) % 2 + 1
                        )
                    };
                    let list: Vec<String> = (0..a % 3 + 1).map(endpoint).collect();
                    if b % 3 == 0 {
                        text.push_str(&format!(
                            "spec:\n  ports:\n    - {{port: 80, endpoints: [{}]}}\n    - {{port: 81, endpoints: [{}]}}\n",
                            list.join(", "),
                            list[..1].join(", ")
                        ));
                    } else {
                        text.push_str(&format!("spec:\n  endpoints: [{}]\n", list.join(", ")));
                    }
                }
                // A TrafficSplit of s0..s4 (two names each; see the module doc on names
                // shared across Services): weights that may select nothing
                // (refused, keeping its last good weights), sometimes for one port.
                1 | 2 => {
                    text.push_str(&head("TrafficSplit", format!("t{}{}", a % 5, name % 2)));
                    let port = if b % 4 == 0 { "  port: 81\n" } else { "" };
                    text.push_str(&format!(
                        "spec:\n  service: s{}\n{port}  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: {}}}\n    - {{subset: v2, selector: {{version: v{}}}, weight: {}}}\n",
                        a % 5,
                        b % 3 * 40,
                        if b % 5 == 1 { 3 } else { 2 },
                        10 + a % 2 * 20
                    ));
                }
                // A ResiliencePolicy of s0..s4 (two names each), sometimes invalid (refused, keeping
                // the last good policy), sometimes of a reach wider than a Service.
                _ => {
                    text.push_str(&head("ResiliencePolicy", format!("p{}{}", a % 5, name % 2)));
                    let kind = if b % 7 == 6 { "Namespace" } else { "Service" };
                    let timeout = if b % 3 == 1 {
                        "soon".to_owned()
                    } else {
                        format!("{}s", a + 1)
                    };
                    text.push_str(&format!(
                        "spec:\n  targetRef: {{kind: {kind}, name: s{}}}\n  timeouts: {{request: {timeout}}}\n  rateLimit: {{requestsPerSecond: {}, burst: 1}}\n",
                        a % 5,
                        u32::from(b) + 1
                    ));
                }
            }
        }
        text
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, Option<Vec<Generated>>)>> {
        proptest::collection::vec(
            (
                0..3usize,
                proptest::option::weighted(
                    0.85,
                    proptest::collection::vec((0..4u8, 0..5u8, 0..5u8, 0..8u8), 0..5),
                ),
            ),
            1..10,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Whatever the edits, translating only what each touches gives what translating
        /// everything gives, against the same history.
        #[test]
        fn an_incremental_translation_equals_a_full_one(edits in edits()) {
            let dir = tempfile::tempdir().unwrap();
            let mut folder = Folder::default();
            let mut incremental = Translation::default();
            let mut full = Translation::default();
            let mut first = true;
            for (file, content) in edits {
                let path = dir.path().join(format!("f{file}.yaml"));
                match content {
                    Some(resources) => {
                        // A new inode each time, as editors save: the folder sees every edit.
                        let tmp = path.with_extension("tmp");
                        std::fs::write(&tmp, yaml(&resources)).unwrap();
                        std::fs::rename(&tmp, &path).unwrap();
                    }
                    None => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                folder.refresh(dir.path());
                let mut touched = folder.take_touched();
                if first {
                    touched = Touched::All;
                    first = false;
                }
                let endpoints = folder.endpoints();
                full = translate(&Inputs { endpoints: &endpoints, ..folder.inputs() }, &full);
                incremental = retranslate(
                    &folder,
                    incremental,
                    &touched,
                    &|_| {},
                    &mut |_, _| {},
                );
                prop_assert_eq!(&incremental, &full);
            }
        }
    }

    fn service_file(names: std::ops::Range<usize>, weight: u32) -> String {
        names
            .map(|i| {
                format!(
                    "---\napiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {{name: s{i}, namespace: shop}}\n\
                     spec:\n  endpoints: [{{address: \"127.0.0.1:9001\", labels: {{version: v1}}}}, {{address: \"127.0.0.2:9001\", labels: {{version: v2}}}}]\n\
                     ---\napiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: s{i}, namespace: shop}}\n\
                     spec:\n  service: s{i}\n  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: {weight}}}\n    - {{subset: v2, selector: {{version: v2}}, weight: 10}}\n"
                )
            })
            .collect()
    }

    #[test]
    fn an_edit_translates_its_services_and_shares_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service_file(0..3, 90)).unwrap();
        std::fs::write(dir.path().join("b.yaml"), service_file(3..2000, 90)).unwrap();
        let mut folder = Folder::default();
        folder.refresh(dir.path());
        folder.take_touched();
        let mut judged = 0;
        let before = retranslate(
            &folder,
            Translation::default(),
            &Touched::All,
            &|_| {},
            &mut |_, made| judged += made.len(),
        );
        assert_eq!(before.services.len(), 2000, "{:?}", before.verdicts.first());
        assert_eq!(judged, 2000);
        assert!(before.verdicts.iter().all(|v| v.accepted.is_ok()));

        std::fs::write(dir.path().join("a.yaml"), service_file(0..3, 70)).unwrap();
        assert!(folder.refresh(dir.path()));
        let touched = folder.take_touched();
        assert_eq!(
            touched,
            Touched::Services(
                (0..3)
                    .map(|i| ServiceKey::new("shop", format!("s{i}")))
                    .collect()
            )
        );
        let mut judged = 0;
        let after = retranslate(
            &folder,
            before.clone(),
            &touched,
            &|_| {},
            &mut |_, made| judged += made.len(),
        );
        assert_eq!(judged, 3, "the three splits of the edited file only");
        let endpoints = folder.endpoints();
        let full = translate(
            &Inputs {
                endpoints: &endpoints,
                ..folder.inputs()
            },
            &before,
        );
        assert_eq!(after, full);
        for (key, config) in &after.services {
            let shared = std::sync::Arc::ptr_eq(config, &before.services[key]);
            let edited = ["s0", "s1", "s2"].contains(&key.name.as_str());
            assert_eq!(shared, !edited, "{key}");
        }
        assert_eq!(
            after.services[&ServiceKey::new("shop", "s0")].subsets[0].weight,
            70
        );
    }
}
