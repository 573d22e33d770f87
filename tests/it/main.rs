//! One integration binary. Where a test belongs:
//! - `support`: starting gateways in-process, an HTTP client, waiting for conditions.
//! - `protocol`: the callback checks of SPEC §2 and the samples, over HTTP, on the stdout bus.
//! - `cli`: the `hookbus` binary as a newcomer runs it: serve, simulate, SIGTERM, bad flags.

mod cli;
mod nats;
mod protocol;
mod support;
