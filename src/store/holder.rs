//! Who holds the store file: redb takes an exclusive `flock` on it while a process has it
//! open, and Linux lists every lock in `/proc/locks` with the holder's pid and the file's device
//! and inode. Best effort: elsewhere, or for a holder in another pid namespace, it is unknown.

use std::path::Path;

/// The process holding `path` locked, as `pid <pid>: <command line>`, where it can be known.
pub fn describe(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = device(meta.dev());
    let pid = lock_holder(&locks, major, minor, meta.ino())?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            let words: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            words.join(" ")
        })
        .filter(|c| !c.is_empty());
    Some(match command {
        Some(command) => format!("pid {pid}: {command}"),
        None => format!("pid {pid}"),
    })
}

/// Linux's encoding of a device number: (major, minor).
fn device(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major, minor)
}

/// The pid of the `FLOCK` holder of the file with this device and inode in `/proc/locks`
/// (lines such as `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF`, device numbers in hex).
fn lock_holder(locks: &str, major: u64, minor: u64, inode: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with `->`: it holds nothing.
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid = fields.get(4)?.parse::<u32>().ok()?;
        let mut file = fields.get(5)?.split(':');
        let hex = |s: Option<&str>| s.and_then(|s| u64::from_str_radix(s, 16).ok());
        let (maj, min) = (hex(file.next())?, hex(file.next())?);
        let ino = file.next()?.parse::<u64>().ok()?;
        (maj == major && min == minor && ino == inode).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 77 fd:01:1234567 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF
2: -> FLOCK  ADVISORY  WRITE 5151 fd:01:1234567 0 EOF
3: FLOCK  ADVISORY  WRITE 9999 00:2f:1234567 0 EOF
";
        for (major, minor, inode, expected) in [
            (0xfd, 0x01, 1_234_567, Some(4242)),
            (0x00, 0x2f, 1_234_567, Some(9999)),
            (0xfd, 0x01, 7, None),
            (0x08, 0x01, 1_234_567, None),
        ] {
            assert_eq!(
                lock_holder(locks, major, minor, inode),
                expected,
                "{major:x}:{minor:x}:{inode}"
            );
        }
        assert_eq!(lock_holder("", 0, 0, 1), None);
        assert_eq!(lock_holder("garbage\n1: FLOCK\n", 0, 0, 1), None);
    }

    #[test]
    fn device_numbers_split_as_linux_encodes_them() {
        // makedev(253, 1) and makedev(0, 47); one past the old 8-bit minor.
        assert_eq!(device((253 << 8) | 1), (253, 1));
        assert_eq!(device(47), (0, 47));
        assert_eq!(device((1 << 20) | (8 << 8)), (8, 256));
    }
}
