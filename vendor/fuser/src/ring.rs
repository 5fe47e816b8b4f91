//! kmsfs patch: FUSE over io_uring (Linux 6.14+, FUSE protocol 7.42).
//!
//! Why: over /dev/fuse every request wakes a daemon thread on whichever CPU
//! the scheduler picks, and the reply wakes the caller back across CPUs; on
//! a virtual machine each cross-CPU wakeup is an IPI and a halted vCPU to
//! resume. With io_uring the kernel queues a request on the ring queue of the
//! caller's CPU, and the daemon's threads for that queue run pinned to that
//! CPU: request and reply are a same-CPU hand-off.
//!
//! How: each queue (one per possible CPU, as the kernel requires before it
//! switches a connection over) has a few threads; each thread owns an
//! io_uring with SQE128 and one ring entry (a header buffer and a payload
//! buffer registered with FUSE_IO_URING_CMD_REGISTER). A completion means
//! the kernel wrote a request into the entry: the thread rebuilds the
//! /dev/fuse byte layout (in header, the per-opcode header from `op_in`, the
//! payload), dispatches it as any request, and answers with
//! FUSE_IO_URING_CMD_COMMIT_AND_FETCH, which also waits for the next one.
//! Forgets, interrupts and notifications stay on /dev/fuse, which one thread
//! keeps reading. If the kernel refuses the registration, its requests keep
//! going through /dev/fuse: nothing else changes.

