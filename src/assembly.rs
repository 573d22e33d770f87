//! The composition root: turns parsed flags into built parts. [`BusArgs::options`] gives the
//! plain [`bus::Options`] to connect with, and [`ServeArgs::build`] turns the flags and a
//! connected bus into a [`Gateway`] (reading the token files, opening the spool, loading TLS),
//! each part built once here: the metrics, the replay cache, the outbox with its publisher and
//! dead-letter policy, the admin socket. The responder and the AsyncAPI contract are assembled
//! here too. `config` declares the flags; nothing below this module sees them.

use std::sync::Arc;

use crate::bus::{self, Bus};
use crate::config::{AsyncapiArgs, BusArgs, BusKind, RespondArgs, ServeArgs, Unrouted};
use crate::dead_letters::DeadLetters;
use crate::decision::{Decisions, Fallbacks};
use crate::http::Connections;
use crate::metrics::Metrics;
use crate::outbox::{DeadLetterPolicy, Outbox, Publisher};
use crate::replay::Replays;
use crate::respond::Responder;
use crate::routes::{Limits, Shared};
use crate::spool::Spool;
use crate::tail::Tap;
use crate::{admin, apps, asyncapi, outbox, rules, tencent, Gateway};

impl AsyncapiArgs {
    /// The contract these bus flags describe.
    pub fn contract(&self) -> asyncapi::Contract {
        let bus = &self.bus;
        // host:port of a URL such as nats://user:pass@host:4222 or amqp://host:5672/%2f
        let host = |url: &str| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
            rest.split('/').next().unwrap_or(rest).to_owned()
        };
        let (protocol, host) = match bus.bus {
            BusKind::Stdout => ("stdout", String::new()),
            BusKind::Nats => ("nats", host(&bus.nats_url[0])),
            BusKind::Amqp => ("amqp", host(&bus.amqp_url[0])),
            BusKind::Kafka => ("kafka", bus.kafka_brokers.split(',').next().unwrap_or_default().trim().to_owned()),
        };
        let reply_topic = match bus.options() {
            bus::Options::Kafka(kafka) => kafka.reply_topic,
            _ => String::new(),
        };
        asyncapi::Contract {
            protocol,
            host,
            prefix: bus.prefix.clone(),
            exchange: bus.amqp_exchange.clone(),
            reply_topic,
        }
    }
}

impl RespondArgs {
    /// The responder these flags describe, its rules read and checked.
    pub fn responder(&self) -> Result<Responder, rules::Invalid> {
        let rules = match &self.rules {
            // A command the gateway does not document is checked generically, as --blocking does.
            Some(path) => rules::Rules::parse(&path.display().to_string(), &read_rules(path)?, |command, code| {
                Some(tencent::Blocking::of(command).is_none_or(|blocking| blocking.valid_code(code)))
            })?,
            None => rules::Rules::default(),
        };
        Ok(Responder { code: self.decision, delay: self.delay, rules: Arc::new(rules) })
    }
}

fn read_rules(path: &std::path::Path) -> Result<String, rules::Invalid> {
    std::fs::read_to_string(path)
        .map_err(|error| rules::Invalid::new(format!("cannot read --rules {}: {error}", path.display())))
}

impl ServeArgs {
    /// What the flags say about apps and tokens: [`apps::load`] reads the files, at start and
    /// again on SIGHUP.
    pub fn apps(&self) -> apps::Spec {
        apps::Spec {
            tokens: self.token.clone(),
            token_files: self.token_file.clone(),
            trtc_keys: self.trtc_key.clone(),
            trtc_key_files: self.trtc_key_file.clone(),
            css_keys: self.css_key.clone(),
            css_key_files: self.css_key_file.clone(),
            sdk_app_ids: self.sdk_app_ids.clone(),
            apps: self.apps.clone(),
            apps_file: self.apps_file.clone(),
            prefix: self.bus.prefix.clone(),
            fallbacks: self.fallbacks(),
        }
    }

    /// The fallbacks the flags set: gifts and room messages, and those given with --blocking.
    fn fallbacks(&self) -> Fallbacks {
        let mut fallbacks = Fallbacks::default();
        fallbacks.set(tencent::GIFT, self.gift_fallback);
        fallbacks.set(tencent::MESSAGE, self.message_fallback);
        for (command, fallback) in &self.blocking {
            if let Some(fallback) = fallback {
                fallbacks.set(command.clone(), *fallback);
            }
        }
        fallbacks
    }

    /// How blocking callbacks are decided: the deadline, the commands made blocking, the rules
    /// file read and checked against them.
    pub fn decisions(&self) -> anyhow::Result<Decisions> {
        let mut decisions = Decisions {
            timeout: self.decision_timeout,
            max_reply_bytes: self.max_reply_bytes,
            generic: self
                .blocking
                .iter()
                .filter(|(command, _)| tencent::Blocking::of(command).is_none())
                .map(|(command, _)| command.clone())
                .collect(),
            ..Decisions::default()
        };
        if let Some(path) = &self.rules {
            let text = read_rules(path)?;
            let valid_code = |command: &str, code| decisions.kind(command).map(|kind| kind.valid_code(code));
            decisions.rules = Arc::new(rules::Rules::parse(&path.display().to_string(), &text, valid_code)?);
        }
        Ok(decisions)
    }

