//! What the bench programs share: the fixed-rate schedule and the latency report of the load
//! generator (`load`) and the bare NATS requester (`admin nats-requests`).

pub mod latencies;
