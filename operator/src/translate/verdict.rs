//! The verdict on each resource a translation judged: accepted, or refused with a reason (what
//! `Accepted` says in its status), in one order, and logged when it changes.

use crate::snapshot::ServiceKey;

/// Which kind of resource a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    TrafficSplit,
    ResiliencePolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrafficSplit => "TrafficSplit",
            Self::ResiliencePolicy => "ResiliencePolicy",
        }
    }
}

/// Why a resource was refused: a CamelCase reason for the condition and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
}

/// The verdict on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The Service it is about (the split's `service`, the policy's `targetRef`); for a
    /// Namespace policy its namespace with no name; for a Mesh policy in the operator's
    /// namespace neither (see [`Verdict::reaches`]).
    pub service: ServiceKey,
    /// The object's uid: a split deleted and created again under its name starts afresh.
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub accepted: Result<(), Refused>,
    /// TrafficSplit only: the weights in force as a `v1=90,v2=10` summary (the spec's when
    /// accepted, the last good ones while refused, `None` when the split routes nothing). What
    /// `status.weights` records, and what a refusal keeps.
    pub weights: Option<String>,
    /// TrafficSplit only: the ready endpoints each of the spec's backends selects now.
    pub backends: Vec<(String, i32)>,
    /// ResiliencePolicy only: what `Accepted=True` says instead of the plain message (how many
    /// Services a Namespace or Mesh policy gives defaults to).
    pub message: Option<String>,
    /// ResiliencePolicy only: its rate limit and bulkhead across the pods they are in force on
    /// (`status.effectiveLimits`).
    pub effective_limits: Option<String>,
}

impl Verdict {
    /// Whether this verdict's resource governs calls to `service`: its own Service, or, for a
    /// ResiliencePolicy with defaults, every Service of its namespace or of the mesh.
    pub fn reaches(&self, service: &ServiceKey) -> bool {
        match (
            self.service.namespace.is_empty(),
            self.service.name.is_empty(),
        ) {
            (true, true) => true,
            (false, true) => service.namespace == self.service.namespace,
            _ => &self.service == service,
        }
    }

    /// Whether it is about many Services (a Namespace or Mesh ResiliencePolicy).
    pub fn is_default(&self) -> bool {
        self.service.name.is_empty()
    }
}

/// Verdicts in their one order: by kind, namespace and name (what a status lookup searches by),
/// then by the Service they are about, so that two resources of one name (in two files) keep
/// one order however the translation was put together ([`crate::incremental`]).
/// The rest of the fields break the remaining ties, so only equal verdicts compare equal and an
/// unstable sort (no scratch copy of 20,000 verdicts) gives one order.
pub fn sort_verdicts(verdicts: &mut [Verdict]) {
    fn key(v: &Verdict) -> impl Ord + '_ {
        (
            (v.kind, &v.namespace, &v.name, &v.service),
            (&v.uid, v.generation, &v.weights, &v.backends),
            v.accepted.as_ref().err().map(|r| (r.reason, &r.message)),
            (&v.message, &v.effective_limits),
        )
    }
    verdicts.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
}

pub(crate) fn refused(reason: &'static str, message: String) -> Refused {
    Refused { reason, message }
}

/// Logs each verdict of `made` that is new or changed since `previous` (both in the order of
/// [`sort_verdicts`], so each old verdict is found by binary search): one line per resource
/// accepted, and a warning naming the reason for each refused.
pub fn report_verdicts(previous: &[Verdict], made: &[Verdict]) {
    for verdict in made {
        let old = previous
            .binary_search_by(|v| {
                (v.kind, &v.namespace, &v.name).cmp(&(
                    verdict.kind,
                    &verdict.namespace,
                    &verdict.name,
                ))
            })
            .ok()
            .map(|i| &previous[i]);
        if old == Some(verdict) {
            continue;
        }
        match &verdict.accepted {
            Ok(()) => tracing::info!(
                kind = verdict.kind.as_str(),
                namespace = %verdict.namespace,
                name = %verdict.name,
                generation = verdict.generation,
                "accepted"
            ),
            Err(refused) => tracing::warn!(
                kind = verdict.kind.as_str(),
                namespace = %verdict.namespace,
                name = %verdict.name,
                generation = verdict.generation,
                reason = refused.reason,
                message = %refused.message,
                "not accepted; the last good config stays in force"
            ),
        }
    }
}
