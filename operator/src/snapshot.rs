//! What the control plane serves at one moment: every service's outbound config and every
//! service's inbound policy, each with the version at which its content last changed.
//!
//! The sources (Kubernetes, local files) translate resources into a [`Snapshot`] and publish it
//! on a `tokio::sync::watch` channel; the config API serves each proxy the parts it names.
//! Versions come from one counter per process and only move for resources whose content
//! changed, so a weight edit is pushed to the callers of that one service and nobody else.

use std::collections::HashMap;
use std::sync::Arc;
use weir_proxy_api::{InboundPolicy, ServiceConfig};

/// A service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// A piece of config and the version at which it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: Arc<T>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The highest version of any piece; bumps with every published change.
    pub version: u64,
    /// When the source observed the change this snapshot publishes (the watch event or file
    /// change that started its translation): where `weir_config_push_seconds` starts. `None`
    /// counts from when the config API sees the snapshot.
    pub observed: Option<tokio::time::Instant>,
    pub services: HashMap<ServiceKey, Versioned<ServiceConfig>>,
    /// Inbound policy per service; a service without one gets the empty policy.
    pub inbound: HashMap<ServiceKey, Versioned<InboundPolicy>>,
}

impl Snapshot {
    /// An empty snapshot whose versions continue from the wall clock in milliseconds, so that a
    /// restarted operator never reuses a version a proxy still holds from the previous process
    /// (which would leave that proxy on old content until the next change).
    pub fn starting_now() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            version: millis,
            ..Self::default()
        }
    }

    /// The next snapshot: `services` and `inbound` as computed now, with versions kept for the
    /// pieces whose content is unchanged and the next version for the rest. Returns `None`
    /// when nothing changed (nothing to push). Its `observed` is for the caller to set.
    /// `services` may hold plain configs or shared ones (`Arc`, as a translation holds them: the
    /// snapshot then shares them rather than copying).
    pub fn next<S>(
        &self,
        services: &HashMap<ServiceKey, S>,
        inbound: &HashMap<ServiceKey, InboundPolicy>,
    ) -> Option<Self>
    where
        S: std::borrow::Borrow<ServiceConfig> + Clone + Into<Arc<ServiceConfig>>,
    {
        let version = self.version + 1;
        let mut changed =
            services.len() != self.services.len() || inbound.len() != self.inbound.len();
        // Unchanged pieces keep their Arc: only what changed is copied.
        let services = services
            .iter()
            .map(|(key, value)| {
                let piece = match self.services.get(key) {
                    // The same allocation (a config the translation kept) is equal at once.
                    Some(old)
                        if std::ptr::eq(&*old.value, value.borrow())
                            || *old.value == *value.borrow() =>
                    {
                        old.clone()
                    }
                    _ => {
                        changed = true;
                        Versioned {
                            version,
                            value: value.clone().into(),
                        }
                    }
                };
                (key.clone(), piece)
            })
            .collect();
        let inbound = inbound
            .iter()
            .map(|(key, value)| {
                let piece = match self.inbound.get(key) {
                    Some(old) if *old.value == *value => old.clone(),
                    _ => {
                        changed = true;
                        Versioned {
                            version,
                            value: Arc::new(value.clone()),
                        }
                    }
                };
                (key.clone(), piece)
            })
            .collect();
        changed.then_some(Self {
            version,
            observed: None,
            services,
            inbound,
        })
    }

    /// Points each config of `services` equal to this snapshot's at the snapshot's own, so a
    /// translation kept beside its snapshot holds every config once. (The snapshot keeps the
    /// previous allocation of a config translated again unchanged, and the translation would
    /// otherwise keep the new one.)
    pub fn share_configs(&self, services: &mut HashMap<ServiceKey, Arc<ServiceConfig>>) {
        for (key, config) in services.iter_mut() {
            if let Some(held) = self.services.get(key)
                && !Arc::ptr_eq(&held.value, config)
                && held.value == *config
            {
                *config = held.value.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, weight: u32) -> Arc<ServiceConfig> {
        Arc::new(ServiceConfig {
            name: name.into(),
            namespace: "shop".into(),
            addresses: Vec::new(),
            subsets: vec![weir_proxy_api::Subset {
                name: "default".into(),
                weight,
                endpoints: Vec::new(),
            }],
            rules: Vec::new(),
            ports: Vec::new(),
            policy: Default::default(),
        })
    }

    #[test]
    fn a_translation_kept_beside_its_snapshot_holds_each_config_once() {
        let key = |name: &str| ServiceKey::new("shop", name);
        let mut translation = HashMap::from([
            (key("orders"), config("orders", 1)),
            (key("payments"), config("payments", 1)),
        ]);
        let first = Snapshot::default()
            .next(&translation, &HashMap::new())
            .unwrap();
        assert!(Arc::ptr_eq(
            &first.services[&key("orders")].value,
            &translation[&key("orders")]
        ));
        // Translated again: orders unchanged (a new allocation of equal content), payments
        // edited.
        translation.insert(key("orders"), config("orders", 1));
        translation.insert(key("payments"), config("payments", 2));
        let second = first.next(&translation, &HashMap::new()).unwrap();
        let orders = &second.services[&key("orders")];
        assert_eq!(orders.version, first.services[&key("orders")].version);
        assert!(!Arc::ptr_eq(&orders.value, &translation[&key("orders")]));
        second.share_configs(&mut translation);
        for name in ["orders", "payments"] {
            assert!(Arc::ptr_eq(
                &second.services[&key(name)].value,
                &translation[&key(name)]
            ));
        }
        assert_eq!(translation[&key("payments")].subsets[0].weight, 2);
        // Shared, they are equal at once: nothing changed, nothing to publish.
        assert_eq!(second.next(&translation, &HashMap::new()), None);
    }
}
