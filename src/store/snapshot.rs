//! What `status` reads, in one read transaction: every number comes from
//! the same commit, so a sink's cursor, the newest event and the counters
//! belong together. Only the rows are read here; the health rules that
//! judge them are `crate::status`'s.

use super::{DaemonRow, DeviceRow, SinkRow, Store, StoreError, StoreStateRow, UnitRow};

/// The store as of one commit, for the configured devices and sinks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `None` when no agent has run with this store.
    pub daemon: Option<DaemonRow>,
    /// One per configured device, in the order asked for.
    pub devices: Vec<DeviceSnapshot>,
    /// One per configured sink, in the order asked for.
    pub sinks: Vec<SinkSnapshot>,
    /// The newest event's seqno (0 for an empty store).
    pub last_seqno: i64,
    pub event_count: u64,
    pub store_state: StoreStateRow,
}

/// A configured device as the store has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    pub name: String,
    /// `None` for a device the agent has not started yet.
    pub row: Option<DeviceRow>,
    pub units: Vec<UnitRow>,
}

/// A configured sink as the store has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub name: String,
    /// `None` for a sink that has not started yet.
    pub row: Option<SinkRow>,
    pub dead_letters: u64,
    /// The `ts` of the first event past its cursor, if there is one.
    pub first_pending_ts: Option<String>,
}

impl Store {
    /// Reads the rows of `devices` and `sinks` (configured names) and the
    /// agent's state, all in one read transaction.
    pub fn snapshot(&self, devices: &[&str], sinks: &[&str]) -> Result<Snapshot, StoreError> {
        self.connection.execute_batch("BEGIN")?;
        let snapshot = self.snapshot_in_transaction(devices, sinks);
        // A read transaction has nothing to keep: ending it cannot lose
        // anything, and what was read is the answer either way.
        let _ = self.connection.execute_batch("COMMIT");
        snapshot
    }

    fn snapshot_in_transaction(
        &self,
        devices: &[&str],
        sinks: &[&str],
    ) -> Result<Snapshot, StoreError> {
        let daemon = self.daemon()?;
        let devices = devices
            .iter()
            .map(|name| {
                Ok(DeviceSnapshot {
                    name: name.to_string(),
                    row: self.device(name)?,
                    units: self.units(name)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let sinks = sinks
            .iter()
            .map(|name| {
                let row = self.sink(name)?;
                let cursor = row.as_ref().map_or(0, |row| row.delivered_seqno);
                Ok(SinkSnapshot {
                    name: name.to_string(),
                    row,
                    dead_letters: self.dead_letter_count(name)?,
                    first_pending_ts: self.first_ts_after(cursor)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Snapshot {
            daemon,
            devices,
            sinks,
            last_seqno: self.last_seqno()?,
            event_count: self.event_count()?,
            store_state: self.store_state()?,
        })
    }
}
