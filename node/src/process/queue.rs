//! The mailbox queue: a FIFO that grows without copying.
//!
//! A `VecDeque` grows by doubling: reaching a backlog of N messages copies ~N messages and maps
//! fresh memory for a buffer of 2N, all under the mailbox lock — with a backlog of a million
//! envelopes, one push held the lock for ~10 ms (memmove plus page faults) while the runner
//! waited for its next batch, and the traced send benchmark lost a third of its rate to it.
//!
//! ## Layout
//!
//! A [`SegQueue`] is a small `VecDeque` (`near`, at most [`NEAR_MAX`] elements) followed by an
//! optional boxed chain of fixed-size blocks (`far`) for what does not fit:
//!
//! ```text
//!   near: [ a b c ... ]   far: [ front ........ ] [ full ] ... [ back ..... ] [ spare ] [ spare ]
//!                                 ^head                              ^tail
//! ```
//!
//! * every element of `near` is older than every element of `far`: a push goes to `near` only
//!   while `far` is empty, and a pop takes from `near` first. A queue that never holds more
//!   than [`NEAR_MAX`] messages — almost every queue — is exactly the `VecDeque` it replaced,
//!   inline in the process, with no pointer to chase on a push or a pop (a call's round trip
//!   would pay for one in a cache line crossing cores);
//! * in `far`, elements live in the front block from `head`, in every block between, and in the
//!   back block up to `tail` (one active block: `head..tail`); a slot holds `Some` iff it holds
//!   an element. All blocks have [`block_slots`] slots (about 4 KiB), so a push that fills one
//!   starts the next: no push moves an element or allocates more than one block;
//! * a front block that empties while others follow is moved behind the active ones as a spare
//!   (at most [`MAX_SPARES`]) and reused by the next push that needs a block. The runner pops
//!   from its in-hand batch and swaps it with the mailbox queue when it is empty
//!   (`runner::next_envelope`), so the blocks its pops emptied travel back to the senders' side
//!   with the swap;
//! * [`SegQueue::shrink_idle`] frees `far`, and the inline buffer if it has more than
//!   [`IDLE_KEEP`] slots, when the queue is empty (the process goes idle).
//!
//! Invariants of `far` (checked by the property test against `VecDeque`): at least one active
//! block; `len == 0` implies one active block and `head == tail == 0`; more than one active
//! block implies the back one holds an element (a block is only started for a push).

use std::collections::VecDeque;

/// Most elements kept in the inline `VecDeque` part of a queue.
pub(crate) const NEAR_MAX: usize = 64;
/// Most slots the inline part keeps when the queue goes idle.
pub(crate) const IDLE_KEEP: usize = 16;
/// Most spare blocks a queue keeps (G8): 16 Ki blocks, 64 MiB of ~4 KiB blocks. A flood's
/// blocks then circulate between the senders and the runner instead of going through the
/// allocator: with glibc, a block allocated by the sender's thread and freed by the runner's
/// contends on the sender's arena lock, and a bound of 16 spares cut one-way send from ~15 to
/// ~4 M msgs/s. What a process keeps this way is bounded by its largest backlog (the blocks
/// were in use), and [`SegQueue::shrink_idle`] frees it all when the process goes idle.
pub(crate) const MAX_SPARES: usize = 16 * 1024;

/// Slots per block for elements of type `T`: about 4 KiB, at least 8 and at most 256.
pub(crate) const fn block_slots<T>() -> usize {
    let size = std::mem::size_of::<Option<T>>();
    let slots = match 4096usize.checked_div(size) {
        Some(slots) => slots,
        None => 256,
    };
    if slots < 8 {
        8
    } else if slots > 256 {
        256
    } else {
        slots
    }
}

type Block<T> = Box<[Option<T>]>;

fn new_block<T>() -> Block<T> {
    std::iter::repeat_with(|| None).take(block_slots::<T>()).collect()
}

/// A FIFO that grows without copying; see the module docs.
pub(crate) struct SegQueue<T> {
    near: VecDeque<T>,
    far: Option<Box<Chain<T>>>,
}

/// The blocks and their indices (see the module docs).
struct Chain<T> {
    blocks: VecDeque<Block<T>>,
    /// Elements queued.
    len: usize,
    /// Active blocks (the rest of `blocks` are spares).
    active: u32,
    /// Index of the first element in the front block (a block has at most 256 slots).
    head: u16,
    /// Index of the next free slot in the back (last active) block.
    tail: u16,
}

impl<T> Default for SegQueue<T> {
    fn default() -> Self {
        SegQueue::new()
    }
}

impl<T> SegQueue<T> {
    /// An empty queue; allocates nothing.
    pub(crate) const fn new() -> SegQueue<T> {
        SegQueue { near: VecDeque::new(), far: None }
    }

