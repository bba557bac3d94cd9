//! The files of a saved index and how they are written and checked.
//!
//! A saved index is the engine's own file at `path` (the graph), for i8 indexes the
//! vectors the graph's slots point into at `path.vectors`, and a sidecar
//! `path.meta.json` that records the format version, the shape, the count and the
//! length and CRC-32 of the other files. `open` trusts the engine with the index file
//! only after the sidecar vouches for every byte of it, so a truncated or garbled file
//! is reported as corrupt instead of being read into a graph with dangling links.
//!
//! A save writes every file under a temporary name, fsyncs them, renames the index
//! file, then the vectors, then the sidecar into place, and fsyncs the directory. A
//! crash before the first rename leaves the previous save untouched; a crash between
//! renames leaves new files under an old sidecar, which the CRC check reports as corrupt.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{IndexError, Quantization};

/// Bumped whenever the meaning of the files changes; other versions are rebuilt.
/// Version 2: an i8 index keeps its vectors in their own file, the graph only slots.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// The sidecar describing a saved index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format_version: u32,
    /// The engine and its version, for people reading the file.
    pub engine: String,
    pub dim: usize,
    pub quantization: Quantization,
    pub connectivity: usize,
    /// Vectors in the index (removed ones excluded).
    pub count: usize,
    /// The index file (the graph).
    pub index: FileSum,
    /// The vectors file, for an i8 index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<FileSum>,
}

/// The length and CRC-32 (IEEE) of a whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileSum {
    pub bytes: u64,
    pub crc32: u32,
}

impl FileSum {
    /// Whether `found` (a file as read) is the file recorded here; the error says how it
    /// differs.
    pub(crate) fn check(&self, found: FileSum) -> Result<(), String> {
        if found.bytes != self.bytes {
            return Err(format!(
                "{} bytes where the sidecar records {}",
                found.bytes, self.bytes
            ));
        }
        if found.crc32 != self.crc32 {
            return Err(format!(
                "CRC-32 {:08x} where the sidecar records {:08x}",
                found.crc32, self.crc32
            ));
        }
        Ok(())
    }
}

/// `path.vectors`, next to the index file.
pub(crate) fn vectors_path(path: &Path) -> PathBuf {
    with_suffix(path, ".vectors")
}

/// Counts and checksums what passes through it.
struct Hashed<T> {
    inner: T,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<T> Hashed<T> {
    fn new(inner: T) -> Self {
        Hashed {
            inner,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    /// What has passed through so far.
    fn sum(&self) -> FileSum {
        FileSum {
            bytes: self.bytes,
            crc32: self.hasher.clone().finalize(),
        }
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Creates `path`, writes it with `write`, fsyncs it, and returns its length and CRC-32.
pub(crate) fn write_hashed(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<FileSum, IndexError> {
    let file = File::create(path).map_err(|e| IndexError::io(path, e))?;
    let mut out = Hashed::new(BufWriter::with_capacity(1 << 20, file));
    write(&mut out).map_err(|e| IndexError::io(path, e))?;
    let sum = out.sum();
    let file = out
        .inner
        .into_inner()
        .map_err(|e| IndexError::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| IndexError::io(path, e))?;
    Ok(sum)
}

/// Reads `path` with `read`, and returns what it gave with the length and CRC-32 of the
/// bytes it read (all of them, if `read` reads to the end).
pub(crate) fn read_hashed<T>(
    path: &Path,
    read: impl FnOnce(&mut dyn Read) -> T,
) -> Result<(T, FileSum), IndexError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IndexError::Corrupt {
                path: path.to_path_buf(),
                reason: "the file is missing".into(),
            })
        }
        Err(e) => return Err(IndexError::io(path, e)),
    };
    let mut input = Hashed::new(BufReader::with_capacity(1 << 20, file));
    let value = read(&mut input);
    Ok((value, input.sum()))
}

/// `path.meta.json`, next to the index file.
pub(crate) fn meta_path(path: &Path) -> PathBuf {
    with_suffix(path, ".meta.json")
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Reads and parses the sidecar of the index at `index_path`.
pub(crate) fn read_meta(index_path: &Path) -> Result<Meta, IndexError> {
    let meta_path = meta_path(index_path);
    let bytes = match fs::read(&meta_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IndexError::Corrupt {
                path: index_path.to_path_buf(),
                reason: format!("its sidecar {} is missing", meta_path.display()),
            })
        }
        Err(e) => return Err(IndexError::io(meta_path, e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| IndexError::Corrupt {
        path: index_path.to_path_buf(),
        reason: format!("its sidecar {} is unreadable: {e}", meta_path.display()),
    })
}

/// Length and CRC-32 of the file at `path`.
pub(crate) fn checksum(path: &Path) -> Result<FileSum, IndexError> {
    let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
    let mut input = Hashed::new(file);
    io::copy(&mut input, &mut io::sink()).map_err(|e| IndexError::io(path, e))?;
    Ok(input.sum())
}

/// Fsyncs the file at `path`.
pub(crate) fn sync_file(path: &Path) -> Result<(), IndexError> {
    OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| IndexError::io(path, e))
}

/// Writes `meta` to the temporary file `dest_tmp` and fsyncs it; the caller renames it
/// into place.
pub(crate) fn write_meta_tmp(dest_tmp: &Path, meta: &Meta) -> Result<(), IndexError> {
    let json = serde_json::to_vec_pretty(meta).map_err(IndexError::backend)?;
    let mut file = File::create(dest_tmp).map_err(|e| IndexError::io(dest_tmp, e))?;
    file.write_all(&json)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| IndexError::io(dest_tmp, e))
}

/// Renames `from` to `to` (atomic on POSIX file systems).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), IndexError> {
    fs::rename(from, to).map_err(|e| IndexError::io(to, e))
}

/// Fsyncs the directory holding `path`, so renames inside it survive a crash.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), IndexError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IndexError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_paths_append_to_the_file_name() {
        assert_eq!(
            meta_path(Path::new("/data/vectors.usearch")),
            PathBuf::from("/data/vectors.usearch.meta.json")
        );
        assert_eq!(
            with_suffix(Path::new("idx"), ".tmp"),
            PathBuf::from("idx.tmp")
        );
    }

    #[test]
    fn checksum_covers_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, vec![7u8; 3 << 20]).unwrap();
        let FileSum {
            bytes: len,
            crc32: crc,
        } = checksum(&path).unwrap();
        assert_eq!(len, 3 << 20);
        let mut bytes = fs::read(&path).unwrap();
        bytes[2 << 20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_ne!(checksum(&path).unwrap().crc32, crc);
    }
}
