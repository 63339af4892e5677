//! PostgreSQL sink: being written.
use super::policy::Outcome;
use super::{AgentInfo, SinkError};
use crate::config::PostgresSinkSettings;
use crate::store::StoredEvent;

pub struct PostgresSink;

impl PostgresSink {
    pub fn new(
        name: &str,
        _settings: &PostgresSinkSettings,
        _agent: AgentInfo,
    ) -> Result<PostgresSink, SinkError> {
        Err(SinkError::Setup {
            sink: name.into(),
            message: "postgres sinks are not built yet".into(),
        })
    }
    pub async fn deliver(&mut self, _batch_id: &str, _events: &[StoredEvent]) -> Outcome {
        Outcome::Local("not built".into())
    }
    pub fn password_problem(&self) -> Option<&str> {
        None
    }
    pub fn refresh_password(&mut self) {}
}
