//! The native side of flowstate's Apache Flink state backend: the JNI functions of the Java
//! class `io.flowstate.flink.FlowstateNative`, over [`store::FlinkStore`].
//!
//! Every function catches Rust errors and panics and turns them into a Java
//! `io.flowstate.flink.FlowstateException` carrying the error's message (its causes included),
//! so nothing unwinds across the JNI boundary. Handles are `long`s the Java side keeps: a
//! [`store::FlinkStore`] or a [`store::PendingSnapshot`] boxed on the heap, freed by the call
//! that closes or consumes it; 0 is never a valid handle.

pub mod store;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use jni::JNIEnv;
use jni::objects::{JByteArray, JClass, JObjectArray, JString};
use jni::sys::{jbyteArray, jint, jlong, jstring};

use store::{FlinkStore, PendingSnapshot, StoreOptions};

/// The library's Rust allocations go to mimalloc rather than the C library's malloc. A task
/// thread allocates and frees many small entries (write-cache slots, write batches, memtable
/// nodes) and now and then a large buffer; with glibc's malloc that mix spent about a third of
/// the task thread's time in `malloc`, `free` and `malloc_consolidate` (BENCHMARKS.md).
///
/// The JVM loads this library with `dlopen`, and calls it from threads it started before and
/// ends at will, so mimalloc is built with local-dynamic TLS, and in its 2.x line: 3.x crashed on
/// the first allocation of a new Java thread (the `ThreadChurn` check reproduces it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Java exception every native failure becomes.
const EXCEPTION_CLASS: &str = "io/flowstate/flink/FlowstateException";

/// A failure of a native call: flowstate's own, the JNI layer's, or a bad argument.
#[derive(Debug)]
enum CallError {
    Store(flowstate::Error),
    Jni(jni::errors::Error),
    Argument(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Store(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            CallError::Jni(e) => write!(f, "JNI: {e}"),
            CallError::Argument(m) => f.write_str(m),
        }
    }
}

impl From<flowstate::Error> for CallError {
    fn from(e: flowstate::Error) -> Self {
        CallError::Store(e)
    }
}

impl From<jni::errors::Error> for CallError {
    fn from(e: jni::errors::Error) -> Self {
        CallError::Jni(e)
    }
}

type CallResult<T> = std::result::Result<T, CallError>;

/// Runs `f`, turning an error or a panic into a pending Java exception and `fallback`.
fn call<'l, T>(
    env: &mut JNIEnv<'l>,
    fallback: T,
    f: impl FnOnce(&mut JNIEnv<'l>) -> CallResult<T>,
) -> T {
    let message = match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(value)) => return value,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            format!("flowstate native code panicked: {what}")
        }
    };
    // A Java exception already pending (from a failed JNI call) is kept: it names the cause.
    if !env.exception_check().unwrap_or(false) {
        let _ = env.throw_new(EXCEPTION_CLASS, message);
    }
    fallback
}

/// The store behind `handle`.
fn store<'h>(handle: jlong) -> CallResult<&'h mut FlinkStore> {
    if handle == 0 {
        return Err(CallError::Argument(
            "the flowstate backend is closed".into(),
        ));
    }
    // SAFETY: a non-zero store handle is a pointer `open` got from `Box::into_raw` and `close`
    // has not freed yet (the Java side zeroes its copy when it closes); the Java backend calls
    // into one store from one thread at a time (Flink's task thread), so this is the only
    // reference while the call lasts.
    Ok(unsafe { &mut *(handle as *mut FlinkStore) })
}

fn string(env: &mut JNIEnv<'_>, s: &JString<'_>) -> CallResult<String> {
    Ok(env.get_string(s)?.into())
}

fn bytes(env: &mut JNIEnv<'_>, array: &JByteArray<'_>) -> CallResult<Vec<u8>> {
    Ok(env.convert_byte_array(array)?)
}

