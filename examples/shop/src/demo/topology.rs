//! The processes of the local shop and their loopback addresses: the table of the shop's
//! README ("Processes and addresses"), which the mesh files in `examples/shop/mesh` name too.
//!
//! The table holds the default ports, 18000 to 18328 and the control plane's 18010/18011.
//! `--port-base N` (`WEIR_DEMO_PORT_BASE`) moves every one of them by `N - 18000`: the methods
//! here apply the move, and the launcher moves the addresses of the run's copy of the mesh's
//! LocalServices the same way, so two demos (or two tests) can run side by side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};

/// The default base: the first port of the table.
pub const DEFAULT_PORT_BASE: u16 = 18000;
/// The highest port of the table, minus the base: a base must leave room for it.
pub const PORT_SPAN: u16 = 328;

static PORT_BASE: AtomicU16 = AtomicU16::new(DEFAULT_PORT_BASE);

/// Moves every address of the table to start at `base`; refused when a port would fall out of
/// 1024–65535.
pub fn set_port_base(base: u16) -> Result<(), String> {
    PORT_BASE.store(check_port_base(base)?, Ordering::Relaxed);
    Ok(())
}

/// `base` when every port of the table moved there is in 1024–65535.
pub fn check_port_base(base: u16) -> Result<u16, String> {
    if !(1024..=u16::MAX - PORT_SPAN).contains(&base) {
        return Err(format!(
            "--port-base {base}: the demo uses ports base to base+{PORT_SPAN}, so the base must \
             be between 1024 and {}",
            u16::MAX - PORT_SPAN
        ));
    }
    Ok(base)
}

pub fn port_base() -> u16 {
    PORT_BASE.load(Ordering::Relaxed)
}

/// An address of the table (`127.0.0.1:18001`), moved to the current base.
pub fn addr(table: &str) -> SocketAddr {
    addr_at(table, port_base())
}

/// An address of the table moved to `base`.
fn addr_at(table: &str, base: u16) -> SocketAddr {
    let mut a = parse(table);
    a.set_port(a.port() - DEFAULT_PORT_BASE + base);
    a
}

/// The control plane's config API (`weir-operator local --listen`).
pub fn control_plane() -> SocketAddr {
    addr(CONTROL_PLANE)
}

/// The control plane's admin listener (`/ready`, `/metrics`, `/proxies`, `/status`).
pub fn control_plane_admin() -> SocketAddr {
    addr(CONTROL_PLANE_ADMIN)
}

/// Namespace of every service, as in the mesh files.
pub const NAMESPACE: &str = "shop";

/// The control plane's config API at the default base.
const CONTROL_PLANE: &str = "127.0.0.1:18010";
/// The control plane's admin listener at the default base.
const CONTROL_PLANE_ADMIN: &str = "127.0.0.1:18011";

/// One running copy of a service: its app and the sidecar beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// The service name (`--service` of the sidecar, the mesh's LocalService name).
    pub service: &'static str,
    /// `v2` for the payments canary; `None` runs the service's default build (v1).
    pub variant: Option<&'static str>,
    /// 1 for the instance every run starts; 2 and up for the orders instances the autoscaler
    /// adds ([`ORDERS_REPLICAS`]).
    pub replica: u8,
    /// Where the app listens (at the default base: use the `_addr` methods).
    pub app: &'static str,
    /// The sidecar's inbound listener: what callers' sidecars send to.
    pub inbound: &'static str,
    /// The sidecar's outbound listener: where the app sends its calls.
    pub outbound: &'static str,
    /// The sidecar's admin listener (`/metrics`, `/ready`, `/config`).
    pub admin: &'static str,
}

impl Instance {
    /// `payments v2`, `orders`: how the dashboard and error messages name it.
    pub fn label(&self) -> String {
        let name = match (self.service, self.variant) {
            ("payments", None) => "payments v1".to_owned(),
            (s, Some(v)) => format!("{s} {v}"),
            (s, None) => s.to_owned(),
        };
        match self.replica {
            1 => name,
            n => format!("{name} #{n}"),
        }
    }

    /// A file-name friendly label: `payments-v2`.
    pub fn slug(&self) -> String {
        self.label().replace(" #", "-").replace(' ', "-")
    }

