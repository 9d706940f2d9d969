//! A filesystem that loses what was not fsynced when its "power" goes:
//! a FUSE filesystem (the `fuser` crate, mounted with mount(2) as root, so
//! neither libfuse nor fusermount is needed) kept in this process's memory.
//! Each regular file has the data written to it and the data it had at
//! its last fsync (or fdatasync); [`Volatile::power_loss`] turns every
//! file back to that durable content. Closing a file makes nothing
//! durable, as on a real disk.
//!
//! Writes through a file opened with O_SYNC or O_DSYNC are durable when
//! they return (nats-server writes its Raft snapshots and peer state that
//! way, not with fsync).
//!
//! Metadata operations (create, mkdir, rename, unlink, rmdir, truncate,
//! chmod) are durable at once: a power loss keeps them. That is the worst
//! case ext4's default `data=ordered` allows for the data, and so at least
//! as strict as it: ext4 journals metadata and commits it within its
//! commit interval (5 s) or at any fsync, but with delayed allocation a
//! file's unfsynced data has no blocks yet, and its on-disk size only
//! grows when that data is written back, so a crash can keep the metadata
//! (a created file, an unlink) and still lose the data — here it always
//! does. One exception follows ext4's default `auto_da_alloc`: a file
//! renamed over an existing one has its data made durable with the rename
//! (ext4 writes it before the rename commits, so a crash shows the old
//! file or the new, never an empty one: the atomic replace that
//! nats-server's index and metadata files rely on). Stricter than ext4:
//! its writeback makes data durable within about 30 s without any fsync,
//! and `auto_da_alloc` also flushes a file truncated to zero when it is
//! closed; neither happens here. A truncate cuts the durable content too
//! (the new size is metadata); growing a file by truncate extends it with
//! zeros.
//!
//! The kernel caches nothing that could outlive a power loss: every file
//! is opened with `FOPEN_DIRECT_IO` (no page cache) and attributes and
//! names are given a time-to-live of zero, so the mount stays in place
//! while the files under it revert.
#![allow(clippy::too_many_arguments)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;

/// Nothing is cached by the kernel (see the module's comment).
const TTL: Duration = Duration::ZERO;
/// What statfs reports as the filesystem's size (nats-server compares
/// its JetStream limits with the free space).
const CAPACITY: u64 = 4 << 30;
const BLOCK: u32 = 4096;

#[derive(Debug, Clone)]
enum Kind {
    File {
        /// What reads see now.
        data: Vec<u8>,
        /// What survives a power loss: the data at the last fsync.
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    parent: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Names pointing here (no hard links: 0 or 1 for files).
    links: u32,
    /// Open handles: an unlinked file lives on until the last is closed.
    open: u32,
}

/// The filesystem's contents; the FUSE side and [`Volatile`] share it.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<u64, Node>,
    next: u64,
    /// fsync and fdatasync calls on files so far.
    fsyncs: u64,
    /// When a file was last fsynced.
    last_fsync: Option<std::time::Instant>,
}

/// What a power loss would take now (or took): files and bytes whose
/// latest content was not fsynced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsynced {
    pub files: u64,
    /// Bytes that differ from the durable content: overwritten in place,
    /// appended, or cut by a truncate that grew the file again.
    pub bytes: u64,
}

