//! brownout: a fault-injection proxy for the traffic between AI agents and the MCP servers
//! they call.
//!
//! # Crate map
//!
//! ```text
//! agent ──► listener ──► link (client→server: fault chain) ──► upstream ──► server
//!   ▲                                                                        │
//!   └────────── link (server→client: fault chain) ◄──────────────────────────┘
//!                          ▲ watch (fault specs)
//!   control (single owner of state) ◄── HTTP API (Toxiproxy-compatible), CLI
//! ```
//!
//! - [`faults`]: fault specs (parsed and validated at the edge) and fault logic as pure
//!   decisions over one chunk: pass, delay, drop, replace, close or reset. The [`faults::Chain`]
//!   applies direction, toxicity and order. No I/O, no sleeping; randomness comes from one
//!   seeded RNG per link.
//! - [`proxy`]: listeners, upstream dialing, and links. A connection is one task running two
//!   pumps (one per direction) that read, ask the chain, and write each piece when it is due.
//!   Counters per proxy and direction.
//! - `mcp` (feature `rmcp`, on by default): the same message faults inside a Rust test, as a
//!   wrapper around any rmcp transport.
//! - [`control`]: the one owner of proxies and faults. The HTTP API ([`control::api`]) only
//!   translates into typed [`control::Command`]s.
//! - `scenarios` (feature `rmcp`): reliability plans as files (a target, proxies, a workload
//!   of real MCP calls, a fault timeline, checks with thresholds), run on an in-process
//!   control plane, with JSON and JUnit results.
//! - [`embed`]: brownout inside a Rust test: an in-process proxy (TCP, HTTP mode, stdio)
//!   and verbs (`partition`, `heal`, `latency`, `loss`, `hold`, `release`, `toxic`, `reset`)
//!   returning guards that undo them, with counters and events.
//! - [`cli`]: the command line on top of everything: clap definitions, one function per
//!   command that wires the library, and the HTTP client for the client commands.
//!
//! Data path: the agent's socket is accepted by a proxy's listener; its connection task dials
//! the upstream, then each direction reads a chunk, runs it through that direction's chain,
//! queues what comes out with the time each piece may be delivered, and writes it then.

pub mod cli;
pub mod control;
pub mod embed;
pub mod faults;
#[cfg(feature = "rmcp")]
pub mod mcp;
pub mod proxy;
#[cfg(feature = "rmcp")]
pub mod scenarios;
pub mod vm;
