//! The `devices` and `units` tables: each device's link state and counters
//! as its driver last saved them, and each unit (remote or keypad) heard.
//! The press counters move in the writer's transaction that stores the
//! presses ([`add_presses`], [`upsert_unit`]), so they count durable
//! presses only.

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{Store, StoreError};
use crate::event::format_timestamp;
use crate::protocol::UnitId;

/// connected | silent | disconnected, as in the status contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connected,
    Silent,
    Disconnected,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connected => "connected",
            LinkState::Silent => "silent",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// A driver's view of its device, saved as a whole. The press counter and
/// `last_press_at` are not in it: the writer keeps those with the events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    pub name: String,
    pub model: &'static str,
    pub port: String,
    pub state: LinkState,
    pub state_since: DateTime<Utc>,
    pub hardware_id: Option<String>,
    pub firmware: Option<String>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub counters: LinkCounters,
    pub last_error: Option<String>,
}

/// A remote (or keypad) was heard, with what it said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitReport {
    pub device: String,
    pub unit: UnitId,
    pub seen_at: DateTime<Utc>,
    pub battery: Option<u8>,
    pub rssi: Option<i8>,
}

/// A device's counters as last saved, so a restart continues them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Counted by the writer, in the transaction that stores the presses.
    pub presses: u64,
    /// Counted by the driver, saved with its [`DeviceReport`].
    pub link: LinkCounters,
}

/// What a driver counts about its link besides presses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub duplicates: u64,
    pub bad_frames: u64,
    pub unknown_frames: u64,
    pub noise_bytes: u64,
    pub faults: u64,
    pub reconnects: u64,
    /// ACKs dropped because the device did not take them in time.
    pub acks_dropped: u64,
}

/// A device's row, as `status` and the demo show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    pub name: String,
    pub model: String,
    pub port: String,
    pub state: LinkState,
    pub state_since: Option<String>,
    pub hardware_id: Option<String>,
    pub firmware: Option<String>,
    pub last_frame_at: Option<String>,
    pub last_press_at: Option<String>,
    pub presses: u64,
    pub duplicates: u64,
    pub bad_frames: u64,
    pub unknown_frames: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// ACKs dropped because the device did not read them in time.
    pub acks_dropped: u64,
    /// Bytes read that belonged to no frame.
    pub noise_bytes: u64,
}

/// A unit's row, as `status` shows it (its JSON is the contract's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnitRow {
    pub unit: String,
    pub last_seen_at: Option<String>,
    pub battery: Option<u8>,
    pub rssi: Option<i8>,
    pub presses: u64,
}

impl FromSql for LinkState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "connected" => Ok(LinkState::Connected),
            "silent" => Ok(LinkState::Silent),
            "disconnected" => Ok(LinkState::Disconnected),
            other => Err(FromSqlError::Other(
                format!("unknown device state {other:?}").into(),
            )),
        }
    }
}

const DEVICE_COLUMNS: &str =
    "name, model, port, state, state_since, hardware_id, firmware, last_frame_at,
     last_press_at, presses, duplicates, bad_frames, unknown_frames, reconnects, last_error,
     acks_dropped, noise_bytes";

fn device_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        name: row.get(0)?,
        model: row.get(1)?,
        port: row.get(2)?,
        state: row.get(3)?,
        state_since: row.get(4)?,
        hardware_id: row.get(5)?,
        firmware: row.get(6)?,
        last_frame_at: row.get(7)?,
        last_press_at: row.get(8)?,
        presses: row.get(9)?,
        duplicates: row.get(10)?,
        bad_frames: row.get(11)?,
        unknown_frames: row.get(12)?,
        reconnects: row.get(13)?,
        last_error: row.get(14)?,
        acks_dropped: row.get(15)?,
        noise_bytes: row.get(16)?,
    })
}

