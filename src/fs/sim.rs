//! [`SimFs`]: a simulated, in-memory file system for crash and error tests.
//!
//! It keeps two views of everything: what a process sees now, and what is on stable storage. A
//! file's bytes reach stable storage at `sync_data`/`sync_all`; a directory entry (a create,
//! rename, hard link, removal or new subdirectory) at `sync_dir` of the directory that holds it.
//! [`SimFs::power_loss`] throws away what was not made durable — the worst POSIX allows:
//!
//! - unsynced bytes of a file are lost, or (with [`PowerLoss::Random`]) survive up to a
//!   512-byte sector boundary, torn;
//! - each unsynced entry of a directory independently keeps its durable state or (randomly)
//!   its new one, so a rename may be undone, half done (both names) or done — but, being one
//!   operation, never leaves a file that had a durable name with no name — and a new file whose
//!   directory was not synced may vanish with its fsynced bytes;
//! - after a failed fsync the file's unsynced pages are dropped, as Linux does: later reads (and
//!   what survives) see the old durable bytes where the file had them and zeros beyond, at the
//!   length the file had reached, and a later successful fsync does not bring the data back.
//!
//! Faults: the `nth` operation of a kind from now on fails with EIO or ENOSPC, once or from then
//! on ([`SimFs::inject`]); a capacity makes writes past it fail with ENOSPC
//! ([`SimFs::set_capacity`]); the power goes off when the count of mutating operations reaches
//! a given index ([`SimFs::power_off_at`]), after which every operation fails until
//! [`SimFs::power_loss`]. Everything is seeded and deterministic for a deterministic caller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::SharedBytes;
use crate::fs::{
    DirEntry, EIO, ENOSPC, FileLock, FileSystem, Metadata, ReadableFile, WritableFile,
};

/// Bytes per sector: unsynced data survives a power loss torn at a multiple of this.
const SECTOR: usize = 512;

/// Which operations a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Reads: `read`, `read_exact_at`, `map`.
    Read,
    /// Writes to an open file (and `set_len`).
    Write,
    /// `sync_data` and `sync_all` of a file.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// `create`, `create_new`, `open_append`, `create_dir`, `try_lock` of a new file.
    Create,
    /// `rename`.
    Rename,
    /// `hard_link`.
    Link,
    /// `remove_file`, `remove_dir`.
    Remove,
    /// `read_dir`, `metadata`, `open_read`.
    List,
    /// Every operation.
    Any,
}

/// The error a fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: an I/O error.
    Eio,
    /// `ENOSPC`: no space left on device.
    Enospc,
}

impl FaultKind {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FaultKind::Eio => EIO,
            FaultKind::Enospc => ENOSPC,
        })
    }
}

/// What survives a [`SimFs::power_loss`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerLoss {
    /// Everything not made durable is lost: files hold their synced bytes, directories their
    /// synced entries.
    DropUnsynced,
    /// Each unsynced directory entry keeps its old or new state and each file's unsynced bytes
    /// survive up to a random sector boundary (or not at all), by the seeded generator.
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir(u64),
}

#[derive(Default)]
struct Inode {
    /// What reads see now.
    data: Vec<u8>,
    /// What is on stable storage.
    synced: Vec<u8>,
    /// `data` and `synced` agree below this offset.
    dirty_from: usize,
    /// Live names (directory entries) of this file.
    links: u32,
}

#[derive(Default)]
struct Dir {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

struct Fault {
    op: FaultOp,
    /// Matching operations still to pass before this one fires.
    skip: u64,
    kind: FaultKind,
    persistent: bool,
}

struct State {
    rng: u64,
    /// Bumped at every power loss: handles opened before it fail.
    generation: u64,
    files: HashMap<u64, Inode>,
    dirs: HashMap<u64, Dir>,
    next_id: u64,
    /// Mutating operations so far.
    mutations: u64,
    power_off_at: Option<u64>,
    off: bool,
    faults: Vec<Fault>,
    locks: HashSet<(u64, u64)>,
    capacity: Option<u64>,
    /// Bytes of files that have a live name.
    used: u64,
    trace: Option<Vec<String>>,
}

const ROOT: u64 = 0;

/// A simulated in-memory file system with power loss and fault injection; see the module docs.
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("SimFs")
            .field("mutations", &state.mutations)
            .field("off", &state.off)
            .finish()
    }
}

