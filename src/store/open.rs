//! Opening the store file: an existing one (damage reported, never replaced), a new one
//! created whole or not at all, and the format version written and checked.

use std::path::Path;

use redb::{Database, ReadableDatabase};

use super::{
    EXPECTING_PANIC, Shared, StoreError, holder,
    layout::{FORMAT_KEY, FORMAT_VERSION, META},
};

/// Open an existing file. redb panics on some damage (a truncated file fails an assertion), so
/// the panic is caught and reported as damage.
pub(super) fn open_existing(path: &Path) -> Result<Database, StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        path: path.to_owned(),
        reason,
    };
    // The process-wide hook is never swapped here (that would silence other threads' panics
    // meanwhile): this thread says it expects one, and `install_panic_hook` keeps it quiet.
    EXPECTING_PANIC.with(|expecting| expecting.set(true));
    let opened = std::panic::catch_unwind(|| Shared::open(path));
    EXPECTING_PANIC.with(|expecting| expecting.set(false));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::InUse {
            path: path.to_owned(),
            holder: holder::describe(path),
        }),
        Ok(Err(e)) => Err(damaged(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unreadable");
            Err(damaged(format!("the database cannot be read: {what}")))
        }
    }
}

/// Create a store: written under a temporary name and renamed once complete, so a crash while
/// creating never leaves a half-made file under the real name; then the marker.
pub(super) fn create_new(path: &Path, marker: &Path) -> Result<Database, redb::Error> {
    let partial = path.with_extension("redb.partial");
    let _ = std::fs::remove_file(&partial);
    let db = Shared::open(&partial)?;
    write_format(&db)?;
    std::fs::rename(&partial, path)?;
    write_marker(marker)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        // The rename and the marker survive a power loss.
        let _ = dir.sync_all();
    }
    Ok(db)
}

pub(super) fn write_marker(marker: &Path) -> Result<(), std::io::Error> {
    std::fs::write(marker, b"ferry store: this directory holds ferry.redb\n")
}

pub(super) fn write_format(db: &Database) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert(FORMAT_KEY, FORMAT_VERSION.to_le_bytes().as_slice())?;
    }
    Ok(tx.commit()?)
}

/// Refuse a newer format; mark a store from before versions as version 1.
pub(super) fn check_format(db: &Database, path: &Path) -> Result<(), StoreError> {
    let found = {
        let read = db.begin_read().map_err(StoreError::disk)?;
        match read.open_table(META) {
            Ok(meta) => meta
                .get(FORMAT_KEY)
                .map_err(StoreError::disk)?
                .map(|v| v.value().try_into().map_or(u64::MAX, u64::from_le_bytes)),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(StoreError::disk(e)),
        }
    };
    match found {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) if found > FORMAT_VERSION => Err(StoreError::NewerFormat {
            path: path.to_owned(),
            found,
        }),
        Some(found) => Err(StoreError::Damaged {
            path: path.to_owned(),
            reason: format!("it names format version {found}, which no ferry writes"),
        }),
        None => write_format(db).map_err(StoreError::disk),
    }
}