    /// The pod name its sidecar reports to the control plane.
    pub fn pod(&self) -> String {
        let pod = format!("{}-{}", self.service, self.variant.unwrap_or("v1"));
        match self.replica {
            1 => pod,
            n => format!("{pod}-{n}"),
        }
    }

    pub fn app_addr(&self) -> SocketAddr {
        addr(self.app)
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        addr(self.inbound)
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        addr(self.outbound)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        addr(self.admin)
    }
}

pub fn parse(addr: &str) -> SocketAddr {
    addr.parse().expect("the topology's addresses are valid")
}

pub const GATEWAY: Instance = Instance {
    service: "gateway",
    variant: None,
    replica: 1,
    app: "127.0.0.1:18000",
    inbound: "127.0.0.1:18100",
    outbound: "127.0.0.1:18200",
    admin: "127.0.0.1:18300",
};
pub const ORDERS: Instance = Instance {
    service: "orders",
    variant: None,
    replica: 1,
    app: "127.0.0.1:18001",
    inbound: "127.0.0.1:18101",
    outbound: "127.0.0.1:18201",
    admin: "127.0.0.1:18301",
};
pub const INVENTORY: Instance = Instance {
    service: "inventory",
    variant: None,
    replica: 1,
    app: "127.0.0.1:18002",
    inbound: "127.0.0.1:18102",
    outbound: "127.0.0.1:18202",
    admin: "127.0.0.1:18302",
};
pub const PAYMENTS_V1: Instance = Instance {
    service: "payments",
    variant: None,
    replica: 1,
    app: "127.0.0.1:18003",
    inbound: "127.0.0.1:18103",
    outbound: "127.0.0.1:18203",
    admin: "127.0.0.1:18303",
};
pub const PAYMENTS_V2: Instance = Instance {
    service: "payments",
    variant: Some("v2"),
    replica: 1,
    app: "127.0.0.1:18004",
    inbound: "127.0.0.1:18104",
    outbound: "127.0.0.1:18204",
    admin: "127.0.0.1:18304",
};
pub const SHIPPING: Instance = Instance {
    service: "shipping",
    variant: None,
    replica: 1,
    app: "127.0.0.1:18005",
    inbound: "127.0.0.1:18105",
    outbound: "127.0.0.1:18205",
    admin: "127.0.0.1:18305",
};

/// Every instance, in the order they are shown (and started: callees first is not needed, since
/// each call waits for its target's sidecar to know the service).
pub const INSTANCES: [Instance; 6] = [
    GATEWAY,
    ORDERS,
    INVENTORY,
    PAYMENTS_V1,
    PAYMENTS_V2,
    SHIPPING,
];

/// The most orders instances a run starts (the autoscaler's `maxReplicas` is capped here):
/// the fixed addresses below hold this many.
pub const MAX_ORDERS_REPLICAS: usize = 8;

/// The orders instances the autoscaler may add beside [`ORDERS`] (replica 1): replica `n` listens
/// on `1802n` (app), `1812n` (inbound), `1822n` (outbound) and `1832n` (admin).
pub const ORDERS_REPLICAS: [Instance; MAX_ORDERS_REPLICAS - 1] = [
    Instance {
        service: "orders",
        variant: None,
        replica: 2,
        app: "127.0.0.1:18022",
        inbound: "127.0.0.1:18122",
        outbound: "127.0.0.1:18222",
        admin: "127.0.0.1:18322",
    },
    Instance {
        service: "orders",
        variant: None,
        replica: 3,
        app: "127.0.0.1:18023",
        inbound: "127.0.0.1:18123",
        outbound: "127.0.0.1:18223",
        admin: "127.0.0.1:18323",
    },
    Instance {
        service: "orders",
        variant: None,
        replica: 4,
        app: "127.0.0.1:18024",
        inbound: "127.0.0.1:18124",
        outbound: "127.0.0.1:18224",
        admin: "127.0.0.1:18324",
    },
    Instance {
        service: "orders",
        variant: None,
        replica: 5,
        app: "127.0.0.1:18025",
        inbound: "127.0.0.1:18125",
        outbound: "127.0.0.1:18225",
        admin: "127.0.0.1:18325",
    },
    Instance {
        service: "orders",
        variant: None,
        replica: 6,
        app: "127.0.0.1:18026",
        inbound: "127.0.0.1:18126",
        outbound: "127.0.0.1:18226",
        admin: "127.0.0.1:18326",
    },
    Instance {
        service: "orders",
        variant: None,
        replica: 7,
        app: "127.0.0.1:18027",
        inbound: "127.0.0.1:18127",
        outbound: "127.0.0.1:18227",
        admin: "127.0.0.1:18327",
    },
    Instance {
        service: "orders",
        variant: None,
        replica: 8,
        app: "127.0.0.1:18028",
        inbound: "127.0.0.1:18128",
        outbound: "127.0.0.1:18228",
        admin: "127.0.0.1:18328",
    },
];