use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::error;
use log::warn;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::ll;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const OP_IN: usize = 128;
const OP_READ: u32 = 15;
const OP_WRITE: u32 = 16;
const OP_RELEASE: u32 = 18;
const OP_RELEASEDIR: u32 = 29;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Default)]
struct EntInOut {
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`: the in (request) or out (reply) header,
/// the per-opcode header, the entry's own fields.
#[repr(C, align(8))]
struct Header {
    in_out: [u8; 128],
    op_in: [u8; OP_IN],
    ent: EntInOut,
}

/// One registered entry, at a fixed address (see `Owned`): the kernel holds
/// pointers to it.
struct Entry {
    header: Header,
    payload: Vec<u8>,
    iov: [libc::iovec; 2],
}

/// Where the reply to the request in one entry is written. Replies are
/// usually sent during dispatch, on the entry's own thread; one sent later
/// from another thread is waited for.
#[derive(Clone, Debug)]
pub(crate) struct RingReply {
    slot: Arc<Slot>,
    ch: ChannelSender,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    done: Condvar,
}

#[derive(Debug)]
struct SlotState {
    header: *mut Header,
    payload: *mut u8,
    capacity: usize,
    /// The request being answered (its commit id).
    unique: u64,
    replied: bool,
}

impl SlotState {
    /// Answers EIO: for what cannot be parsed or answered, so that neither
    /// the caller nor this entry is left waiting.
    fn fail(&mut self) {
        // SAFETY: see SlotState.
        let header = unsafe { &mut *self.header };
        header.in_out[..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
        header.in_out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
        header.in_out[8..16].copy_from_slice(&self.unique.to_ne_bytes());
        header.ent.payload_sz = 0;
        self.replied = true;
    }
}

// SAFETY: the pointers are to the entry this slot belongs to, written only
// under the mutex and only while the entry is in user space (between its
// completion and its commit), which the owning thread waits for.
unsafe impl Send for SlotState {}

impl RingReply {
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.replied {
            return Err(io::Error::other("a second reply to one ring request"));
        }
        let total: usize = data.iter().map(|b| b.len()).sum();
        if total < OUT_HEADER || total - OUT_HEADER > s.capacity {
            // Cannot happen within the kernel's own bounds.
            s.fail();
            self.slot.done.notify_all();
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        // SAFETY: see SlotState; the header and payload outlive the slot's
        // use, and the sizes are checked above.
        unsafe {
            let header = &mut *s.header;
            let mut at = 0usize;
            for b in data {
                let mut rest: &[u8] = b;
                if at < OUT_HEADER {
                    let n = rest.len().min(OUT_HEADER - at);
                    header.in_out[at..at + n].copy_from_slice(&rest[..n]);
                    at += n;
                    rest = &rest[n..];
                }
                if !rest.is_empty() {
                    std::ptr::copy_nonoverlapping(
                        rest.as_ptr(),
                        s.payload.add(at - OUT_HEADER),
                        rest.len(),
                    );
                    at += rest.len();
                }
            }
            header.ent.payload_sz = (total - OUT_HEADER) as u32;
        }
        s.replied = true;
        self.slot.done.notify_all();
        Ok(())
    }

    pub(crate) fn channel(&self) -> &ChannelSender {
        &self.ch
    }

    fn wait(&self) {
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.replied {
            s = self.slot.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Makes the slot ready for the answer to request `unique`.
    fn start(&self, unique: u64) {
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unique = unique;
        s.replied = false;
    }

    fn fail(&self) {
        self.slot
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail();
    }
}

/// A FUSE_IO_URING command SQE for `entry` (user data 0): `fuse_uring_cmd_req`
/// in the command area, the entry's two iovecs as the address.
fn command(fd: i32, op: u32, qid: u16, commit_id: u64, entry: *const Entry) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd)
        // SAFETY: a field address of a live entry; no reference is made.
        .addr(Some(unsafe { (&raw const (*entry).iov) } as u64))
        .build();
    // The kernel wants sqe->len = 2 (the iovec count), which the builder
    // has no setter for: the 32-bit field at byte 24 of io_uring_sqe.
    // SAFETY: Entry128 is repr(C), 128 bytes: io_uring_sqe and its 64-byte
    // extension; any bytes are a valid value.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// The CPUs `cpus` as a set.
fn cpu_set(cpus: impl Iterator<Item = usize>) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

/// Restricts this thread to `set`.
fn run_on(set: &libc::cpu_set_t) -> bool {
    // SAFETY: a valid set of the size passed, for this thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

static STATE: Mutex<crate::IoUringState> = Mutex::new(crate::IoUringState::Off);

pub(crate) fn set_state(s: crate::IoUringState) {
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = s;
}

/// What became of FUSE over io_uring in this process's session.
pub fn state() -> crate::IoUringState {
    STATE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Requests moved off the caller's CPU: READ or WRITE of 128 KiB or more.
const LARGE: usize = 128 << 10;

fn large(opcode: u32, entry: *const Entry) -> bool {
    // SAFETY: the entry holds a request the kernel wrote (see the caller).
    let h = unsafe { &(*entry).header };
    match opcode {
        // fuse_read_in: fh, offset, then the size.
        OP_READ => u32::from_ne_bytes(h.op_in[16..20].try_into().unwrap()) as usize >= LARGE,
        OP_WRITE => h.ent.payload_sz as usize >= LARGE,
        _ => false,
    }
}

/// The queues the kernel expects: one per possible CPU.
pub(crate) fn queue_count() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n > 0 { n as usize } else { 1 }
}

/// The entry, owned through a raw pointer: the kernel and `RingReply` write
/// into it while this thread holds no Rust reference to it, and it is freed
/// only after the ring (declared after this guard, so dropped before it).
struct Owned(*mut Entry);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: made by Box::into_raw in `serve`, freed once, here.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// Serves queue `qid` until the connection ends. The registration's outcome
/// is sent on `registered` (a refusal ends the thread; the kernel then keeps
/// this connection's requests on /dev/fuse).
pub(crate) fn serve<FS: Filesystem>(
    se: SessionEventLoop<FS>,
    qid: u16,
    payload_size: usize,
    registered: std::sync::mpsc::Sender<io::Result<()>>,
) {
    // Home: the queue's CPU. Away: every other CPU, for large requests.
    let home = cpu_set(std::iter::once(qid as usize));
    let away =
        (queue_count() > 1).then(|| cpu_set((0..queue_count()).filter(|c| *c != qid as usize)));
    run_on(&home);
    let fd = se.ch.as_fd().as_raw_fd();
    let owned = Owned(Box::into_raw(Box::new(Entry {
        header: Header {
            in_out: [0; 128],
            op_in: [0; OP_IN],
            ent: EntInOut::default(),
        },
        payload: vec![0u8; payload_size],
        iov: [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2],
    })));
    let entry = owned.0;
    // SAFETY: `entry` is valid and not otherwise referenced yet.
    let (header, payload) = unsafe {
        let header = &raw mut (*entry).header;
        let payload = (*entry).payload.as_mut_ptr();
        (*entry).iov[0] = libc::iovec {
            iov_base: header.cast(),
            iov_len: std::mem::size_of::<Header>(),
        };
        (*entry).iov[1] = libc::iovec {
            iov_base: payload.cast(),
            iov_len: payload_size,
        };
        (header, payload)
    };
    let reply = RingReply {
        slot: Arc::new(Slot {
            state: Mutex::new(SlotState {
                header,
                payload,
                capacity: payload_size,
                unique: 0,
                replied: false,
            }),
            done: Condvar::new(),
        }),
        ch: se.ch.sender(),
    };
    let built = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4);
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = match built {
        Ok(r) => r,
        Err(e) => {
            let _ = registered.send(Err(e));
            return;
        }
    };
    // A refused registration completes at once; an accepted one stays
    // queued until the first request.
    let register = command(fd, CMD_REGISTER, qid, 0, entry);
    // SAFETY: the SQE points at `entry`, which outlives the ring.
    let pushed = unsafe { ring.submission().push(&register) }.is_ok();
    let submitted = if pushed {
        ring.submit().map(|_| ())
    } else {
        Err(io::Error::other("submission queue full"))
    };
    let mut ready = match submitted {
        Err(e) => {
            let _ = registered.send(Err(e));
            return;
        }
        Ok(()) => ring.completion().next().map(|c| c.result()),
    };
    match ready {
        Some(res) if res < 0 => {
            let _ = registered.send(Err(io::Error::from_raw_os_error(-res)));
            return;
        }
        _ => {
            let _ = registered.send(Ok(()));
        }
    }
    // Rebuilt requests, 8-byte aligned as the parser expects.
    let mut buf: Vec<u64> = vec![0; (IN_HEADER + OP_IN + payload_size).div_ceil(8)];
    let mut lost = 0;
    loop {
        let res = match ready.take() {
            Some(r) => r,
            None => match wait_one(&mut ring) {
                Ok(r) => r,
                Err(e) => {
                    error!("ring queue {qid}: {e}");
                    return;
                }
            },
        };
        if res < 0 {
            // ENOTCONN/ECANCELED: the connection ended (unmount).
            if res == -libc::ENOTCONN || res == -libc::ECANCELED || res == -libc::ENODEV {
                return;
            }
            // Anything else left this entry out of the queue (a commit the
            // kernel could not match): register it again, so the queue does
            // not lose its threads one by one.
            warn!("ring queue {qid}: {}", io::Error::from_raw_os_error(-res));
            lost += 1;
            if lost > 16 {
                error!("ring queue {qid}: giving up this thread after {lost} errors");
                return;
            }
            let again = command(fd, CMD_REGISTER, qid, 0, entry);
            // SAFETY: as for the first registration.
            if unsafe { ring.submission().push(&again) }.is_err() {
                return;
            }
            continue;
        }
        // SAFETY: the kernel has written the request and waits for the
        // commit; nothing else touches the entry until `dispatch` answers.
        let (commit_id, opcode) = unsafe {
            let h = &(*entry).header;
            (
                h.ent.commit_id,
                u32::from_ne_bytes(h.in_out[4..8].try_into().unwrap()),
            )
        };
        reply.start(commit_id);
        let bytes = rebuild(entry, &mut buf);
        // A large read or write is a millisecond of crypto, often readahead
        // or writeback while its caller keeps running here: served on
        // another CPU, the two run in parallel, as over /dev/fuse (on this
        // CPU sequential reads fell from ~1,000 to ~700 MB/s). The hand-off
        // costs two affinity changes, nothing next to the work.
        let moved = bytes.is_some() && large(opcode, entry) && away.as_ref().is_some_and(run_on);
        match bytes {
            Some(len) => dispatch(&se, &as_bytes(&mut buf)[..len], &reply),
            // Sizes that do not add up: EIO.
            None => reply.fail(),
        }
        if moved {
            run_on(&home);
        }
        let commit = command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, entry);
        // SAFETY: as for the registration.
        if unsafe { ring.submission().push(&commit) }.is_err() {
            error!("ring queue {qid}: submission queue full");
            return;
        }
        // The commit wakes the caller. Were this thread an ordinary one,
        // still running, the scheduler would put the caller on an idle CPU
        // instead (select_idle_sibling), and its next request would go to
        // that CPU's queue: every round trip a migration and an IPI, slower
        // than /dev/fuse. A CPU whose only runnable thread is SCHED_IDLE
        // counts as idle, so for the commit alone this thread is SCHED_IDLE:
        // the caller wakes here and preempts it. Measured: a statfs round
        // trip 47 us without, 17 us with (/dev/fuse 29 us). Not for reads,
        // writes and releases, which the kernel also sends in the background
        // (readahead, writeback, close): their caller is often still running
        // on this CPU, and would keep this thread, idle-class, off it
        // (sequential reads fell from 1,093 to 680 MB/s).
        let sync = !matches!(opcode, OP_READ | OP_WRITE | OP_RELEASE | OP_RELEASEDIR);
        if sync {
            set_policy(libc::SCHED_IDLE);
        }
        let r = ring.submit();
        if sync {
            set_policy(libc::SCHED_OTHER);
        }
        match r {
            // Not submitted yet: wait_one submits it.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                error!("ring queue {qid}: {e}");
                return;
            }
            Ok(_) => {}
        }
    }
}

fn set_policy(policy: libc::c_int) {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param for this thread.
    unsafe { libc::sched_setscheduler(0, policy, &p) };
}

/// Submits what is queued and waits for one completion.
fn wait_one(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>) -> io::Result<i32> {
    loop {
        if let Some(c) = ring.completion().next() {
            return Ok(c.result());
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

fn as_bytes(buf: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64s viewed as bytes; the length is the buffer's in bytes.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() * 8) }
}

/// Copies the request in `entry` into `buf` as /dev/fuse would have
/// delivered it (in header, per-opcode header, payload); its length, or
/// None if the sizes the kernel wrote do not add up.
fn rebuild(entry: *const Entry, buf: &mut [u64]) -> Option<usize> {
    // SAFETY: see the caller; the reference ends with this function.
    let e = unsafe { &*entry };
    let h = &e.header;
    let len = u32::from_ne_bytes(h.in_out[..4].try_into().ok()?) as usize;
    let payload = h.ent.payload_sz as usize;
    let op_len = len.checked_sub(IN_HEADER)?.checked_sub(payload)?;
    let bytes = as_bytes(buf);
    if op_len > OP_IN || payload > e.payload.len() || len > bytes.len() {
        return None;
    }
    bytes[..IN_HEADER].copy_from_slice(&h.in_out[..IN_HEADER]);
    bytes[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&h.op_in[..op_len]);
    bytes[IN_HEADER + op_len..len].copy_from_slice(&e.payload[..payload]);
    Some(len)
}

/// Dispatches one rebuilt request; returns once it is answered.
fn dispatch<FS: Filesystem>(se: &SessionEventLoop<FS>, bytes: &[u8], reply: &RingReply) {
    match RequestWithSender::new_ring(se.ch.sender(), bytes, reply.clone()) {
        Some(req) => {
            if let Ok(ll::Operation::Destroy(_)) = req.request.operation() {
                req.reply::<crate::reply::ReplyEmpty>().ok();
            } else {
                req.dispatch(se);
            }
        }
        // Unparseable (logged by the parser): EIO.
        None => reply.fail(),
    }
    reply.wait();
}