fn power_off_error() -> io::Error {
    io::Error::other("simulated power loss: the file system is off")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

/// The components of `path` as names, with `.` and `..` resolved (a relative path is taken from
/// the root).
fn components(path: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl State {
    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Starts one operation of kind `op`: fails when the power is off, goes off here, or a fault
    /// fires.
    fn begin(
        &mut self,
        op: FaultOp,
        mutating: bool,
        what: impl FnOnce() -> String,
    ) -> io::Result<()> {
        if self.off {
            return Err(power_off_error());
        }
        if mutating {
            if self.power_off_at.is_some_and(|at| self.mutations >= at) {
                self.off = true;
                return Err(power_off_error());
            }
            self.mutations += 1;
            if let Some(trace) = &mut self.trace {
                trace.push(format!("#{} {}", self.mutations - 1, what()));
            }
        }
        let mut fired = None;
        for (i, fault) in self.faults.iter_mut().enumerate() {
            if fault.op == op || fault.op == FaultOp::Any {
                if fault.skip == 0 {
                    fired = Some(i);
                    break;
                }
                fault.skip -= 1;
            }
        }
        if let Some(i) = fired {
            let kind = self.faults[i].kind;
            if !self.faults[i].persistent {
                self.faults.remove(i);
            }
            return Err(kind.error());
        }
        Ok(())
    }

    fn check_generation(&self, generation: u64) -> io::Result<()> {
        if self.off || generation != self.generation {
            return Err(power_off_error());
        }
        Ok(())
    }

    fn dir(&self, id: u64) -> &Dir {
        self.dirs
            .get(&id)
            .expect("a live directory node has its directory")
    }

    fn dir_mut(&mut self, id: u64) -> &mut Dir {
        self.dirs
            .get_mut(&id)
            .expect("a live directory node has its directory")
    }

    /// The node at `path` in the live tree.
    fn lookup(&self, path: &Path) -> io::Result<Node> {
        let mut node = Node::Dir(ROOT);
        for name in components(path) {
            let Node::Dir(dir) = node else {
                return Err(not_found(path));
            };
            node = *self
                .dir(dir)
                .live
                .get(&name)
                .ok_or_else(|| not_found(path))?;
        }
        Ok(node)
    }

    /// The directory holding `path` and `path`'s last name.
    fn parent(&self, path: &Path) -> io::Result<(u64, String)> {
        let mut names = components(path);
        let Some(name) = names.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root has no parent",
            ));
        };
        let mut dir = ROOT;
        for component in names {
            match self.dir(dir).live.get(&component) {
                Some(Node::Dir(id)) => dir = *id,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{}: a parent is a file", path.display()),
                    ));
                }
                None => return Err(not_found(path)),
            }
        }
        Ok((dir, name))
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Drops a live name of file `id`.
    fn unlink(&mut self, id: u64) {
        if let Some(inode) = self.files.get_mut(&id) {
            inode.links = inode.links.saturating_sub(1);
            if inode.links == 0 {
                self.used = self.used.saturating_sub(inode.data.len() as u64);
            }
        }
    }

    fn link(&mut self, id: u64) {
        if let Some(inode) = self.files.get_mut(&id) {
            if inode.links == 0 {
                self.used += inode.data.len() as u64;
            }
            inode.links += 1;
        }
    }

    /// Creates a file at `path`: a new empty one (replacing a file there unless `exclusive`).
    fn create_file(&mut self, path: &Path, exclusive: bool) -> io::Result<u64> {
        let (dir, name) = self.parent(path)?;
        match self.dir(dir).live.get(&name).copied() {
            Some(Node::Dir(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ));
            }
            Some(Node::File(_)) if exclusive => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: file exists", path.display()),
                ));
            }
            Some(Node::File(id)) => {
                // `create` truncates the existing file in place (same inode).
                let inode = self.files.get_mut(&id).expect("file node has an inode");
                let old = inode.data.len() as u64;
                inode.data.clear();
                inode.dirty_from = 0;
                self.used = self.used.saturating_sub(old);
                return Ok(id);
            }
            None => {}
        }
        let id = self.new_id();
        self.files.insert(id, Inode::default());
        self.dir_mut(dir).live.insert(name, Node::File(id));
        self.link(id);
        Ok(id)
    }

    fn write_at(&mut self, id: u64, pos: u64, buf: &[u8]) -> io::Result<u64> {
        let inode = self.files.get(&id).expect("open file has an inode");
        let pos = usize::try_from(pos).map_err(|_| io::Error::other("offset too large"))?;
        let end = pos + buf.len();
        let growth = end.saturating_sub(inode.data.len()) as u64;
        let linked = inode.links > 0;
        if linked && growth > 0 && self.capacity.is_some_and(|cap| self.used + growth > cap) {
            // Fill what fits, then fail like a full disk.
            let room = self
                .capacity
                .unwrap_or(0)
                .saturating_sub(self.used)
                .min(growth) as usize;
            let fits = (inode.data.len().saturating_sub(pos) + room).min(buf.len());
            self.apply_write(id, pos, &buf[..fits]);
            return Err(FaultKind::Enospc.error());
        }
        self.apply_write(id, pos, buf);
        Ok(end as u64)
    }

    fn apply_write(&mut self, id: u64, pos: usize, buf: &[u8]) {
        let inode = self.files.get_mut(&id).expect("open file has an inode");
        let before = inode.data.len();
        if inode.data.len() < pos {
            inode.data.resize(pos, 0);
        }
        let overlap = (inode.data.len() - pos).min(buf.len());
        inode.data[pos..pos + overlap].copy_from_slice(&buf[..overlap]);
        inode.data.extend_from_slice(&buf[overlap..]);
        inode.dirty_from = inode.dirty_from.min(pos.min(before));
        if inode.links > 0 {
            self.used += (inode.data.len() - before) as u64;
        }
    }

    fn sync_file(&mut self, id: u64) {
        let inode = self.files.get_mut(&id).expect("open file has an inode");
        let from = inode
            .dirty_from
            .min(inode.synced.len())
            .min(inode.data.len());
        inode.synced.truncate(from);
        inode.synced.extend_from_slice(&inode.data[from..]);
        inode.dirty_from = inode.data.len();
    }

    /// A failed fsync: the unsynced pages are dropped (old durable bytes where there were
    /// some, zeros beyond), now and after a power loss.
    fn fail_sync(&mut self, id: u64) {
        let inode = self.files.get_mut(&id).expect("open file has an inode");
        let from = inode.dirty_from.min(inode.data.len());
        for (at, byte) in inode.data.iter_mut().enumerate().skip(from) {
            *byte = inode.synced.get(at).copied().unwrap_or(0);
        }
        self.sync_file(id);
    }

    /// What of file `id` survives a power loss.
    fn surviving_bytes(&mut self, id: u64, mode: PowerLoss) -> Vec<u8> {
        let random = self.next_random();
        let inode = self.files.get(&id).expect("file node has an inode");
        let from = inode
            .dirty_from
            .min(inode.data.len())
            .min(inode.synced.len());
        if inode.data == inode.synced {
            return inode.data.clone();
        }
        match mode {
            PowerLoss::DropUnsynced => inode.synced.clone(),
            PowerLoss::Random => {
                // Cut the new bytes at a sector boundary between the first unsynced byte and
                // the end of the new data; beyond the cut the old bytes remain.
                let first = from / SECTOR;
                let last = inode.data.len().div_ceil(SECTOR);
                let sector = first + (random % (last - first + 1) as u64) as usize;
                let cut = (sector * SECTOR).clamp(from, inode.data.len());
                let mut out = inode.data[..cut].to_vec();
                if inode.synced.len() > cut {
                    out.extend_from_slice(&inode.synced[cut..]);
                }
                out
            }
        }
    }

    /// A power loss: keeps of every file and directory entry what survives under `mode` (see
    /// the module docs), then turns the power back on with no faults, locks or open handles.
    fn power_loss(&mut self, mode: PowerLoss) {
        let (mut new_files, mut new_dirs) = self.surviving_tree(mode);
        self.restore_lost_names(mode, &mut new_files, &mut new_dirs);
        self.used = new_files
            .values()
            .filter(|f| f.links > 0)
            .map(|f| f.data.len() as u64)
            .sum();
        self.files = new_files;
        self.dirs = new_dirs;
        self.generation += 1;
        self.off = false;
        self.power_off_at = None;
        self.faults.clear();
        self.locks.clear();
    }

    /// Every name of directory `dir_id`, live or durable, sorted, each once.
    fn entry_names(&self, dir_id: u64) -> Vec<String> {
        let dir = self.dir(dir_id);
        let mut names: Vec<String> = dir.live.keys().cloned().collect();
        names.extend(dir.durable.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// The node entry `name` of directory `dir_id` holds after a power loss: its live one when
    /// that is durable, else the durable one (`DropUnsynced`) or either by the seeded generator
    /// (`Random`); `None` when the entry is gone.
    fn surviving_entry(&mut self, dir_id: u64, name: &str, mode: PowerLoss) -> Option<Node> {
        let (live, durable) = {
            let dir = self.dir(dir_id);
            (dir.live.get(name).copied(), dir.durable.get(name).copied())
        };
        if live == durable {
            live
        } else {
            match mode {
                PowerLoss::DropUnsynced => durable,
                PowerLoss::Random => {
                    if self.next_random().is_multiple_of(2) {
                        live
                    } else {
                        durable
                    }
                }
            }
        }
    }

    /// The files and directories reachable from the root after a power loss, each directory
    /// holding its surviving entries (all durable) and each file its surviving bytes and the
    /// count of its surviving names.
    fn surviving_tree(&mut self, mode: PowerLoss) -> (HashMap<u64, Inode>, HashMap<u64, Dir>) {
        let mut new_files: HashMap<u64, Inode> = HashMap::new();
        let mut new_dirs: HashMap<u64, Dir> = HashMap::new();
        let mut pending = vec![ROOT];
        while let Some(dir_id) = pending.pop() {
            let names = self.entry_names(dir_id);
            let mut kept = BTreeMap::new();
            for name in names {
                let chosen = self.surviving_entry(dir_id, &name, mode);
                let Some(node) = chosen else { continue };
                match node {
                    Node::Dir(id) => {
                        if new_dirs.contains_key(&id) || !self.dirs.contains_key(&id) {
                            continue;
                        }
                        new_dirs.insert(id, Dir::default());
                        pending.push(id);
                    }
                    Node::File(id) => {
                        let inode = new_files.entry(id).or_insert_with(|| {
                            let data = self.surviving_bytes(id, mode);
                            Inode {
                                dirty_from: data.len(),
                                synced: data.clone(),
                                data,
                                links: 0,
                            }
                        });
                        inode.links += 1;
                    }
                }
                kept.insert(name, node);
            }
            new_dirs.insert(
                dir_id,
                Dir {
                    durable: kept.clone(),
                    live: kept,
                },
            );
        }
        (new_files, new_dirs)
    }

    /// Gives back its durable name to every file that had one, still has a live one (moved,
    /// not removed) and kept no name in `new_dirs`, when that name is free there.
    fn restore_lost_names(
        &mut self,
        mode: PowerLoss,
        new_files: &mut HashMap<u64, Inode>,
        new_dirs: &mut HashMap<u64, Dir>,
    ) {
        // A rename is one operation: undone, done (or both names), never neither. A file that
        // had a durable name and still has a live one (moved, not removed) but kept no name
        // gets a durable name back.
        let live_files: HashSet<u64> = self
            .dirs
            .values()
            .flat_map(|d| d.live.values())
            .filter_map(|node| match node {
                Node::File(id) => Some(*id),
                Node::Dir(_) => None,
            })
            .collect();
        let mut lost: Vec<(u64, String, u64)> = Vec::new();
        for (dir_id, dir) in &self.dirs {
            for (name, node) in &dir.durable {
                if let Node::File(id) = node
                    && live_files.contains(id)
                    && !new_files.contains_key(id)
                    && new_dirs.contains_key(dir_id)
                {
                    lost.push((*dir_id, name.clone(), *id));
                }
            }
        }
        lost.sort();
        for (dir_id, name, id) in lost {
            let free = new_dirs
                .get(&dir_id)
                .is_some_and(|d| !d.live.contains_key(&name));
            if new_files.contains_key(&id) || !free {
                continue;
            }
            let data = self.surviving_bytes(id, mode);
            new_files.insert(
                id,
                Inode {
                    dirty_from: data.len(),
                    synced: data.clone(),
                    data,
                    links: 1,
                },
            );
            if let Some(dir) = new_dirs.get_mut(&dir_id) {
                dir.live.insert(name.clone(), Node::File(id));
                dir.durable.insert(name, Node::File(id));
            }
        }
    }
}

impl SimFs {
    /// An empty file system (only `/`) whose random choices follow `seed`.
    pub fn new(seed: u64) -> Arc<SimFs> {
        let mut dirs = HashMap::new();
        dirs.insert(ROOT, Dir::default());
        Arc::new(SimFs {
            state: Arc::new(Mutex::new(State {
                rng: seed ^ 0x5EED_F10E_57A7_E000,
                generation: 0,
                files: HashMap::new(),
                dirs,
                next_id: ROOT,
                mutations: 0,
                power_off_at: None,
                off: false,
                faults: Vec::new(),
                locks: HashSet::new(),
                capacity: None,
                used: 0,
                trace: None,
            })),
        })
    }

    /// Mutating operations so far (creates, writes, syncs, renames, links, removals, new
    /// directories): the index [`SimFs::power_off_at`] counts in.
    pub fn mutations(&self) -> u64 {
        self.state.lock().mutations
    }

    /// The power goes off when the mutation count reaches `index`: that operation and every
    /// later one fail until [`SimFs::power_loss`]. `None` keeps the power on.
    pub fn power_off_at(&self, index: Option<u64>) {
        let mut state = self.state.lock();
        state.power_off_at = index;
        if index.is_some_and(|at| state.mutations >= at) {
            state.off = true;
        }
    }

    /// Whether the power is off (every operation fails).
    pub fn is_off(&self) -> bool {
        self.state.lock().off
    }

    /// A power loss (see the module docs): afterwards the file system holds what survived,
    /// every handle opened before fails, locks are released, faults cleared, and the power is on.
    pub fn power_loss(&self, mode: PowerLoss) {
        self.state.lock().power_loss(mode);
    }

    /// The `nth` (0 = the next) operation of kind `op` from now on fails with `kind`; with
    /// `persistent` every matching operation from then on does.
    pub fn inject(&self, op: FaultOp, nth: u64, kind: FaultKind, persistent: bool) {
        self.state.lock().faults.push(Fault {
            op,
            skip: nth,
            kind,
            persistent,
        });
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Writes that would grow the bytes held by named files past `bytes` fail with ENOSPC after
    /// filling what fits (`None`: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes;
    }

    /// Bytes held by files that have a name.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used
    }

    /// Records every mutating operation from now on (read with [`SimFs::trace`]).
    pub fn enable_trace(&self) {
        self.state.lock().trace.get_or_insert_with(Vec::new);
    }

    /// The recorded operations, `#index operation path`.
    pub fn trace(&self) -> Vec<String> {
        self.state.lock().trace.clone().unwrap_or_default()
    }

    /// Every file under `dir` (recursively) with its length, as paths relative to `dir`, sorted.
    pub fn files_under(&self, dir: &Path) -> Vec<(String, u64)> {
        let state = self.state.lock();
        let mut out = Vec::new();
        if let Ok(Node::Dir(id)) = state.lookup(dir) {
            let mut pending = vec![(id, String::new())];
            while let Some((id, prefix)) = pending.pop() {
                for (name, node) in &state.dir(id).live {
                    let path = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}/{name}")
                    };
                    match node {
                        Node::Dir(child) => pending.push((*child, path)),
                        Node::File(file) => {
                            let len = state.files.get(file).map_or(0, |f| f.data.len() as u64);
                            out.push((path, len));
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Flips bits of the byte at `offset` of the file at `path` in both views (damage on disk).
    pub fn corrupt(&self, path: &Path, offset: u64, mask: u8) -> io::Result<()> {
        let mut state = self.state.lock();
        let Node::File(id) = state.lookup(path)? else {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory"));
        };
        let inode = state.files.get_mut(&id).expect("file node has an inode");
        let at = offset as usize;
        if at >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past the end",
            ));
        }
        inode.data[at] ^= mask;
        if at < inode.synced.len() {
            inode.synced[at] ^= mask;
        }
        Ok(())
    }
}

struct SimWritable {
    state: Arc<Mutex<State>>,
    id: u64,
    generation: u64,
    pos: u64,
    path: PathBuf,
}

impl WritableFile for SimWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_generation(self.generation)?;
        let path = &self.path;
        if let Err(e) = state.begin(FaultOp::Write, true, || {
            format!("write {} +{}", path.display(), buf.len())
        }) {
            if !state.off {
                // An injected write error: an unknown (seeded) prefix reached the file.
                let keep = (state.next_random() % (buf.len() as u64 + 1)) as usize;
                let _ = state.write_at(self.id, self.pos, &buf[..keep]);
            }
            return Err(e);
        }
        match state.write_at(self.id, self.pos, buf) {
            Ok(end) => {
                self.pos = end;
                Ok(())
            }
            Err(e) => {
                // A full disk: the length reached is unknown to the writer.
                self.pos = state.files.get(&self.id).map_or(0, |f| f.data.len() as u64);
                Err(e)
            }
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_generation(self.generation)?;
        let path = &self.path;
        match state.begin(FaultOp::Sync, true, || format!("sync {}", path.display())) {
            Ok(()) => {
                state.sync_file(self.id);
                Ok(())
            }
            Err(e) => {
                if !state.off {
                    state.fail_sync(self.id);
                }
                Err(e)
            }
        }
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_generation(self.generation)?;
        let path = &self.path;
        state.begin(FaultOp::Write, true, || {
            format!("set_len {} {len}", path.display())
        })?;
        let new_len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        let inode = state
            .files
            .get_mut(&self.id)
            .expect("open file has an inode");
        let before = inode.data.len();
        inode.data.resize(new_len, 0);
        inode.dirty_from = inode.dirty_from.min(new_len.min(before));
        let linked = inode.links > 0;
        if linked {
            state.used = (state.used + new_len as u64).saturating_sub(before as u64);
        }
        self.pos = len;
        Ok(())
    }
}

