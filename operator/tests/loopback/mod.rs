//! What the stand-in sidecars of these tests serve on their admin listener
//! ([`weir_testkit::FakeAdmin`]): the `/metrics` text a Concurrency Autoscaler of orders reads.

#![allow(dead_code)] // each test binary uses a different part

/// `/metrics` as far as a Concurrency Autoscaler of orders reads it: `in_flight` inbound
/// requests to orders, beside outbound calls the autoscaler must not count.
pub fn orders_in_flight(in_flight: f64) -> String {
    format!(
        "# TYPE weir_in_flight_requests gauge\n\
         weir_in_flight_requests{{direction=\"inbound\",service=\"orders\"}} {in_flight}\n\
         weir_in_flight_requests{{direction=\"outbound\",service=\"payments\"}} 99\n"
    )
}