    #[inline]
    fn far_len(&self) -> usize {
        self.far.as_ref().map_or(0, |c| c.len)
    }

    /// Elements queued.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.near.len() + self.far_len()
    }

    /// True if nothing is queued.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.near.is_empty() && self.far_len() == 0
    }

    /// Heap bytes held, spares included (for the memory estimate).
    pub(crate) fn heap_bytes(&self) -> usize {
        let far = self.far.as_ref().map_or(0, |c| {
            std::mem::size_of::<Chain<T>>()
                + c.blocks.capacity() * std::mem::size_of::<Block<T>>()
                + c.blocks.len() * block_slots::<T>() * std::mem::size_of::<Option<T>>()
        });
        self.near.capacity() * std::mem::size_of::<T>() + far
    }

    /// Appends `value`.
    #[inline]
    pub(crate) fn push_back(&mut self, value: T) {
        if self.near.len() < NEAR_MAX && self.far_len() == 0 {
            self.near.push_back(value);
        } else {
            self.push_far(value);
        }
    }

    /// Not `cold`: in a flood, most pushes take this path.
    #[inline]
    fn push_far(&mut self, value: T) {
        self.far.get_or_insert_with(|| Box::new(Chain::new())).push_back(value)
    }

    /// Removes and returns the oldest element.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        match self.near.pop_front() {
            Some(v) => Some(v),
            None => self.far.as_mut()?.pop_front(),
        }
    }

    /// The queued elements, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.near.iter().chain(self.far.iter().flat_map(|c| c.iter()))
    }

    /// Frees the block chain (and its spares) of an empty queue, and the inline part's buffer if
    /// it has more than [`IDLE_KEEP`] slots; no-op unless empty. An idle process that once had a
    /// backlog thus keeps a few slots for its next message, not the backlog's memory.
    #[inline]
    pub(crate) fn shrink_idle(&mut self) {
        if (self.far.is_some() || self.near.capacity() > IDLE_KEEP) && self.is_empty() {
            self.far = None;
            if self.near.capacity() > IDLE_KEEP {
                self.near = VecDeque::new();
            }
        }
    }
}

impl<T> Chain<T> {
    fn new() -> Chain<T> {
        Chain { blocks: VecDeque::new(), len: 0, active: 0, head: 0, tail: 0 }
    }

    #[inline]
    fn push_back(&mut self, value: T) {
        let room = match (self.active as usize).checked_sub(1).and_then(|i| self.blocks.get(i)) {
            Some(b) => (self.tail as usize) < b.len(),
            None => false,
        };
        if !room {
            self.grow();
        }
        let back = (self.active as usize).saturating_sub(1);
        if let Some(slot) = self.blocks.get_mut(back).and_then(|b| b.get_mut(self.tail as usize)) {
            debug_assert!(slot.is_none(), "a free slot is empty");
            *slot = Some(value);
            self.tail += 1;
            self.len += 1;
        } else {
            // Unreachable: `grow` made room at the back.
            debug_assert!(false, "no room after grow");
        }
    }

    /// Starts a new back block: the next spare if there is one, else a new allocation.
    #[cold]
    fn grow(&mut self) {
        if (self.active as usize) == self.blocks.len() {
            self.blocks.push_back(new_block());
        }
        self.active += 1;
        self.tail = 0;
    }

