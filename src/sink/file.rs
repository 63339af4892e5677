//! File sink (being written by a helper; this placeholder only compiles).

use super::policy::Outcome;
use super::{AgentInfo, SinkError};
use crate::config::FileSinkSettings;
use crate::store::StoredEvent;

pub struct FileSink;

impl FileSink {
    pub fn new(
        _sink: &str,
        _settings: &FileSinkSettings,
        _agent: AgentInfo,
    ) -> Result<FileSink, SinkError> {
        Ok(FileSink)
    }

    pub async fn deliver(&mut self, _batch_id: &str, _events: &[StoredEvent]) -> Outcome {
        Outcome::Local("file sink not written yet".into())
    }
}