impl Store {
    /// Every device's last saved link state (`connected`, `silent`,
    /// `disconnected`), by name.
    pub fn device_states(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT name, state FROM devices")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The counters saved for `device`, zero for a device never seen.
    pub fn device_counters(&self, device: &str) -> Result<DeviceCounters, StoreError> {
        let counters = self
            .connection
            .query_row(
                "SELECT presses, duplicates, bad_frames, unknown_frames, noise_bytes, faults, reconnects,
                        acks_dropped
                 FROM devices WHERE name = ?1",
                [device],
                |row| {
                    Ok(DeviceCounters {
                        presses: row.get(0)?,
                        link: LinkCounters {
                            duplicates: row.get(1)?,
                            bad_frames: row.get(2)?,
                            unknown_frames: row.get(3)?,
                            noise_bytes: row.get(4)?,
                            faults: row.get(5)?,
                            reconnects: row.get(6)?,
                            acks_dropped: row.get(7)?,
                        },
                    })
                },
            )
            .optional()?;
        Ok(counters.unwrap_or_default())
    }

    /// The row of `name`; `None` for a device the agent has not started yet.
    pub fn device(&self, name: &str) -> Result<Option<DeviceRow>, StoreError> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE name = ?1"
        ))?;
        Ok(statement.query_row([name], device_from_row).optional()?)
    }

    /// Every device's row, by name.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"
        ))?;
        let rows = statement.query_map([], device_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The units heard on `device`, by unit id.
    pub fn units(&self, device: &str) -> Result<Vec<UnitRow>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT unit, last_seen_at, battery, rssi, presses FROM units WHERE device = ?1 ORDER BY unit",
        )?;
        let rows = statement.query_map([device], |row| {
            Ok(UnitRow {
                unit: row.get(0)?,
                last_seen_at: row.get(1)?,
                battery: row.get(2)?,
                rssi: row.get(3)?,
                presses: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Saves a driver's report of its device (not its press counter).
pub(super) fn upsert_device(
    transaction: &Transaction<'_>,
    report: &DeviceReport,
) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO devices (name, model, port, state, state_since, hardware_id, firmware,
                              last_frame_at, duplicates, bad_frames, unknown_frames, noise_bytes,
                              faults, reconnects, last_error, updated_at, acks_dropped)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (name) DO UPDATE SET
             model = excluded.model, port = excluded.port, state = excluded.state,
             state_since = excluded.state_since,
             hardware_id = coalesce(excluded.hardware_id, hardware_id),
             firmware = coalesce(excluded.firmware, firmware),
             last_frame_at = coalesce(excluded.last_frame_at, last_frame_at),
             duplicates = excluded.duplicates, bad_frames = excluded.bad_frames,
             unknown_frames = excluded.unknown_frames, noise_bytes = excluded.noise_bytes,
             faults = excluded.faults, reconnects = excluded.reconnects,
             last_error = excluded.last_error, updated_at = excluded.updated_at,
             acks_dropped = excluded.acks_dropped",
    )?;
    statement.execute(params![
        report.name,
        report.model,
        report.port,
        report.state.as_str(),
        format_timestamp(report.state_since),
        report.hardware_id,
        report.firmware,
        report.last_frame_at.map(format_timestamp),
        report.counters.duplicates,
        report.counters.bad_frames,
        report.counters.unknown_frames,
        report.counters.noise_bytes,
        report.counters.faults,
        report.counters.reconnects,
        report.last_error,
        format_timestamp(Utc::now()),
        report.counters.acks_dropped,
    ])?;
    Ok(())
}

/// Saves what a unit said about itself, adding `presses` to its counter.
pub(super) fn upsert_unit(
    transaction: &Transaction<'_>,
    report: &UnitReport,
    presses: u64,
) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO units (device, unit, last_seen_at, battery, rssi, presses)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (device, unit) DO UPDATE SET
             last_seen_at = max(coalesce(last_seen_at, ''), excluded.last_seen_at),
             battery = coalesce(excluded.battery, battery),
             rssi = coalesce(excluded.rssi, rssi),
             presses = presses + excluded.presses",
    )?;
    statement.execute(params![
        report.device,
        report.unit.to_string(),
        format_timestamp(report.seen_at),
        report.battery,
        report.rssi,
        presses,
    ])?;
    Ok(())
}

/// Adds `presses` stored in this transaction to `device`'s counter (a
/// device without a row yet gets one, connected: it just sent them).
pub(super) fn add_presses(
    transaction: &Transaction<'_>,
    device: &str,
    model: &str,
    presses: u64,
    last_press_at: &str,
) -> rusqlite::Result<()> {
    transaction.execute(
        "INSERT INTO devices (name, model, port, state, presses, last_press_at)
         VALUES (?1, ?2, '', 'connected', ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
             presses = presses + excluded.presses, last_press_at = excluded.last_press_at",
        params![device, model, presses, last_press_at],
    )?;
    Ok(())
}