fn index(value: jint, what: &str) -> CallResult<u32> {
    u32::try_from(value).map_err(|_| CallError::Argument(format!("negative {what} {value}")))
}

fn id(value: jlong, what: &str) -> CallResult<u64> {
    u64::try_from(value).map_err(|_| CallError::Argument(format!("negative {what} {value}")))
}

/// `long open(String dir, int maxParallelism, int firstKeyGroup, int lastKeyGroup, String options)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_open<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    dir: JString<'l>,
    max_parallelism: jint,
    first: jint,
    last: jint,
    options: JString<'l>,
) -> jlong {
    call(&mut env, 0, |env| {
        let dir = PathBuf::from(string(env, &dir)?);
        let options = StoreOptions::parse(&string(env, &options)?)?;
        let store = FlinkStore::open(
            &dir,
            index(max_parallelism, "max parallelism")?,
            index(first, "key group")?,
            index(last, "key group")?,
            &options,
        )?;
        Ok(Box::into_raw(Box::new(store)) as jlong)
    })
}

/// `void close(long handle)`: frees the store (its working files stay until the directory is
/// removed by the Java side).
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_close<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    call(&mut env, (), |_| {
        if handle != 0 {
            // SAFETY: as in `store`; the Java side calls `close` once and never uses the handle
            // after it, so the box is freed exactly once.
            drop(unsafe { Box::from_raw(handle as *mut FlinkStore) });
        }
        Ok(())
    })
}

/// `int register(long handle, String name, int kind, long ttlMs)`: the state's id; `ttlMs < 0`
/// for a state without TTL.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_register<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
    kind: jint,
    ttl_ms: jlong,
) -> jint {
    call(&mut env, -1, |env| {
        let name = string(env, &name)?;
        let ttl = u64::try_from(ttl_ms).ok();
        let id = store(handle)?.register(&name, index(kind, "state kind")?, ttl)?;
        jint::try_from(id).map_err(|_| CallError::Argument(format!("state id {id}")))
    })
}

/// `byte[] get(long handle, int state, byte[] key)`: null when absent.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_get<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    state: jint,
    key: JByteArray<'l>,
) -> jbyteArray {
    call(&mut env, std::ptr::null_mut(), |env| {
        let key = bytes(env, &key)?;
        match store(handle)?.get(index(state, "state")?, &key)? {
            Some(value) => Ok(env.byte_array_from_slice(&value)?.into_raw()),
            None => Ok(std::ptr::null_mut()),
        }
    })
}

/// `void put(long handle, int state, byte[] key, byte[] value)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_put<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    state: jint,
    key: JByteArray<'l>,
    value: JByteArray<'l>,
) {
    call(&mut env, (), |env| {
        let (key, value) = (bytes(env, &key)?, bytes(env, &value)?);
        Ok(store(handle)?.put(index(state, "state")?, &key, &value)?)
    })
}

/// `void delete(long handle, int state, byte[] key)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_delete<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    state: jint,
    key: JByteArray<'l>,
) {
    call(&mut env, (), |env| {
        let key = bytes(env, &key)?;
        Ok(store(handle)?.delete(index(state, "state")?, &key)?)
    })
}

/// `void merge(long handle, int state, byte[] key, byte[] operand)`: list append.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_merge<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    state: jint,
    key: JByteArray<'l>,
    operand: JByteArray<'l>,
) {
    call(&mut env, (), |env| {
        let (key, operand) = (bytes(env, &key)?, bytes(env, &operand)?);
        Ok(store(handle)?.merge(index(state, "state")?, &key, &operand)?)
    })
}

/// `void deletePrefix(long handle, int state, byte[] prefix)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_deletePrefix<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    state: jint,
    prefix: JByteArray<'l>,
) {
    call(&mut env, (), |env| {
        let prefix = bytes(env, &prefix)?;
        Ok(store(handle)?.delete_prefix(index(state, "state")?, &prefix)?)
    })
}

