//! Housekeeping: deletes events that every sink has delivered (or
//! dead-lettered) once they are older than `retention_days`, and, when the
//! store outgrows `max_size_mb`, delivered events oldest first whatever
//! their age. Undelivered events are never deleted: when they alone exceed
//! the cap, the store keeps growing, every press is still taken, and
//! `status` and the log say so (`store_state.over_cap_since`). Every deletion is
//! counted (`store_state.pruned_retention`, `pruned_size`).
//!
//! Deletion goes through the writer in chunks of [`CHUNK`] events, each its
//! own short transaction, so presses never wait behind a long delete.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};
use tokio_util::sync::CancellationToken;

use super::blocking::AsyncReader;
use super::{StoreError, StoreHandle};
use crate::config::StoreSettings;

/// Events deleted per transaction.
pub const CHUNK: usize = 1_000;
/// How often housekeeping runs, and how soon after start the first time.
pub const INTERVAL: Duration = Duration::from_secs(600);
pub const FIRST_RUN: Duration = Duration::from_secs(30);

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub by_retention: u64,
    pub by_size: u64,
    /// Undelivered events alone exceed the cap.
    pub over_cap: bool,
}

/// One chunk of housekeeping: delete at most `limit` of the oldest events
/// that every sink has delivered (or dead-lettered) through `through_seqno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prune {
    pub through_seqno: i64,
    /// Only events read before this (retention); `None`: any age (size cap).
    pub older_than: Option<DateTime<Utc>>,
    pub limit: usize,
}

/// Runs housekeeping every [`INTERVAL`] until `shutdown`.
pub async fn run(
    settings: StoreSettings,
    sinks: Vec<String>,
    data_dir: PathBuf,
    store: StoreHandle,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut reader = AsyncReader::open(data_dir).await?;
    let mut wait = FIRST_RUN;
    let mut was_over_cap = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = INTERVAL;
        // A prune waits for its commit: the stop must not wait for a disk
        // that stays full.
        let round = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            round = run_once(&settings, &sinks, &mut reader, &store) => round?,
        };
        if round.by_retention + round.by_size > 0 {
            tracing::info!(
                by_retention = round.by_retention,
                by_size = round.by_size,
                "deleted delivered events"
            );
        }
        if round.over_cap && !was_over_cap {
            tracing::error!(
                "undelivered events alone exceed max_size_mb = {}: every press is still stored and \
                 nothing undelivered is deleted; the store grows until the sinks catch up (check `status`)",
                settings.max_size_bytes / (1024 * 1024)
            );
        } else if !round.over_cap && was_over_cap {
            tracing::info!("the store is back under max_size_mb");
        }
        was_over_cap = round.over_cap;
    }
}

/// One round of housekeeping: retention first, then the size cap.
pub async fn run_once(
    settings: &StoreSettings,
    sinks: &[String],
    reader: &mut AsyncReader,
    store: &StoreHandle,
) -> Result<Round, StoreError> {
    let mut round = Round::default();
    let names = sinks.to_vec();
    let through_seqno = reader
        .read(move |store| store.delivered_everywhere(&names))
        .await?;
    let retention = chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
    let older_than = Utc::now().checked_sub_signed(retention);
    if let Some(older_than) = older_than {
        round.by_retention = prune_all(store, through_seqno, Some(older_than)).await?;
    }
    if used_bytes(reader).await? > settings.max_size_bytes {
        // Delivered events go first, oldest first, one chunk at a time
        // until the store fits again.
        while used_bytes(reader).await? > settings.max_size_bytes {
            let deleted = store
                .prune(Prune {
                    through_seqno,
                    older_than: None,
                    limit: CHUNK,
                })
                .await?;
            round.by_size += deleted;
            if deleted == 0 {
                break;
            }
        }
    }
    round.over_cap = used_bytes(reader).await? > settings.max_size_bytes;
    store.mark_over_cap(round.over_cap).await?;
    Ok(round)
}

async fn used_bytes(reader: &mut AsyncReader) -> Result<u64, StoreError> {
    reader.read(|store| store.used_bytes()).await
}

async fn prune_all(
    store: &StoreHandle,
    through_seqno: i64,
    older_than: Option<chrono::DateTime<Utc>>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let deleted = store
            .prune(Prune {
                through_seqno,
                older_than,
                limit: CHUNK,
            })
            .await?;
        total += deleted;
        if deleted < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Deletes one chunk in the writer's transaction; returns how many went.
pub(super) fn apply_prune(transaction: &Transaction<'_>, prune: &Prune) -> rusqlite::Result<u64> {
    let older_than_ms = prune
        .older_than
        .map_or(i64::MAX, |at| at.timestamp_millis());
    let deleted = transaction.execute(
        "DELETE FROM events WHERE seqno IN (
             SELECT seqno FROM events WHERE seqno <= ?1 AND ts_ms < ?2 ORDER BY seqno LIMIT ?3)",
        params![prune.through_seqno, older_than_ms, prune.limit as i64],
    )? as u64;
    if deleted > 0 {
        transaction.execute(
            "DELETE FROM dead_letters WHERE seqno NOT IN (SELECT seqno FROM events)",
            [],
        )?;
        let column = if prune.older_than.is_some() {
            "pruned_retention"
        } else {
            "pruned_size"
        };
        transaction.execute(
            &format!("UPDATE store_state SET {column} = {column} + ?1"),
            [deleted],
        )?;
        // Hand the freed pages back to the filesystem.
        transaction
            .query_row("PRAGMA incremental_vacuum", [], |_| Ok(()))
            .optional()?;
    }
    Ok(deleted)
}