type Res<T> = Result<T, Errno>;

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        let now = SystemTime::now();
        let root = Node {
            kind: Kind::Dir {
                entries: BTreeMap::new(),
            },
            parent: INodeNo::ROOT.0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: now,
            ctime: now,
            links: 2,
            open: 0,
        };
        Self {
            nodes: BTreeMap::from([(INodeNo::ROOT.0, root)]),
            next: INodeNo::ROOT.0 + 1,
            fsyncs: 0,
            last_fsync: None,
        }
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> Res<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.kind {
            Kind::Dir { entries } => Ok(entries),
            Kind::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.kind {
            Kind::Dir { entries } => Ok(entries),
            Kind::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.entries(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// A new file (`dir` false) or directory named `name` in `parent`.
    pub fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        mode: u16,
        uid: u32,
        gid: u32,
    ) -> Res<u64> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let now = SystemTime::now();
        let kind = if dir {
            Kind::Dir {
                entries: BTreeMap::new(),
            }
        } else {
            Kind::File {
                data: Vec::new(),
                durable: Vec::new(),
            }
        };
        self.nodes.insert(
            ino,
            Node {
                kind,
                parent,
                mode: mode & 0o7777,
                uid,
                gid,
                mtime: now,
                ctime: now,
                links: if dir { 2 } else { 1 },
                open: 0,
            },
        );
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Drops `ino` once nothing names it and nothing has it open.
    fn collect(&mut self, ino: u64) {
        if self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.links == 0 && n.open == 0)
        {
            self.nodes.remove(&ino);
        }
    }

    /// Unlinks a file (`dir` false) or removes an empty directory.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.kind, dir) {
            (Kind::Dir { entries }, true) if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Kind::File { .. }, true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.entries_mut(parent)?.remove(name);
        self.node_mut(ino)?.links = 0;
        self.collect(ino);
        Ok(())
    }

    /// rename(2) without flags: replaces a file, or an empty directory,
    /// at the new name.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        self.entries(new_parent)?;
        let moving_dir = matches!(self.node(ino)?.kind, Kind::Dir { .. });
        // A directory moved under itself would be cut off from the root.
        let mut up = new_parent;
        while moving_dir && up != INodeNo::ROOT.0 {
            if up == ino {
                return Err(Errno::EINVAL);
            }
            up = self.node(up)?.parent;
        }
        if let Ok(old) = self.lookup(new_parent, new_name) {
            if old == ino {
                return Ok(());
            }
            match (&self.node(old)?.kind, moving_dir) {
                (Kind::Dir { entries }, true) if !entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Kind::Dir { .. }, false) => return Err(Errno::EISDIR),
                (Kind::File { .. }, true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
            self.node_mut(old)?.links = 0;
            self.collect(old);
            // ext4's auto_da_alloc (on by default): a file renamed over
            // another has its data written before the rename commits, so
            // a crash shows the old file or the new one, never an empty one.
            if let Kind::File { data, durable } = &mut self.node_mut(ino)?.kind {
                durable.clone_from(data);
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        let node = self.node_mut(ino)?;
        node.parent = new_parent;
        node.ctime = SystemTime::now();
        Ok(())
    }

    fn file_mut(&mut self, ino: u64) -> Res<(&mut Vec<u8>, &mut Vec<u8>)> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File { data, durable } => Ok((data, durable)),
            Kind::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    /// Writes `bytes` at `offset`; with `sync` (a file opened O_SYNC or
    /// O_DSYNC) they are durable when the write returns, as that flag
    /// promises (the rest of the file as it was).
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8], sync: bool) -> Res<usize> {
        let start = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
        let end = start.checked_add(bytes.len()).ok_or(Errno::EFBIG)?;
        if u64::try_from(end).map_or(true, |e| e > CAPACITY) {
            return Err(Errno::ENOSPC);
        }
        let (data, durable) = self.file_mut(ino)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        if sync {
            if durable.len() < end {
                durable.resize(end, 0);
            }
            durable[start..end].copy_from_slice(bytes);
        }
        self.node_mut(ino)?.mtime = SystemTime::now();
        Ok(bytes.len())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Res<&[u8]> {
        match &self.node(ino)?.kind {
            Kind::File { data, .. } => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(&data[start..end])
            }
            Kind::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    /// A metadata operation: both the content and the durable content take
    /// the new size.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Res<()> {
        if size > CAPACITY {
            return Err(Errno::EFBIG);
        }
        let size = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
        let (data, durable) = self.file_mut(ino)?;
        data.resize(size, 0);
        durable.resize(size, 0);
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        node.ctime = node.mtime;
        Ok(())
    }

    /// fsync/fdatasync: the file's content becomes durable.
    pub fn fsync(&mut self, ino: u64) -> Res<()> {
        if let Kind::File { data, durable } = &mut self.node_mut(ino)?.kind {
            durable.clone_from(data);
            self.fsyncs += 1;
            self.last_fsync = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// The power goes: every file is back to its durable content.
    pub fn power_loss(&mut self) {
        for node in self.nodes.values_mut() {
            if let Kind::File { data, durable } = &mut node.kind {
                data.clone_from(durable);
            }
        }
    }

    /// What a power loss would lose now.
    pub fn unsynced(&self) -> Unsynced {
        let mut u = Unsynced::default();
        for node in self.nodes.values() {
            if let Kind::File { data, durable } = &node.kind
                && data != durable
            {
                u.files += 1;
                let changed = data.iter().zip(durable).filter(|(a, b)| a != b).count();
                u.bytes += (changed + data.len().abs_diff(durable.len())) as u64;
            }
        }
        u
    }

    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    fn size(&self, ino: u64) -> u64 {
        match self.nodes.get(&ino).map(|n| &n.kind) {
            Some(Kind::File { data, .. }) => data.len() as u64,
            _ => 0,
        }
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let n = self.node(ino)?;
        let (kind, size) = match &n.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64),
            Kind::Dir { entries } => (FileType::Directory, entries.len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.mode,
            nlink: n.links,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        })
    }

    fn used(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File { data, durable } => data.len().max(durable.len()) as u64,
                Kind::Dir { .. } => 0,
            })
            .sum()
    }
}