struct SimReadable {
    state: Arc<Mutex<State>>,
    id: u64,
    generation: u64,
    len: u64,
}

impl ReadableFile for SimReadable {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_generation(self.generation)?;
        state.begin(FaultOp::Read, false, String::new)?;
        let data = &state
            .files
            .get(&self.id)
            .expect("open file has an inode")
            .data;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.checked_add(buf.len());
        match end.and_then(|end| data.get(start..end)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            )),
        }
    }

    fn map(&self) -> io::Result<SharedBytes> {
        let mut state = self.state.lock();
        state.check_generation(self.generation)?;
        state.begin(FaultOp::Read, false, String::new)?;
        let data = state
            .files
            .get(&self.id)
            .expect("open file has an inode")
            .data
            .clone();
        Ok(Arc::new(data))
    }
}

#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    key: (u64, u64),
}

impl FileLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.key);
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("mutations", &self.mutations)
            .finish()
    }
}

impl SimFs {
    fn writable(&self, state: &State, id: u64, pos: u64, path: &Path) -> Box<dyn WritableFile> {
        Box::new(SimWritable {
            state: Arc::clone(&self.state),
            id,
            generation: state.generation,
            pos,
            path: path.to_path_buf(),
        })
    }
}

impl FileSystem for SimFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Create, true, || {
            format!("create_new {}", path.display())
        })?;
        let id = state.create_file(path, true)?;
        Ok(self.writable(&state, id, 0, path))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Create, true, || {
            format!("create {}", path.display())
        })?;
        let id = state.create_file(path, false)?;
        Ok(self.writable(&state, id, 0, path))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Create, false, String::new)?;
        let Node::File(id) = state.lookup(path)? else {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        };
        let len = state.files.get(&id).map_or(0, |f| f.data.len() as u64);
        Ok(self.writable(&state, id, len, path))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadableFile>> {
        let mut state = self.state.lock();
        state.begin(FaultOp::List, false, String::new)?;
        let Node::File(id) = state.lookup(path)? else {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        };
        let len = state.files.get(&id).map_or(0, |f| f.data.len() as u64);
        Ok(Arc::new(SimReadable {
            state: Arc::clone(&self.state),
            id,
            generation: state.generation,
            len,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Read, false, String::new)?;
        let Node::File(id) = state.lookup(path)? else {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        };
        Ok(state
            .files
            .get(&id)
            .map(|f| f.data.clone())
            .unwrap_or_default())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Rename, true, || {
            format!("rename {} -> {}", from.display(), to.display())
        })?;
        let (from_dir, from_name) = state.parent(from)?;
        let (to_dir, to_name) = state.parent(to)?;
        let node = *state
            .dir(from_dir)
            .live
            .get(&from_name)
            .ok_or_else(|| not_found(from))?;
        match (node, state.dir(to_dir).live.get(&to_name).copied()) {
            (_, None) => {}
            (Node::File(_), Some(Node::File(old))) => {
                if Some(&node) != state.dir(to_dir).live.get(&to_name) {
                    state.unlink(old);
                }
            }
            (Node::Dir(_), Some(Node::Dir(old))) => {
                if !state.dirs.get(&old).is_some_and(|d| d.live.is_empty()) {
                    return Err(io::Error::new(
                        io::ErrorKind::DirectoryNotEmpty,
                        format!("{}: directory not empty", to.display()),
                    ));
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "rename between a file and a directory",
                ));
            }
        }
        if from_dir == to_dir && from_name == to_name {
            return Ok(());
        }
        state.dir_mut(from_dir).live.remove(&from_name);
        state.dir_mut(to_dir).live.insert(to_name, node);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Link, true, || {
            format!("link {} -> {}", from.display(), to.display())
        })?;
        let Node::File(id) = state.lookup(from)? else {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        };
        let (to_dir, to_name) = state.parent(to)?;
        if state.dir(to_dir).live.contains_key(&to_name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: file exists", to.display()),
            ));
        }
        state.dir_mut(to_dir).live.insert(to_name, Node::File(id));
        state.link(id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Remove, true, || {
            format!("remove {}", path.display())
        })?;
        let (dir, name) = state.parent(path)?;
        match state.dir(dir).live.get(&name).copied() {
            Some(Node::File(id)) => {
                state.dir_mut(dir).live.remove(&name);
                state.unlink(id);
                Ok(())
            }
            Some(Node::Dir(_)) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Create, true, || {
            format!("mkdir {}", path.display())
        })?;
        let (dir, name) = state.parent(path)?;
        if state.dir(dir).live.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        let id = state.new_id();
        state.dirs.insert(id, Dir::default());
        state.dir_mut(dir).live.insert(name, Node::Dir(id));
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin(FaultOp::Remove, true, || {
            format!("rmdir {}", path.display())
        })?;
        let (dir, name) = state.parent(path)?;
        match state.dir(dir).live.get(&name).copied() {
            Some(Node::Dir(id)) => {
                if !state.dir(id).live.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::DirectoryNotEmpty,
                        format!("{}: directory not empty", path.display()),
                    ));
                }
                state.dir_mut(dir).live.remove(&name);
                Ok(())
            }
            Some(Node::File(_)) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.begin(FaultOp::SyncDir, true, || {
            format!("sync_dir {}", path.display())
        })?;
        let Node::Dir(id) = state.lookup(path)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        };
        let dir = state.dir_mut(id);
        dir.durable = dir.live.clone();
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut state = self.state.lock();
        state.begin(FaultOp::List, false, String::new)?;
        let Node::Dir(id) = state.lookup(path)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        };
        Ok(state
            .dir(id)
            .live
            .iter()
            .map(|(name, node)| match node {
                Node::Dir(_) => DirEntry {
                    name: name.clone(),
                    is_dir: true,
                    len: 0,
                },
                Node::File(file) => DirEntry {
                    name: name.clone(),
                    is_dir: false,
                    len: state.files.get(file).map_or(0, |f| f.data.len() as u64),
                },
            })
            .collect())
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let mut state = self.state.lock();
        state.begin(FaultOp::List, false, String::new)?;
        Ok(match state.lookup(path)? {
            Node::Dir(_) => Metadata {
                is_dir: true,
                len: 0,
            },
            Node::File(id) => Metadata {
                is_dir: false,
                len: state.files.get(&id).map_or(0, |f| f.data.len() as u64),
            },
        })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        let mut state = self.state.lock();
        state.begin(FaultOp::List, false, String::new)?;
        state.lookup(path)?;
        let mut out = PathBuf::from("/");
        out.extend(components(path));
        Ok(out)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn FileLock>>> {
        let id = {
            let state = self.state.lock();
            match state.lookup(path) {
                Ok(Node::File(id)) => Some(id),
                Ok(Node::Dir(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::IsADirectory,
                        "is a directory",
                    ));
                }
                Err(_) => None,
            }
        };
        let id = match id {
            Some(id) => id,
            None => {
                let mut state = self.state.lock();
                state.begin(FaultOp::Create, true, || {
                    format!("create {}", path.display())
                })?;
                state.create_file(path, false)?
            }
        };
        let mut state = self.state.lock();
        if state.off {
            return Err(power_off_error());
        }
        let key = (state.generation, id);
        if !state.locks.insert(key) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            state: Arc::clone(&self.state),
            key,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, bytes: &[u8], sync: bool) {
        let mut file = fs.create(Path::new(path)).unwrap();
        file.write_all(bytes).unwrap();
        if sync {
            file.sync_data().unwrap();
        }
    }

    fn read(fs: &SimFs, path: &str) -> Option<Vec<u8>> {
        fs.read(Path::new(path)).ok()
    }

    #[test]
    fn synced_file_in_synced_directory_survives() {
        let fs = SimFs::new(1);
        fs.create_dir(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        write(&fs, "/d/a", b"hello", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.power_loss(PowerLoss::Random);
        assert_eq!(read(&fs, "/d/a").as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn unsynced_data_and_entries_are_lost() {
        let fs = SimFs::new(2);
        write(&fs, "/synced-name", b"data", false);
        fs.sync_dir(Path::new("/")).unwrap();
        write(&fs, "/no-name", b"data", true);
        fs.create_dir(Path::new("/newdir")).unwrap();
        fs.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(read(&fs, "/synced-name").as_deref(), Some(&b""[..]));
        assert_eq!(read(&fs, "/no-name"), None);
        assert!(fs.metadata(Path::new("/newdir")).is_err());
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let fs = SimFs::new(3);
        fs.create_dir(Path::new("/d")).unwrap();
        write(&fs, "/d/a", b"x", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(
            read(&fs, "/d/a"),
            None,
            "the directory itself was never made durable"
        );
    }

    #[test]
    fn rename_is_undone_without_a_directory_sync() {
        let fs = SimFs::new(4);
        write(&fs, "/f", b"old", true);
        fs.sync_dir(Path::new("/")).unwrap();
        write(&fs, "/f.tmp", b"new", true);
        fs.rename(Path::new("/f.tmp"), Path::new("/f")).unwrap();
        assert_eq!(read(&fs, "/f").as_deref(), Some(&b"new"[..]));
        fs.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(read(&fs, "/f").as_deref(), Some(&b"old"[..]));
        assert_eq!(read(&fs, "/f.tmp"), None);
    }

    #[test]
    fn an_unsynced_rename_never_loses_the_file() {
        let mut outcomes = HashSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            fs.create_dir(Path::new("/a")).unwrap();
            fs.create_dir(Path::new("/b")).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            write(&fs, "/a/x", b"data", true);
            write(&fs, "/a/y", b"more", true);
            fs.sync_dir(Path::new("/a")).unwrap();
            fs.rename(Path::new("/a/x"), Path::new("/a/x2")).unwrap();
            fs.rename(Path::new("/a/y"), Path::new("/b/y")).unwrap();
            fs.power_loss(PowerLoss::Random);
            let x = (read(&fs, "/a/x").is_some(), read(&fs, "/a/x2").is_some());
            let y = (read(&fs, "/a/y").is_some(), read(&fs, "/b/y").is_some());
            assert!(x != (false, false) && y != (false, false), "seed {seed}");
            for path in ["/a/x", "/a/x2"] {
                if let Some(bytes) = read(&fs, path) {
                    assert_eq!(bytes, b"data");
                }
            }
            outcomes.insert((x, y));
        }
        assert!(outcomes.len() > 2, "{outcomes:?}");
    }

    #[test]
    fn random_power_loss_keeps_a_sector_prefix_of_unsynced_data() {
        let synced = vec![1u8; 1000];
        let unsynced = vec![2u8; 3000];
        let mut outcomes = HashSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            let mut file = fs.create(Path::new("/log")).unwrap();
            file.write_all(&synced).unwrap();
            file.sync_data().unwrap();
            file.write_all(&unsynced).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            fs.power_loss(PowerLoss::Random);
            let after = read(&fs, "/log").unwrap();
            assert!(after.len() >= 1000 && after.len() <= 4000);
            assert_eq!(&after[..1000], &synced[..]);
            assert!(after[1000..].iter().all(|&b| b == 2));
            assert!(
                after.len() == 4000 || after.len().is_multiple_of(SECTOR) || after.len() == 1000
            );
            outcomes.insert(after.len());
        }
        assert!(outcomes.len() > 2, "several tear points seen: {outcomes:?}");
    }

    #[test]
    fn power_goes_off_at_the_given_mutation() {
        let fs = SimFs::new(5);
        fs.power_off_at(Some(2));
        write(&fs, "/a", b"1", false); // create = 0, write = 1
        assert!(fs.create(Path::new("/b")).is_err());
        assert!(fs.is_off());
        assert!(
            fs.read(Path::new("/a")).is_err(),
            "reads fail too while off"
        );
        fs.power_loss(PowerLoss::DropUnsynced);
        assert!(!fs.is_off());
        assert_eq!(read(&fs, "/a"), None);
    }

    #[test]
    fn handles_from_before_a_power_loss_fail() {
        let fs = SimFs::new(6);
        let mut file = fs.create(Path::new("/a")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.power_loss(PowerLoss::DropUnsynced);
        assert!(file.write_all(b"late").is_err());
        assert_eq!(read(&fs, "/a").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn injected_faults_fire_once_or_persist() {
        let fs = SimFs::new(7);
        fs.inject(FaultOp::Sync, 1, FaultKind::Eio, false);
        let mut file = fs.create(Path::new("/a")).unwrap();
        file.write_all(b"abc").unwrap();
        file.sync_data().unwrap();
        file.write_all(b"def").unwrap();
        let err = file.sync_data().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        // The failed sync dropped the unsynced bytes, and a later sync does not bring them back.
        file.sync_data().unwrap();
        assert_eq!(read(&fs, "/a").unwrap(), b"abc\0\0\0");
        fs.inject(FaultOp::Write, 0, FaultKind::Enospc, true);
        for _ in 0..3 {
            let err = file.write_all(b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        }
        fs.clear_faults();
        file.write_all(b"ok").unwrap();
    }

    #[test]
    fn capacity_fills_then_fails_with_enospc() {
        let fs = SimFs::new(8);
        fs.set_capacity(Some(10));
        let mut file = fs.create(Path::new("/a")).unwrap();
        file.write_all(b"123456").unwrap();
        assert_eq!(
            file.write_all(b"789012").unwrap_err().raw_os_error(),
            Some(ENOSPC)
        );
        assert_eq!(read(&fs, "/a").unwrap(), b"1234567890");
        fs.remove_file(Path::new("/a")).unwrap();
        assert_eq!(fs.used_bytes(), 0);
        write(&fs, "/b", b"0123456789", false);
    }

    #[test]
    fn hard_links_share_the_file_and_locks_are_exclusive() {
        let fs = SimFs::new(9);
        write(&fs, "/a", b"x", true);
        fs.hard_link(Path::new("/a"), Path::new("/b")).unwrap();
        assert!(fs.hard_link(Path::new("/a"), Path::new("/b")).is_err());
        fs.remove_file(Path::new("/a")).unwrap();
        assert_eq!(read(&fs, "/b").as_deref(), Some(&b"x"[..]));
        let lock = fs.try_lock(Path::new("/LOCK")).unwrap();
        assert!(lock.is_some());
        assert!(fs.try_lock(Path::new("/LOCK")).unwrap().is_none());
        drop(lock);
        assert!(fs.try_lock(Path::new("/LOCK")).unwrap().is_some());
    }
}
