//! MQTT sink: being written.
use super::policy::Outcome;
use super::{AgentInfo, SinkError};
use crate::config::MqttSinkSettings;
use crate::store::StoredEvent;

pub struct MqttSink;

impl MqttSink {
    pub fn new(
        name: &str,
        _settings: &MqttSinkSettings,
        _agent: AgentInfo,
    ) -> Result<MqttSink, SinkError> {
        Err(SinkError::Setup {
            sink: name.into(),
            message: "mqtt sinks are not built yet".into(),
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
