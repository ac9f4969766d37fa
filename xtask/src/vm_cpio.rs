//! An initramfs built in memory and written as an uncompressed newc cpio: no cpio tool, no root
//! needed for device nodes, and the kernel unpacks it faster under TCG than a compressed one.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

enum Node {
    Dir,
    File { data: Data, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

enum Data {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// Guest paths (relative, no leading '/') to nodes. Sorted, so a directory is always written
/// before what it contains, which the kernel's unpacker needs.
#[derive(Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Lexical normalisation: `a/./b/../c` -> `a/c`, relative to the guest's root.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

impl Tree {
    /// Follows symlinks already in the tree through every component of `path` but the last, so
    /// that `lib/modules/x` lands in `usr/lib/modules/x` when `lib -> usr/lib`.
    fn resolve_parent(&self, path: &str) -> anyhow::Result<String> {
        let mut cur = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let next = if cur.is_empty() {
                (*part).to_owned()
            } else {
                format!("{cur}/{part}")
            };
            if i + 1 == parts.len() {
                return Ok(next);
            }
            cur = self.follow(next, 0)?;
        }
        Ok(cur)
    }

    fn follow(&self, path: String, depth: usize) -> anyhow::Result<String> {
        ensure!(depth < 40, "symlink loop at /{path}");
        match self.nodes.get(&path) {
            Some(Node::Symlink(target)) => {
                let parent = Path::new("/").join(&path);
                let joined = parent.parent().unwrap_or(Path::new("/")).join(target);
                let next = self.resolve_parent(&normalize(&joined))?;
                self.follow(next, depth + 1)
            }
            _ => Ok(path),
        }
    }

    fn insert(&mut self, path: &str, node: Node) -> anyhow::Result<String> {
        let key = self.resolve_parent(path)?;
        ensure!(!key.is_empty(), "cannot replace the root directory");
        if let Some((parent, _)) = key.rsplit_once('/') {
            self.dir(parent)?;
        }
        match (self.nodes.get(&key), &node) {
            (Some(Node::Dir), Node::Dir) => {}
            (Some(Node::Symlink(a)), Node::Symlink(b)) if a == b => {}
            (Some(_), Node::Dir | Node::Symlink(_)) => {
                bail!("initramfs: /{key} is already there as something else")
            }
            // A later file replaces an earlier one: the caller's choice wins.
            _ => {
                self.nodes.insert(key.clone(), node);
            }
        }
        Ok(key)
    }

    /// A directory and its parents.
    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let key = self.resolve_parent(path)?;
        let key = self.follow(key, 0)?;
        if key.is_empty() || matches!(self.nodes.get(&key), Some(Node::Dir)) {
            return Ok(());
        }
        self.insert(&key, Node::Dir).map(drop)
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> anyhow::Result<()> {
        let data = Data::Bytes(data.into());
        self.insert(path, Node::File { data, mode }).map(drop)
    }

    pub fn host_file(&mut self, path: &str, host: &Path, mode: u32) -> anyhow::Result<()> {
        let data = Data::Host(host.to_owned());
        self.insert(path, Node::File { data, mode }).map(drop)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.insert(path, Node::Symlink(target.to_owned()))
            .map(drop)
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> anyhow::Result<()> {
        self.insert(path, Node::CharDev { major, minor }).map(drop)
    }

    /// Copies a host file or directory entry to the same path in the guest, recreating every
    /// symlink met on the way (merged /usr: `/lib -> usr/lib`), so paths that ldd prints and
    /// paths that programs have compiled in both work unchanged.
    pub fn mirror(&mut self, host: &Path) -> anyhow::Result<()> {
        self.mirror_at(host, 0)
    }

    fn mirror_at(&mut self, host: &Path, depth: usize) -> anyhow::Result<()> {
        ensure!(depth < 40, "symlink loop at {}", host.display());
        let comps: Vec<_> = host
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let mut cur = PathBuf::from("/");
        for (i, c) in comps.iter().enumerate() {
            let next = cur.join(c);
            let meta = fs::symlink_metadata(&next)
                .with_context(|| format!("initramfs: {} is missing", next.display()))?;
            let guest = normalize(&next);
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&next)?;
                self.symlink(&guest, &target.to_string_lossy())?;
                let mut resolved = cur.join(&target);
                resolved.extend(&comps[i + 1..]);
                return self.mirror_at(Path::new(&format!("/{}", normalize(&resolved))), depth + 1);
            }
            if meta.is_dir() {
                self.dir(&guest)?;
            } else {
                ensure!(
                    i + 1 == comps.len(),
                    "{} is not a directory",
                    next.display()
                );
                self.host_file(&guest, &next, meta.permissions().mode() & 0o7777)?;
            }
            cur = next;
        }
        Ok(())
    }

    /// A whole host directory, recursively, at the same path.
    pub fn mirror_tree(&mut self, host: &Path) -> anyhow::Result<()> {
        self.mirror(host)?;
        if fs::symlink_metadata(host)?.is_dir() {
            for entry in fs::read_dir(host)? {
                self.mirror_tree(&entry?.path())?;
            }
        }
        Ok(())
    }

    /// A host executable at its own path, with the shared libraries and loader it needs.
    pub fn binary(&mut self, host: &Path) -> anyhow::Result<()> {
        self.mirror(host)?;
        for lib in shared_libs(host)? {
            self.mirror(&lib)?;
        }
        Ok(())
    }

    /// Writes the archive. Timestamps and owners are zero: the same inputs give the same bytes.
    pub fn write_newc(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let mut w = NewcWriter { out, ino: 1 };
        for (path, node) in &self.nodes {
            let (mode, data, rdev) = match node {
                Node::Dir => (0o040_755, Vec::new(), (0, 0)),
                Node::File { data, mode } => {
                    let bytes = match data {
                        Data::Bytes(b) => b.clone(),
                        Data::Host(p) => {
                            fs::read(p).with_context(|| format!("read {}", p.display()))?
                        }
                    };
                    (0o100_000 | mode, bytes, (0, 0))
                }
                Node::Symlink(t) => (0o120_777, t.as_bytes().to_vec(), (0, 0)),
                Node::CharDev { major, minor } => (0o020_600, Vec::new(), (*major, *minor)),
            };
            w.entry(path, mode, &data, rdev)?;
        }
        w.entry("TRAILER!!!", 0, &[], (0, 0))?;
        Ok(())
    }
}

struct NewcWriter<'a, W: Write> {
    out: &'a mut W,
    ino: u32,
}