    /// The request-handling limits these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_clock_skew: self.max_clock_skew,
            max_body_bytes: self.max_body_bytes,
            max_json_depth: self.max_json_depth as usize,
            replay_cache_entries: self.replay_cache_entries,
            body_read_timeout: self.body_read_timeout,
        }
    }

    /// The gateway these flags describe, on an already connected bus: reads the token file,
    /// opens the spool, loads the TLS files, and builds every part once; the admin socket is
    /// served from here on.
    pub fn build(&self, bus: Bus) -> anyhow::Result<Gateway> {
        let spool = match &self.spool_dir {
            Some(dir) => Some(
                Spool::open(dir, self.spool_max_bytes, self.spool_segment_bytes, self.outbox_max_bytes)
                    .map_err(|error| anyhow::anyhow!("cannot open --spool-dir {}: {error}", dir.display()))?,
            ),
            None => None,
        };
        let dead_letters = match &self.spool_dir {
            Some(dir) => DeadLetters::open(dir, self.dead_letter_max_bytes)
                .map_err(|error| anyhow::anyhow!("cannot read the dead letters in {}: {error}", dir.display()))?,
            None => DeadLetters::in_memory(self.dead_letter_max_bytes),
        };
        let apps = Arc::new(apps::Current::new(apps::load(&self.apps())?));
        let decisions = self.decisions()?;
        let tracer = self.otlp_endpoint.as_deref().map(crate::traces::Tracer::start).transpose()?;
        let connections = self.connections()?;
        let metrics = Arc::new(Metrics::new(decisions.blocking(), decisions.rules.names()));
        if let Some((_, backlog)) = &spool {
            metrics.spool_read_back(&backlog.recovery);
        }
        let outbox = Arc::new(Outbox::new(self.bounds(), spool, Arc::new(dead_letters)));
        let tap = Arc::new(Tap::default());
        let admin_socket =
            self.admin_socket.clone().or_else(|| self.spool_dir.as_ref().map(|dir| dir.join(admin::SOCKET)));
        let admin = admin_socket.and_then(|path| admin::serve(&path, outbox.clone(), tap.clone()));
        let publisher = Publisher {
            outbox: outbox.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            tracer: tracer.clone(),
            policy: DeadLetterPolicy {
                after: self.dead_letter_after,
                notices: self.dead_letter_destination.then(|| apps.clone()),
            },
        };
        let limits = self.limits();
        let shared = Arc::new(Shared {
            path: self.path.clone(),
            replays: Replays::new(limits.replay_cache_entries),
            limits,
            apps,
            audit: self.audit,
            tracer,
            decisions,
            bus,
            outbox,
            metrics,
            tap,
        });
        Ok(Gateway { shared, publisher, connections, shutdown_grace: self.shutdown_grace, admin })
    }

    /// How much the outbox holds, and how long it waits.
    fn bounds(&self) -> outbox::Bounds {
        outbox::Bounds {
            capacity: self.outbox_capacity as usize,
            max_bytes: self.outbox_max_bytes,
            wait: self.outbox_wait,
            linger: self.publish_linger,
        }
    }

    /// How connections are taken: their limits and, with a certificate, TLS.
    fn connections(&self) -> anyhow::Result<Connections> {
        Ok(Connections {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections as usize,
            max_age: Some(self.max_connection_age).filter(|age| !age.is_zero()),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
                _ => None,
            },
        })
    }
}

impl BusArgs {
    /// What to connect to, as the bus takes it.
    pub fn options(&self) -> bus::Options {
        match self.bus {
            BusKind::Stdout => bus::Options::Stdout,
            BusKind::Nats => bus::Options::Nats(bus::nats::NatsOptions {
                urls: self.nats_url.clone(),
                jetstream: self.nats_jetstream,
                create_stream: self.nats_create_stream.clone(),
                stream_replicas: self.nats_stream_replicas.into(),
                prefix: self.prefix.clone(),
                subjects: self.event_subjects(),
                name: self.instance_id(),
            }),
            BusKind::Amqp => bus::Options::Amqp(bus::amqp::AmqpOptions {
                urls: self.amqp_url.clone(),
                exchange: self.amqp_exchange.clone(),
                unrouted_queue: match self.amqp_unrouted {
                    Unrouted::Keep => Some(format!("{}.unrouted", self.prefix)),
                    Unrouted::Drop => None,
                },
                queue_type: self.amqp_queue_type,
            }),
            BusKind::Kafka => bus::Options::Kafka(bus::kafka::KafkaOptions {
                brokers: self.kafka_brokers.clone(),
                create_topics: self.kafka_create_topics,
                partitions: self.kafka_partitions,
                replication_factor: self.kafka_replication_factor,
                message_max_bytes: self.kafka_message_max_bytes,
                reply_topic: self
                    .kafka_reply_topic
                    .clone()
                    .unwrap_or_else(|| format!("{}.replies.{}", self.prefix, self.instance_id())),
            }),
        }
    }

    /// The subjects a JetStream stream must cover: every documented informational callback's
    /// and the dead-letter notices', under the prefix.
    fn event_subjects(&self) -> Vec<String> {
        let documented = crate::samples::all().map(|(command, _)| command);
        let events = documented.filter(|command| tencent::Blocking::of(command).is_none());
        events.chain(["deadletter"]).map(|command| format!("{}.{command}", self.prefix)).collect()
    }

    /// The instance id: the same across restarts of one instance, so that its Kafka reply
    /// topic and consumer group are reused rather than left behind.
    fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|host| host.trim().to_owned())
                .filter(|host| bus::valid_name(host))
                .unwrap_or_else(|| "hookbus".to_owned())
        })
    }
}
