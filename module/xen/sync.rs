// SPDX-License-Identifier: GPL-2.0
//! A Xen vCPU's sleeping and waking: a wait queue for a blocked vCPU, and an hrtimer that makes
//! a running one exit at its timer's deadline.

use core::{
    marker::PhantomPinned,
    sync::atomic::{AtomicU64, Ordering},
};

use kernel::{bindings, prelude::*, static_lock_class, task::Task, types::Opaque};

/// `TASK_INTERRUPTIBLE`.
const TASK_INTERRUPTIBLE: i32 = 1;
/// `TASK_NORMAL`.
const TASK_NORMAL: u32 = 3;

/// One vCPU's wait queue and run timer, pinned (both are linked into kernel lists).
#[pin_data(PinnedDrop)]
pub(crate) struct VcpuSync {
    #[pin]
    wq: Opaque<bindings::wait_queue_head>,
    #[pin]
    timer: Opaque<bindings::hrtimer>,
    /// The oldest generation of the domain's second-level tables whose translations the
    /// vCPU's thread may still use (the TLB, pointers from a walk), `u64::MAX` for none (it
    /// sleeps, or is outside its run): see `Xen::quiesce`.
    epoch: AtomicU64,
    #[pin]
    _pin: PhantomPinned,
}

/// The run timer's callback: the interrupt that runs it has already made the guest exit on
/// this CPU; the run loop sees the deadline passed.
///
/// # Safety
///
/// Called by the hrtimer core only (it touches nothing).
unsafe extern "C" fn timer_fired(_t: *mut bindings::hrtimer) -> bindings::hrtimer_restart {
    bindings::hrtimer_restart::HRTIMER_NORESTART
}

// SAFETY: A wait queue and an hrtimer are made for use from any thread (their own locks);
// nothing else is in the structure.
unsafe impl Send for VcpuSync {}
// SAFETY: As above.
unsafe impl Sync for VcpuSync {}

#[pinned_drop]
impl PinnedDrop for VcpuSync {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: The timer was set up in `new`; cancelling waits for a running callback.
        unsafe { bindings::hrtimer_cancel(self.timer.get()) };
    }
}

impl VcpuSync {
    /// A new, idle one.
    pub(crate) fn new() -> Result<Pin<KBox<Self>>> {
        KBox::pin_init(
            pin_init!(VcpuSync {
                // SAFETY: `__init_waitqueue_head` initialises the pinned slot in place.
                wq <- unsafe {
                    Opaque::ffi_init(|p| {
                        bindings::__init_waitqueue_head(
                            p,
                            c"keel_vcpu".as_char_ptr(),
                            static_lock_class!().as_ptr(),
                        )
                    })
                },
                // SAFETY: `hrtimer_setup` initialises the pinned slot in place.
                timer <- unsafe {
                    Opaque::ffi_init(|p| {
                        bindings::hrtimer_setup(
                            p,
                            Some(timer_fired),
                            bindings::CLOCK_MONOTONIC as i32,
                            bindings::hrtimer_mode_HRTIMER_MODE_REL_PINNED,
                        )
                    })
                },
                epoch: AtomicU64::new(u64::MAX),
                _pin: PhantomPinned,
            }),
            GFP_KERNEL,
        )
    }

    /// Wakes the vCPU if it sleeps in [`VcpuSync::block`].
    pub(crate) fn wake(&self) {
        // SAFETY: The wait queue was initialised in `new`.
        unsafe { bindings::__wake_up(self.wq.get(), TASK_NORMAL, 1, core::ptr::null_mut()) };
    }

    /// Arms the run timer `ns` from now on this CPU (interrupts off, before the entry).
    pub(crate) fn arm(&self, ns: u64) {
        let ns = ns.clamp(1, i64::MAX as u64) as i64;
        // SAFETY: The timer was set up in `new`; PINNED keeps it on this CPU.
        unsafe {
            bindings::hrtimer_start_range_ns(
                self.timer.get(),
                ns,
                0,
                bindings::hrtimer_mode_HRTIMER_MODE_REL_PINNED,
            )
        };
    }

    /// Disarms the run timer after the run.
    pub(crate) fn disarm(&self) {
        // SAFETY: As in `arm`; cancelling waits for a running callback, which does not sleep.
        unsafe { bindings::hrtimer_cancel(self.timer.get()) };
    }

    /// The vCPU's thread may use translations of generation `gen` from now on.
    pub(crate) fn hold(&self, gen: u64) {
        self.epoch.store(gen, Ordering::SeqCst);
    }

    /// What [`Self::hold`] last said (`u64::MAX`: nothing).
    pub(crate) fn held(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The vCPU's thread holds no translation until it says otherwise; returns what it held.
    pub(crate) fn let_go(&self) -> u64 {
        self.epoch.swap(u64::MAX, Ordering::SeqCst)
    }

    /// Sleeps until `done()` holds, system time reaches `until` (`now()` reads it), or a signal
    /// arrives (EINTR). `done` may take spinlocks, not sleep. While asleep the thread holds no
    /// translation (`Xen::quiesce` does not wait for it).
    pub(crate) fn block(
        &self,
        done: impl Fn() -> bool,
        until: Option<u64>,
        now: impl Fn() -> u64,
    ) -> Result {
        let held = self.let_go();
        let r = self.block_inner(done, until, now);
        self.hold(held);
        r
    }

    fn block_inner(
        &self,
        done: impl Fn() -> bool,
        until: Option<u64>,
        now: impl Fn() -> u64,
    ) -> Result {
        let mut entry = bindings::wait_queue_entry::default();
        // SAFETY: `entry` lives on this stack until `finish_wait` below.
        unsafe { bindings::init_wait_entry(&mut entry, 0) };
        let result = loop {
            // SAFETY: The wait queue was initialised in `new`; `entry` is initialised.
            let r = unsafe {
                bindings::prepare_to_wait_event(self.wq.get(), &mut entry, TASK_INTERRUPTIBLE)
            };
            // SAFETY: Reading the current task's signal state.
            if r != 0 || unsafe { bindings::signal_pending(Task::current_raw()) } != 0 {
                break Err(EINTR);
            }
            if done() {
                break Ok(());
            }
            match until {
                Some(t) => {
                    let n = now();
                    if t <= n {
                        break Ok(());
                    }
                    let mut rel: bindings::ktime_t = (t - n).min(i64::MAX as u64) as i64;
                    // SAFETY: Sleeps in the state `prepare_to_wait_event` set.
                    unsafe {
                        bindings::schedule_hrtimeout(
                            &mut rel,
                            bindings::hrtimer_mode_HRTIMER_MODE_REL,
                        )
                    };
                }
                // SAFETY: As above.
                None => unsafe { bindings::schedule() },
            }
        };
        // SAFETY: `entry` was prepared on this queue (or is not on it).
        unsafe { bindings::finish_wait(self.wq.get(), &mut entry) };
        result
    }
}