impl<W: Write> NewcWriter<'_, W> {
    /// One record: 110-byte ASCII header, NUL-terminated name and data, each padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> io::Result<()> {
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170_000 == 0o040_000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        self.out.write_all(&[0; 3][..(4 - len % 4) % 4])
    }
}

/// Absolute paths of the shared objects `ldd` says the binary loads; none for a static one.
fn shared_libs(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("run ldd (part of libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to copy.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: {}", bin.display(), line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_aligned_and_terminated() {
        let mut t = Tree::default();
        t.bytes("etc/hello", b"hi\n".to_vec(), 0o644).unwrap();
        let mut out = Vec::new();
        t.write_newc(&mut out).unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // The parent directory comes first, the trailer last.
        assert!(text.find("etc\0").unwrap() < text.find("etc/hello\0").unwrap());
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn paths_resolve_through_symlinks_in_the_tree() {
        let mut t = Tree::default();
        t.symlink("lib", "usr/lib").unwrap();
        t.bytes("lib/modules/x.ko", vec![1], 0o644).unwrap();
        assert!(t.nodes.contains_key("usr/lib/modules/x.ko"));
        assert!(matches!(t.nodes.get("lib"), Some(Node::Symlink(_))));
        // A directory over an existing symlink is an error, not a silent shadow.
        t.bytes("a", vec![], 0o644).unwrap();
        assert!(t.dir("a").is_err());
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/usr/bin/../lib/./x")), "usr/lib/x");
    }
}
