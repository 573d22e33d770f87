//! One integration binary. Where a test belongs:
//! - `support`: in-process gateways, signed callbacks, an HTTP client, a burst, `/metrics`,
//!   the binary, a cuttable TCP proxy, waiting for conditions.
//! - `brokers`: the real brokers behind one enum: gateway flags, watching and collecting
//!   events, responders.
//! - `protocol`: the callback checks of the README's "What Tencent sees" and the samples, over
//!   HTTP, on the stdout bus.
//! - `cli`: the `hookbus` binary as a newcomer runs it: serve, simulate, SIGTERM, bad flags.
//! - `every_bus`: behaviour every bus must have, run on each broker.
//! - `bindings`: third-party clients (nats-py, pika, the CloudEvents SDK) read attributes as
//!   each bus's binding says, and a monitor of events never receives a decision request.
//! - `faults`: crashes, overload, damaged spools and SIGTERM: nothing acknowledged is lost.
//! - `outages`: a broker away at start-up, during a restart, or refusing credentials.
//! - `hardening`: slow and hostile clients, connection caps, JSON logs.
//! - `hostile`: careless and hostile responders on every bus: bounded replies, escaped log
//!   lines, floods of replies to ids never asked.
//! - `contract`: the AsyncAPI document, read by the official parser and a JSON Schema validator.
//! - `deploy`: docker-compose, Dockerfile and Kubernetes files agree with the CLI and pass the
//!   ecosystem's validators (kubernetes-validate, the Compose Specification's schema, hadolint).
//! - `tls`: HTTPS with a certificate made at test time.
//! - `dead_letters`: an event the broker refuses for good holds back nothing; `hookbus spool`.
//! - `apps`: several tokens and apps in one gateway, rotation on SIGHUP.
//! - `trtc`: TRTC room and media callbacks beside Live and Chat ones, signed by Python's `hmac`.
//! - `css`: Cloud Streaming (CSS) callbacks beside the others, signed by Python's `hashlib`.
//! - `nats`, `amqp`, `kafka`: what only that bus does.
//! - `amqp_edges`: RabbitMQ against a hostile or refusing third party (pika): unreadable
//!   replies, a refused routing key, a user who may not write, returned bodies in the log.
//! - `tail`: `hookbus tail` in a terminal, as JSON lines, and a tail that stops reading.
//! - `powercut`: power cuts under the spool, on a file system that forgets what was not synced
//!   (`tests/powercut/lazyfs.py`): every callback answered 200 is delivered.
//! - `clusters`: 3-node NATS and RabbitMQ clusters (`scripts/clusters.sh`): seed lists, node
//!   and leader kills, one id per callback across gateways; only with `HOOKBUS_TEST_CLUSTERS`
//!   set (`scripts/test.sh`).

mod amqp;
mod amqp_edges;
mod apps;
mod bindings;
mod brokers;
mod cli;
mod clusters;
mod contract;
mod css;
mod dead_letters;
mod deploy;
mod every_bus;
mod faults;
mod hardening;
mod hostile;
mod kafka;
mod nats;
mod outages;
mod powercut;
mod protocol;
mod support;
mod tail;
mod tls;
mod trtc;