    #[inline]
    fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let front = self.blocks.front_mut()?;
        let value = front.get_mut(self.head as usize).and_then(Option::take);
        debug_assert!(value.is_some(), "a live slot holds its element");
        let front_slots = front.len();
        self.head += 1;
        self.len -= 1;
        if self.len == 0 {
            // One active block left (see the invariants): start it over.
            self.head = 0;
            self.tail = 0;
        } else if self.head as usize == front_slots {
            self.retire_front();
        }
        value
    }

    /// The front block is used up and others follow: keep it as a spare, or free it if there
    /// are [`MAX_SPARES`] already.
    #[cold]
    fn retire_front(&mut self) {
        debug_assert!(self.active > 1);
        self.head = 0;
        self.active -= 1;
        if let Some(block) = self.blocks.pop_front() {
            if self.blocks.len() - (self.active as usize) < MAX_SPARES {
                self.blocks.push_back(block);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        // Only live slots hold `Some`.
        self.blocks.iter().take(self.active as usize).flat_map(|b| b.iter().filter_map(Option::as_ref))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u16),
        Pop(u16),
        Swap,
        ShrinkIdle,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..300u16).prop_map(Op::Push),
            5 => (0..300u16).prop_map(Op::Pop),
            1 => Just(Op::Swap),
            1 => Just(Op::ShrinkIdle),
        ]
    }

    fn check<T: PartialEq + std::fmt::Debug + Clone>(q: &SegQueue<T>, model: &VecDeque<T>) {
        assert_eq!(q.len(), model.len());
        assert_eq!(q.is_empty(), model.is_empty());
        assert_eq!(q.iter().cloned().collect::<Vec<_>>(), model.iter().cloned().collect::<Vec<_>>());
        assert!(q.near.len() <= NEAR_MAX && q.near.capacity() <= NEAR_MAX);
        let Some(c) = q.far.as_deref() else {
            return;
        };
        assert!(c.active >= 1 && !c.blocks.is_empty(), "a chain has an active block");
        assert!(c.blocks.len() - c.active as usize <= MAX_SPARES);
        assert!(c.blocks.iter().all(|b| b.len() == block_slots::<T>()));
        if c.len == 0 {
            assert!(c.active == 1 && c.head == 0 && c.tail == 0);
        }
        let live: usize = c.blocks.iter().map(|b| b.iter().filter(|s| s.is_some()).count()).sum();
        assert_eq!(live, c.len, "only live slots hold elements");
    }

    fn chain<T>(q: &SegQueue<T>) -> &Chain<T> {
        q.far.as_deref().expect("a chain")
    }

    proptest! {
        /// Pushes and pops in runs (to build backlogs over many blocks and drain them), swaps
        /// of the two queues (as the runner swaps its inbox with the mailbox) and idle shrinks
        /// behave exactly as two `VecDeque`s.
        #[test]
        fn behaves_as_a_vecdeque(ops in proptest::collection::vec(op(), 1..300)) {
            let (mut a, mut b) = (SegQueue::<u32>::new(), SegQueue::<u32>::new());
            let (mut ma, mut mb) = (VecDeque::new(), VecDeque::new());
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Push(n) => {
                        for _ in 0..n {
                            a.push_back(next);
                            ma.push_back(next);
                            next += 1;
                        }
                    }
                    Op::Pop(n) => {
                        for _ in 0..n {
                            prop_assert_eq!(a.pop_front(), ma.pop_front());
                        }
                    }
                    Op::Swap => {
                        std::mem::swap(&mut a, &mut b);
                        std::mem::swap(&mut ma, &mut mb);
                    }
                    Op::ShrinkIdle => {
                        a.shrink_idle();
                        if ma.is_empty() {
                            prop_assert!(a.far.is_none() && a.near.capacity() <= IDLE_KEEP);
                        }
                    }
                }
                check(&a, &ma);
                check(&b, &mb);
            }
            while let Some(x) = ma.pop_front() {
                prop_assert_eq!(a.pop_front(), Some(x));
            }
            prop_assert_eq!(a.pop_front(), None);
        }
    }

    #[test]
    fn a_short_queue_is_a_vecdeque_and_a_long_one_grows_by_blocks_that_are_reused() {
        let full = block_slots::<u64>();
        let mut q = SegQueue::<u64>::new();
        assert_eq!(q.heap_bytes(), 0, "a new queue allocates nothing");
        for i in 0..NEAR_MAX as u64 {
            q.push_back(i);
        }
        assert!(q.far.is_none(), "up to NEAR_MAX elements stay inline");
        let n = NEAR_MAX + 10 * full;
        for i in NEAR_MAX as u64..n as u64 {
            q.push_back(i);
        }
        assert_eq!(chain(&q).blocks.len(), 10);
        for i in 0..(NEAR_MAX + 5 * full) as u64 {
            assert_eq!(q.pop_front(), Some(i));
        }
        let spares = chain(&q).blocks.len() - chain(&q).active as usize;
        assert_eq!(spares, 5, "emptied blocks are kept as spares");
        for i in 0..(spares * full) as u64 {
            q.push_back(i);
        }
        assert_eq!(chain(&q).blocks.len(), 10, "pushes use the spares before allocating");
        q.shrink_idle();
        assert!(q.far.is_some(), "no-op unless empty");
        while q.pop_front().is_some() {}
        q.shrink_idle();
        assert!(q.far.is_none(), "an idle queue frees its chain");
        assert_eq!(q.heap_bytes(), 0, "and its inline buffer of more than IDLE_KEEP slots");
        q.push_back(1);
        assert_eq!(q.pop_front(), Some(1));
        q.shrink_idle();
        assert!(q.heap_bytes() > 0, "a small buffer is kept for the next message");
    }

    #[test]
    fn elements_left_are_dropped_with_the_queue() {
        let marker = std::sync::Arc::new(());
        let mut q = SegQueue::new();
        for _ in 0..1000 {
            q.push_back(std::sync::Arc::clone(&marker));
        }
        for _ in 0..300 {
            drop(q.pop_front());
        }
        assert_eq!(std::sync::Arc::strong_count(&marker), 701);
        drop(q);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }
}