/// The FUSE side of a [`Tree`].
struct Fs {
    tree: Arc<Mutex<Tree>>,
}

fn lock(tree: &Mutex<Tree>) -> MutexGuard<'_, Tree> {
    // A panic while holding the lock leaves a tree that is still whole
    // (every operation checks before it changes anything).
    tree.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fs {
    fn entry(&self, reply: ReplyEntry, made: Res<u64>) {
        let tree = lock(&self.tree);
        match made.and_then(|ino| tree.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = lock(&self.tree).lookup(parent.0, name);
        self.entry(reply, found);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match lock(&self.tree).attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = lock(&self.tree);
        let done = (|| {
            if let Some(size) = size {
                tree.truncate(ino.0, size)?;
            }
            let node = tree.node_mut(ino.0)?;
            if let Some(mode) = mode {
                node.mode = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                node.uid = uid;
            }
            if let Some(gid) = gid {
                node.gid = gid;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => node.mtime = t,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            node.ctime = SystemTime::now();
            tree.attr(ino.0)
        })();
        match done {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing here needs devices, pipes or sockets.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let made = lock(&self.tree).make(
            parent.0,
            name,
            false,
            (mode & !umask) as u16,
            req.uid(),
            req.gid(),
        );
        self.entry(reply, made);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = lock(&self.tree).make(
            parent.0,
            name,
            true,
            (mode & !umask) as u16,
            req.uid(),
            req.gid(),
        );
        self.entry(reply, made);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.tree).remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.tree).remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut tree = lock(&self.tree);
        let done = if flags.is_empty() {
            tree.rename(parent.0, name, newparent.0, newname)
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            match tree.lookup(newparent.0, newname) {
                Ok(_) => Err(Errno::EEXIST),
                Err(_) => tree.rename(parent.0, name, newparent.0, newname),
            }
        } else {
            Err(Errno::EINVAL)
        };
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = lock(&self.tree);
        let opened = (|| {
            if flags.0 & libc::O_TRUNC != 0 {
                tree.truncate(ino.0, 0)?;
            }
            tree.node_mut(ino.0)?.open += 1;
            Ok(())
        })();
        match opened {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut tree = lock(&self.tree);
        let made = tree
            .make(
                parent.0,
                name,
                false,
                (mode & !umask) as u16,
                req.uid(),
                req.gid(),
            )
            .and_then(|ino| {
                tree.node_mut(ino)?.open += 1;
                tree.attr(ino)
            });
        match made {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match lock(&self.tree).read(ino.0, offset, size) {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut tree = lock(&self.tree);
        // O_APPEND writes at the end as this side knows it (the kernel's
        // idea of the size may be stale: nothing is cached).
        let offset = if flags.0 & libc::O_APPEND != 0 {
            tree.read(ino.0, 0, 0).map_or(offset, |_| tree.size(ino.0))
        } else {
            offset
        };
        let sync = flags.0 & libc::O_DSYNC != 0;
        match tree.write(ino.0, offset, data, sync) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut tree = lock(&self.tree);
        if let Ok(node) = tree.node_mut(ino.0) {
            node.open = node.open.saturating_sub(1);
        }
        tree.collect(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.tree).fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = lock(&self.tree);
        let entries = match tree.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let parent = tree.node(ino.0).map_or(ino.0, |n| n.parent);
        let mut all: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        for (name, child) in entries {
            let kind = match tree.node(*child).map(|n| &n.kind) {
                Ok(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((*child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is durable at once.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = lock(&self.tree);
        let blocks = CAPACITY / u64::from(BLOCK);
        let free = CAPACITY.saturating_sub(tree.used()) / u64::from(BLOCK);
        let files = tree.nodes.len() as u64;
        reply.statfs(blocks, free, free, files, 1 << 20, BLOCK, 255, BLOCK);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        match lock(&self.tree).node(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted [`Tree`]; unmounted when dropped.
pub struct Volatile {
    tree: Arc<Mutex<Tree>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Volatile {
    /// Mounts an empty filesystem on `at` (an existing directory). Needs
    /// root and /dev/fuse.
    pub fn mount(at: &Path) -> std::io::Result<Self> {
        let tree = Arc::new(Mutex::new(Tree::new()));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("natsmesh-volatile".into()),
            fuser::MountOption::Subtype("volatile".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        // Two threads: one slow request (a large write) does not stall the
        // broker's other files.
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(Fs { tree: tree.clone() }, at, &config)?;
        Ok(Self {
            tree,
            mountpoint: at.to_owned(),
            session: Some(session),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes: every file reverts to what it held at its last
    /// fsync. Call it once nothing writes here any more (the machine's
    /// processes killed); returns what was lost.
    pub fn power_loss(&self) -> Unsynced {
        let mut tree = lock(&self.tree);
        let lost = tree.unsynced();
        tree.power_loss();
        lost
    }

    /// What a power loss would lose now.
    pub fn unsynced(&self) -> Unsynced {
        lock(&self.tree).unsynced()
    }

    /// fsync and fdatasync calls so far.
    pub fn fsyncs(&self) -> u64 {
        lock(&self.tree).fsyncs()
    }

    /// When a file here was last fsynced.
    pub fn last_fsync(&self) -> Option<std::time::Instant> {
        lock(&self.tree).last_fsync
    }
}

impl Drop for Volatile {
    fn drop(&mut self) {
        // Unmounts without waiting for the session's thread: a mount
        // namespace that still holds a copy of the mount would keep it
        // (and the join) alive. A busy mount is detached lazily rather than
        // left behind.
        drop(self.session.take());
        let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == self.mountpoint.to_str())
        });
        if mounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(t: &mut Tree, name: &str) -> u64 {
        t.make(INodeNo::ROOT.0, OsStr::new(name), false, 0o644, 0, 0)
            .unwrap()
    }

    fn content(t: &Tree, name: &str) -> Vec<u8> {
        let ino = t.lookup(INodeNo::ROOT.0, OsStr::new(name)).unwrap();
        t.read(ino, 0, u32::MAX).unwrap().to_vec()
    }

    #[test]
    fn a_write_without_fsync_is_gone_after_power_loss() {
        let mut t = Tree::new();
        let f = file(&mut t, "blk");
        t.write(f, 0, b"acked", false).unwrap();
        assert_eq!(content(&t, "blk"), b"acked");
        assert_eq!(t.unsynced(), Unsynced { files: 1, bytes: 5 });
        t.power_loss();
        // The name survives (metadata is durable), the data does not.
        assert_eq!(content(&t, "blk"), b"");
        assert_eq!(t.unsynced(), Unsynced::default());
    }

    #[test]
    fn an_fsynced_write_survives_and_only_later_writes_are_lost() {
        let mut t = Tree::new();
        let f = file(&mut t, "blk");
        t.write(f, 0, b"one", false).unwrap();
        t.fsync(f).unwrap();
        t.write(f, 3, b"two", false).unwrap();
        t.write(f, 0, b"ONE", false).unwrap();
        assert_eq!(t.unsynced(), Unsynced { files: 1, bytes: 6 });
        t.power_loss();
        assert_eq!(content(&t, "blk"), b"one");
        assert_eq!(t.fsyncs(), 1);
    }

    #[test]
    fn a_write_through_o_dsync_is_durable_when_it_returns() {
        let mut t = Tree::new();
        let f = file(&mut t, "snap");
        t.write(f, 0, b"unsynced", false).unwrap();
        t.write(f, 8, b"+synced", true).unwrap();
        t.power_loss();
        // Only the synchronous write's bytes: the earlier ones were never
        // made durable (a hole of zeros stays where they were).
        assert_eq!(content(&t, "snap"), b"\0\0\0\0\0\0\0\0+synced");
    }

    #[test]
    fn fsync_is_per_file() {
        let mut t = Tree::new();
        let (a, b) = (file(&mut t, "a"), file(&mut t, "b"));
        t.write(a, 0, b"a", false).unwrap();
        t.write(b, 0, b"b", false).unwrap();
        t.fsync(a).unwrap();
        t.power_loss();
        assert_eq!(content(&t, "a"), b"a");
        assert_eq!(content(&t, "b"), b"");
    }

    #[test]
    fn metadata_is_durable_at_once_and_the_data_behind_it_is_not() {
        let mut t = Tree::new();
        // A new file renamed to a new name, no fsync: the rename survives,
        // the data does not (ext4 may lose it too).
        let fresh = file(&mut t, "meta.tmp");
        t.write(fresh, 0, b"meta", false).unwrap();
        let root = INodeNo::ROOT.0;
        t.rename(root, OsStr::new("meta.tmp"), root, OsStr::new("meta"))
            .unwrap();
        t.power_loss();
        assert_eq!(content(&t, "meta"), b"");
        assert_eq!(t.lookup(root, OsStr::new("meta.tmp")), Err(Errno::ENOENT));
        // Renamed over an existing file (ext4's auto_da_alloc): the new
        // data is durable with the rename, never an empty file.
        let old = file(&mut t, "index");
        t.write(old, 0, b"old", false).unwrap();
        t.fsync(old).unwrap();
        let new = file(&mut t, "index.tmp");
        t.write(new, 0, b"new", false).unwrap();
        t.rename(root, OsStr::new("index.tmp"), root, OsStr::new("index"))
            .unwrap();
        assert!(!t.nodes.contains_key(&old), "the replaced file is freed");
        t.power_loss();
        assert_eq!(content(&t, "index"), b"new");
        // A truncate cuts the durable content too.
        let f = file(&mut t, "log");
        t.write(f, 0, b"0123456789", false).unwrap();
        t.fsync(f).unwrap();
        t.truncate(f, 4).unwrap();
        t.power_loss();
        assert_eq!(content(&t, "log"), b"0123");
        // An unlink is durable.
        t.remove(INodeNo::ROOT.0, OsStr::new("log"), false).unwrap();
        t.power_loss();
        assert_eq!(
            t.lookup(INodeNo::ROOT.0, OsStr::new("log")),
            Err(Errno::ENOENT)
        );
    }

    #[test]
    fn directories_keep_their_rules() {
        let mut t = Tree::new();
        let d = t
            .make(INodeNo::ROOT.0, OsStr::new("d"), true, 0o755, 0, 0)
            .unwrap();
        t.make(d, OsStr::new("f"), false, 0o644, 0, 0).unwrap();
        assert_eq!(
            t.remove(INodeNo::ROOT.0, OsStr::new("d"), true),
            Err(Errno::ENOTEMPTY)
        );
        assert_eq!(
            t.make(d, OsStr::new("f"), false, 0o644, 0, 0),
            Err(Errno::EEXIST)
        );
        let sub = t.make(d, OsStr::new("sub"), true, 0o755, 0, 0).unwrap();
        assert_eq!(
            t.rename(INodeNo::ROOT.0, OsStr::new("d"), sub, OsStr::new("x")),
            Err(Errno::EINVAL),
            "a directory moved into itself"
        );
        // An unlinked file still open lives until it is closed.
        let f = t.lookup(d, OsStr::new("f")).unwrap();
        t.node_mut(f).unwrap().open = 1;
        t.remove(d, OsStr::new("f"), false).unwrap();
        assert!(t.nodes.contains_key(&f));
        t.node_mut(f).unwrap().open = 0;
        t.collect(f);
        assert!(!t.nodes.contains_key(&f));
    }
}