/// Orders replica `n` (1-based): [`ORDERS`] or one of [`ORDERS_REPLICAS`].
pub fn orders_replica(n: usize) -> Option<Instance> {
    match n {
        1 => Some(ORDERS),
        n => ORDERS_REPLICAS.get(n.checked_sub(2)?).copied(),
    }
}

/// Every fixed address, with what uses it, for the check that nothing else holds one.
pub fn all_addresses() -> Vec<(String, SocketAddr)> {
    all_addresses_at(port_base())
}

fn all_addresses_at(base: u16) -> Vec<(String, SocketAddr)> {
    let mut out = vec![
        ("control plane".to_owned(), addr_at(CONTROL_PLANE, base)),
        (
            "control plane admin".to_owned(),
            addr_at(CONTROL_PLANE_ADMIN, base),
        ),
    ];
    for i in INSTANCES.iter().chain(&ORDERS_REPLICAS) {
        let l = i.label();
        out.push((format!("{l} app"), addr_at(i.app, base)));
        out.push((format!("{l} sidecar inbound"), addr_at(i.inbound, base)));
        out.push((format!("{l} sidecar outbound"), addr_at(i.outbound, base)));
        out.push((format!("{l} sidecar admin"), addr_at(i.admin, base)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct() {
        let all = all_addresses();
        let mut addrs: Vec<_> = all.iter().map(|(_, a)| *a).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), all.len());
    }

    #[test]
    fn the_port_base_moves_every_address() {
        let before = all_addresses_at(DEFAULT_PORT_BASE);
        assert_eq!(
            before.iter().map(|(_, a)| a.port()).max(),
            Some(DEFAULT_PORT_BASE + PORT_SPAN)
        );
        assert_eq!(
            before.iter().map(|(_, a)| a.port()).min(),
            Some(DEFAULT_PORT_BASE)
        );
        let after = all_addresses_at(21000);
        assert_eq!(before.len(), after.len());
        for ((what, b), (_, a)) in before.iter().zip(&after) {
            assert_eq!(a.port(), b.port() + 3000, "{what}");
            assert_eq!(a.ip(), b.ip(), "{what}");
        }
        assert!(
            check_port_base(80)
                .unwrap_err()
                .contains("between 1024 and 65207")
        );
        assert!(check_port_base(65300).is_err());
        assert_eq!(check_port_base(65207), Ok(65207));
        assert_eq!(check_port_base(1024), Ok(1024));
    }

    #[test]
    fn labels_and_pods() {
        assert_eq!(PAYMENTS_V1.label(), "payments v1");
        assert_eq!(PAYMENTS_V2.slug(), "payments-v2");
        assert_eq!(PAYMENTS_V2.pod(), "payments-v2");
        assert_eq!(GATEWAY.pod(), "gateway-v1");
        assert_eq!(ORDERS.label(), "orders");
        let third = orders_replica(3).unwrap();
        assert_eq!(third.label(), "orders #3");
        assert_eq!(third.slug(), "orders-3");
        assert_eq!(third.pod(), "orders-v1-3");
        assert_eq!(third.app, "127.0.0.1:18023");
        assert_eq!(orders_replica(1), Some(ORDERS));
        assert_eq!(orders_replica(MAX_ORDERS_REPLICAS).unwrap().replica, 8);
        assert_eq!(orders_replica(MAX_ORDERS_REPLICAS + 1), None);
        assert_eq!(orders_replica(0), None);
    }
}
