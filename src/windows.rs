//! What the agent asks of Windows itself (the service is the binary's,
//! `src/service/`): the free disk under the store, which `status` judges
//! (statvfs answers it on Unix, in `status.rs`).

use std::os::windows::ffi::OsStrExt;
use std::path::Path;

/// Bytes this process may still write on the volume holding `path` (a
/// folder): what `GetDiskFreeSpaceExW` calls free bytes available to the
/// caller, so a disk quota counts as it does for statvfs's `f_bavail`.
/// `None` when Windows cannot say (a missing folder, a network share gone).
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    #[link(name = "kernel32")]
    extern "system" {
        // ULARGE_INTEGER is a union over one u64: a pointer to a u64 is one
        // to it. Null for the totals the agent does not need.
        fn GetDiskFreeSpaceExW(
            directory: *const u16,
            free_bytes_available_to_caller: *mut u64,
            total_bytes: *mut u64,
            total_free_bytes: *mut u64,
        ) -> i32;
    }
    let directory: Vec<u16> = path
        .as_os_str()
        .encode_wide()
        .chain(std::iter::once(0))
        .collect();
    let mut available = 0u64;
    // SAFETY: `directory` is a NUL-terminated UTF-16 string that lives
    // across the call; `available` is a valid u64 for Windows to fill in;
    // the two totals may be null (documented as optional).
    let succeeded = unsafe {
        GetDiskFreeSpaceExW(
            directory.as_ptr(),
            &mut available,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (succeeded != 0).then_some(available)
}