/// `byte[] scan(long handle, int state, byte[] prefix, byte[] after, int maxEntries, int maxBytes)`:
/// packed entries (`FlinkStore::scan`); `after` may be null; an empty array ends the scan.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_scan<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    state: jint,
    prefix: JByteArray<'l>,
    after: JByteArray<'l>,
    max_entries: jint,
    max_bytes: jint,
) -> jbyteArray {
    call(&mut env, std::ptr::null_mut(), |env| {
        let prefix = bytes(env, &prefix)?;
        let after = if after.is_null() {
            None
        } else {
            Some(bytes(env, &after)?)
        };
        let packed = store(handle)?.scan(
            index(state, "state")?,
            &prefix,
            after.as_deref(),
            index(max_entries, "entry count")? as usize,
            index(max_bytes, "byte count")? as usize,
        )?;
        Ok(env.byte_array_from_slice(&packed)?.into_raw())
    })
}

/// `long snapshot(long handle, long checkpointId)`: the synchronous part; returns the handle of
/// the asynchronous part, for `runSnapshot` or `dropSnapshot`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_snapshot<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    checkpoint_id: jlong,
) -> jlong {
    call(&mut env, 0, |_| {
        let pending = store(handle)?.snapshot(id(checkpoint_id, "checkpoint id")?)?;
        Ok(Box::into_raw(Box::new(pending)) as jlong)
    })
}

fn take_pending(task: jlong) -> CallResult<PendingSnapshot> {
    if task == 0 {
        return Err(CallError::Argument("no pending snapshot".into()));
    }
    // SAFETY: a non-zero task handle is a pointer `snapshot` got from `Box::into_raw`; the Java
    // side passes it to exactly one of `runSnapshot` / `dropSnapshot`, once, so it is freed
    // exactly once. `PendingSnapshot` is `Send`: any thread may run it.
    Ok(*unsafe { Box::from_raw(task as *mut PendingSnapshot) })
}

/// `String runSnapshot(long task)`: the asynchronous part; returns the staged checkpoint's file
/// list (`StagedCheckpoint::to_text`). Frees the task, whatever the outcome.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_runSnapshot<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    task: jlong,
) -> jstring {
    call(&mut env, std::ptr::null_mut(), |env| {
        let staged = take_pending(task)?.run()?;
        Ok(env.new_string(staged.to_text())?.into_raw())
    })
}

/// `void dropSnapshot(long task)`: abandons a snapshot whose asynchronous part will not run.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_dropSnapshot<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    task: jlong,
) {
    call(&mut env, (), |_| {
        drop(take_pending(task)?);
        Ok(())
    })
}

/// `void notifyCheckpointComplete(long handle, long checkpointId)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_notifyCheckpointComplete<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    checkpoint_id: jlong,
) {
    call(&mut env, (), |_| {
        Ok(store(handle)?.notify_checkpoint_complete(id(checkpoint_id, "checkpoint id")?)?)
    })
}

/// `void restore(long handle, String[] roots, int firstKeyGroup, int lastKeyGroup)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_restore<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    roots: JObjectArray<'l>,
    first: jint,
    last: jint,
) {
    call(&mut env, (), |env| {
        let n = env.get_array_length(&roots)?;
        let mut dirs = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for i in 0..n {
            let root = JString::from(env.get_object_array_element(&roots, i)?);
            dirs.push(PathBuf::from(string(env, &root)?));
        }
        Ok(store(handle)?.restore(&dirs, index(first, "key group")?, index(last, "key group")?)?)
    })
}

/// `String stats(long handle)`: `name=value` lines.
#[unsafe(no_mangle)]
pub extern "system" fn Java_io_flowstate_flink_FlowstateNative_stats<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> jstring {
    call(&mut env, std::ptr::null_mut(), |env| {
        let text = store(handle)?.stats();
        Ok(env.new_string(text)?.into_raw())
    })
}
