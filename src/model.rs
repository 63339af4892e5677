//! The device models: what the agent knows about each one, in one
//! [`ModelSpec`] per model (kept in the model's own file, next to its codec),
//! and the one list of them, [`MODELS`], that configuration, drivers, port
//! discovery and `devices` all consult. A [`Model`] is a handle to one entry.
//!
//! Nothing outside a model's file asks which model it is: it asks the spec.
//! So adding a model is its file plus one line here (ARCHITECTURE.md, "How
//! to add a device model").

use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::SimulatorSettings;
use crate::port::Link;
use crate::protocol::{prolan202, prolan501, AnyCodec, Identity};
use crate::simulator;

/// Every model the agent knows, in the order `devices --probe` asks a port
/// for them. Names are unique (tested).
pub static MODELS: &[&ModelSpec] = &[
    &prolan202::SPEC,
    &prolan501::SPEC,
    &simulator::SPEC,
    #[cfg(test)]
    &crate::protocol::example::SPEC,
];

/// The facts of one device model.
#[derive(Debug)]
pub struct ModelSpec {
    /// The name in the configuration and in every event's `model`:
    /// `prolan-202`.
    pub name: &'static str,
    /// What an operator calls one: `ProLAN-202 keypad`. `devices` shows it
    /// before the identity.
    pub title: &'static str,
    /// The first word of the name `devices` suggests for a found device:
    /// `keypad` → `keypad-202a0f31`.
    pub kind: &'static str,
    /// The line speed when the configuration sets no `baud`.
    pub default_baud: u32,
    /// How often the device says something when nothing happens; it is
    /// silent after three periods without a valid frame.
    pub heartbeat_period: Duration,
    /// How long the same press (unit, seq) is dropped as a copy.
    pub duplicate_window: Duration,
    /// A fresh host-side codec, for each connection.
    pub codec: fn() -> AnyCodec,
    /// Whether an identity answer (to QUERY) comes from this model.
    pub is_identity: fn(&Identity) -> bool,
    pub attachment: Attachment,
}

/// How the agent reaches a device of a model.
#[derive(Debug)]
pub enum Attachment {
    /// A serial port: `port` is a path or `"auto"`, and `devices --probe`
    /// asks ports for this model.
    SerialPort,
    /// No port: started in process (the simulator), configured by the
    /// `sim_*` keys. Returns the host's end of its pipe; it stops when that
    /// end is dropped or the token is cancelled.
    InProcess(fn(SimulatorSettings, CancellationToken) -> Box<dyn Link>),
}

/// A model of [`MODELS`], as the configuration names it.
#[derive(Clone, Copy)]
pub struct Model(&'static ModelSpec);

impl Model {
    /// The model called `name` in the configuration.
    pub fn named(name: &str) -> Option<Model> {
        MODELS
            .iter()
            .find(|spec| spec.name == name)
            .map(|spec| Model(spec))
    }

    /// Every model, in registry order.
    pub fn all() -> impl Iterator<Item = Model> {
        MODELS.iter().map(|spec| Model(spec))
    }

    /// The handle of a spec; for a model's own file, to name its model.
    pub const fn of(spec: &'static ModelSpec) -> Model {
        Model(spec)
    }

    pub fn spec(self) -> &'static ModelSpec {
        self.0
    }

    /// The name used in the configuration and in every event's `model`.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn default_baud(self) -> u32 {
        self.0.default_baud
    }

    /// How long the spec's duplicate window lasts for this model.
    pub fn duplicate_window(self) -> Duration {
        self.0.duplicate_window
    }

    /// Nothing valid for three heartbeat periods: the device is silent.
    pub fn silence_after(self) -> Duration {
        3 * self.0.heartbeat_period
    }

    /// A fresh host-side codec for one connection.
    pub fn codec(self) -> AnyCodec {
        (self.0.codec)()
    }

    /// Whether `identity` (the answer to QUERY) is this model's.
    pub fn is_identity(self, identity: &Identity) -> bool {
        (self.0.is_identity)(identity)
    }

    /// Whether the device sits on a serial port (else it runs in process).
    pub fn has_port(self) -> bool {
        matches!(self.0.attachment, Attachment::SerialPort)
    }
}

/// Names are unique in the registry, so a model is its name.
impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Model {}

impl std::hash::Hash for Model {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_tuple("Model").field(&self.0.name).finish()
    }
}

impl fmt::Display for Model {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_its_own_name() {
        let mut names: Vec<&str> = MODELS.iter().map(|spec| spec.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MODELS.len(), "{names:?}");
    }

    #[test]
    fn a_model_is_found_by_its_configured_name() {
        for spec in MODELS {
            let model = Model::named(spec.name).expect("a listed model");
            assert!(std::ptr::eq(model.spec(), *spec), "{}", spec.name);
        }
        assert_eq!(Model::named("prolan-203"), None);
    }
}
