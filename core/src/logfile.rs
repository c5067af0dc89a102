//! Log files of bounded size: when a file would grow past its limit it is renamed to
//! `NAME.1` (replacing the previous one) and a new file is started, so a VM's logs never take
//! more than twice the limit however long it runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only log file that rotates at a size limit.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    limit: u64,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Opens (creating) `path` for appending; rotates at `limit` bytes.
    pub fn open(path: &Path, limit: u64) -> std::io::Result<RotatingLog> {
        let mut log = RotatingLog {
            path: path.to_path_buf(),
            limit: limit.max(1),
            file: None,
            size: 0,
        };
        log.reopen()?;
        Ok(log)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`, rotating first if they would take the file past its limit.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.limit {
            self.file = None;
            std::fs::rename(&self.path, self.rotated_path())?;
            self.reopen()?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                self.reopen()?;
                self.file.as_mut().expect("reopened")
            }
        };
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Appends one line that starts with the current time (RFC 3339, UTC).
    pub fn line(&mut self, text: &str) -> std::io::Result<()> {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        self.append(format!("{stamp} {text}\n").as_bytes())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut log = RotatingLog::open(&path, 100).unwrap();
        for i in 0..50 {
            log.append(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(dir.path().join("serial.log.1")).unwrap();
        assert!(current.len() <= 100 && previous.len() <= 100);
        assert!(current.ends_with("line 049\n"), "{current}");
        assert!(previous.contains("line 04"), "{previous}");
        // Reopening continues the same file and keeps counting its size.
        let mut again = RotatingLog::open(&path, 100).unwrap();
        again.line("hello").unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().len() <= 100);
    }
}
