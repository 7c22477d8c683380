//! How a watched file tells that it may have changed without reading it: its length,
//! modification time and inode. The inode catches an editor's save (a new file renamed over the
//! old one) within one modification-time tick. Both the sidecar's config file and the operator's
//! YAML folder poll with it, then read the content to see what really changed.

use std::time::SystemTime;

/// A file's length, modification time and inode as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FileStamp;

    #[test]
    fn a_save_over_the_file_changes_its_stamp_and_a_look_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let first = FileStamp::of(&std::fs::metadata(&path).unwrap());
        assert_eq!(first, FileStamp::of(&std::fs::metadata(&path).unwrap()));
        // Same length, written as editors save: a new file renamed over the old one.
        let tmp = dir.path().join("config.tmp");
        std::fs::write(&tmp, "a: 2\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(first, FileStamp::of(&std::fs::metadata(&path).unwrap()));
    }
}
