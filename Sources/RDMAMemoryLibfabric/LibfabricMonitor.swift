#if canImport(Glibc)
import Glibc
#endif
import CLibfabricMonitor
import NotifierEngine
import Monitors
import Synchronization

/// RDMAMemory as libfabric's memory monitor (`struct fid_mem_monitor`, `rdma/fi_ext.h`): what
/// libfabric's registration cache asks (`subscribe`, `unsubscribe`, `valid`) answered from the
/// process's one engine and monitor, and every invalidation of a subscribed range passed on
/// to libfabric's `notify`.
///
/// - `subscribe(range)` watches the range. Memory the monitor cannot watch (shared or file
///   memory, a range owned by another userfaultfd, no userfaultfd at all) is refused, and
///   libfabric then registers it uncached. Otherwise an interval subscription is inserted
///   without waiting (`AddressSpace.insertIntervalWithoutWaiting`): refused too only where an
///   invalidation in flight overlaps it and has already looked for its subscribers (it would
///   not reach the new one). An invalidation of unrelated memory refuses nothing.
/// - `valid(range)` is the sequence protocol's retry test: false once an invalidation touched
///   the range since it was subscribed, or while a monitor window is open (an unmap that
///   already returned may not be invalidated yet). So a hit racing an event is never stale;
///   when nothing is in flight it is a few loads (see `isValid`).
/// - An invalidation sets the subscription's sequence, removes its record, then calls
///   `notify`, which uncaches libfabric's entries there.
///
/// Why it cannot deadlock. libfabric calls `subscribe`, `unsubscribe` and `valid` holding its
/// `mm_lock`, and its `notify` takes `mm_lock`. Invalidations run in an unmapping thread (the
/// hooks), the monitor's worker (userfaultfd events) or an explicit caller, and call `notify`
/// from there. So nothing done under `mm_lock` may wait for an invalidation to finish:
/// - the three calls take only `records` (a short lock never held across `notify`, a wait or
///   a call into libfabric) and the engine's and monitor's internal locks, which no
///   invalidation holds while it runs callbacks;
/// - no `readBegin`: `subscribe` refuses and `valid` answers "not valid" instead of waiting;
/// - inserting a subscription during an invalidation is deferred by the engine, not waited
///   for; an overlapping invalidation that starts meanwhile calls it from its own thread;
/// - removing one (`unsubscribe`, or the record an invalidation dropped) and the matching
///   unwatch are queued to the engine's reclaim thread (`call(afterGracePeriod:)`), which
///   holds no libfabric lock while it waits for an invalidation in flight. So `unsubscribe`
///   from inside `notify` (under `mm_lock`, inside our callback) neither waits nor recurses.
/// The one lock-order rule left is libfabric's own: it must not unmap or free watched memory
/// while holding `mm_lock` (it does not: its cache frees regions after dropping the lock).
///
/// What it cannot close: libfabric registers a region before it subscribes it, so a change
/// between its `ibv_reg_mr` and its `subscribe` is not seen (its cache has the same gap with
/// every monitor). A range libfabric evicts without unsubscribing (1.17 never unsubscribes)
/// stays watched until its memory changes.
final class LibfabricMonitor: Sendable {
    let space: AddressSpace
    private let watcher: any RangeWatcher
    /// libfabric's notify (the C half's `rdmamemory_lf_notify`, a fake in tests).
    private let notify: @Sendable (AddressRange) -> Void
    private let records = Locked<[RangeKey: Record]>([:])  // pthread: TSan sees it (Locked's comment)
    /// The memo of confirmed ranges and its epoch (C, libfabric_monitor.c: the hit path reads it
    /// there without calling Swift). The epoch is bumped by every
    /// invalidation of a subscribed range before it sets the sequence, and by every record
    /// taken out: a range confirmed at the current epoch is still current.
    /// `nonisolated(unsafe)`: set once in `init`, freed in `deinit`; every access to what it
    /// points to is atomic (the C inline functions).
    nonisolated(unsafe) let memo: UnsafeMutableRawPointer
    let counters = Counters()

    /// The ranges libfabric subscribed, by exact range (libfabric passes the same address and
    /// length to `valid` and `unsubscribe` as to `subscribe`).
    struct RangeKey: Hashable {
        let start: UInt
        let length: UInt
    }

    struct Record {
        let subscription: LibfabricSubscription
        /// Subscribe calls not yet undone (libfabric's caches share this monitor: one range may
        /// be subscribed by several).
        var subscribers: Int
        /// The sequence taken when it was inserted; nil while `subscribe` is still watching it.
        var sequence: UInt64?
        /// Whether the range is watched for this record (once, whatever `subscribers` says).
        var watched: Bool
        /// Watches to undo when the record goes.
        var watches: Int { watched ? 1 : 0 }
    }

    final class Counters: Sendable {
        let subscribed = Atomic<UInt64>(0)
        let refused = Atomic<UInt64>(0)
        let unsubscribed = Atomic<UInt64>(0)
        let valid = Atomic<UInt64>(0)
        let invalid = Atomic<UInt64>(0)
        let notified = Atomic<UInt64>(0)

        /// libfabric calls `valid` under its mm_lock, one caller at a time: a plain increment
        /// (no read-modify-write on the hit path).
        static func bump(_ counter: borrowing Atomic<UInt64>) {
            counter.store(counter.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        }
    }

    init(space: AddressSpace, watcher: any RangeWatcher, notify: @escaping @Sendable (AddressRange) -> Void) {
        self.space = space
        self.watcher = watcher
        self.notify = notify
        memo = .allocate(byteCount: rdmamemory_lf_memo_size(), alignment: 64)
        rdmamemory_lf_memo_init(memo, space.windowSequenceAddress)
    }

    deinit { memo.deallocate() }

    /// libfabric's `subscribe`: 0, or a negative errno meaning "do not cache this range".
    ///
    /// The order is the cache miss's (DESIGN: `readBegin` first, then watch): the subscription
    /// goes in first, then the range is watched, then the record is checked still ours. Watched
    /// first, a `munmap` + `mmap` between the watch and the insert left a new, unwatched mapping
    /// under a valid subscription, and its next change reached nobody (the libfabric stress of
    /// Tests/Libfabric/monitor_calls.c found it: raw madvise after a hooked mmap over). Inserted
    /// first, such a change calls the subscription (it is in, or deferred and called at once),
    /// and the watch that follows registers whatever is mapped then.
    func subscribe(start: UInt, length: UInt) -> Int32 {
        guard length > 0, let range = try? AddressRange(start: start, length: length) else {
            counters.refused.add(1, ordering: .relaxed)
            return -EINVAL
        }
        let key = RangeKey(start: start, length: length)
        // Subscribed already (another cache, or libfabric again): one more subscriber of the
        // same record, whose watch and subscription cover it. Checked before anything can fail,
        // so that the unsubscribe libfabric 2.x sends after a failed subscribe never takes away
        // another cache's subscription.
        let known = records.withLock { table -> Bool in
            guard table[key] != nil else { return false }
            table[key]?.subscribers += 1
            return true
        }
        if known {
            counters.subscribed.add(1, ordering: .relaxed)
            return 0
        }
        guard let fresh = try? LibfabricSubscription(range: range, owner: self) else {
            counters.refused.add(1, ordering: .relaxed)
            return -EINVAL
        }
        // Recorded before it is inserted: an invalidation from the insert on finds the record.
        records.withLock { $0[key] = Record(subscription: fresh, subscribers: 1, sequence: nil, watched: false) }
        // Refused (nil) only where an invalidation in flight has already looked for the
        // subscribers of an overlapping range: it would never reach this one, and the region was
        // registered before, maybe of the old pages. libfabric then uses it once and registers
        // it again next time. Any other invalidation, in flight or to come, reaches it.
        let sequence: UInt64?
        var shutDown = false
        do {
            sequence = try space.insertIntervalWithoutWaiting(fresh)
        } catch {
            sequence = nil
            shutDown = true
        }
        // Memory the monitor cannot watch (shared or file memory, a range owned by another
        // userfaultfd, no userfaultfd at all) is not cached.
        let watched = sequence != nil && watcher.watch(range) == .watched
        // Kept, or refused (its record goes: nothing else knows it yet), or gone: an
        // invalidation took the record already (it was not watched then), and its notify is on
        // its way.
        enum Outcome { case kept, refused, invalidated }
        let outcome = records.withLock { table -> Outcome in
            guard table[key]?.subscription === fresh else { return .invalidated }
            guard let sequence, watched else {
                table.removeValue(forKey: key)
                return .refused
            }
            table[key]?.sequence = sequence
            table[key]?.watched = true
            return .kept
        }
        switch outcome {
        case .kept:
            counters.subscribed.add(1, ordering: .relaxed)
            return 0
        case .refused:
            retire(fresh, unwatching: 0, remove: sequence != nil)
        case .invalidated:
            retire(fresh, unwatching: watched ? 1 : 0, remove: false)  // the invalidation removes it
        }
        counters.refused.add(1, ordering: .relaxed)
        if shutDown { return -ESHUTDOWN }
        return sequence != nil && !watched ? -EPERM : -EAGAIN
    }

    /// libfabric's `valid`, on every cache hit: true only if no invalidation touched the range
    /// since it was subscribed and none may be pending.
    ///
    /// A hit must cost what libfabric's own does (its `valid` is a no-op), so the answer is
    /// first asked of the memo (the C half asks it first, without calling here): a slot that says "this range was current at epoch E". The
    /// epoch counts every invalidation of any subscribed range (bumped before its sequence),
    /// so while it is still E nothing can have touched the range: a few loads, no lock, no
    /// hash. Otherwise the record's sequence is checked under `records` and the slot refilled.
    func isValid(start: UInt, length: UInt) -> Bool {
        let valid: Bool
        if space.openWindowSequence & 1 == 1 {
            valid = false
        } else {
            let epochNow = rdmamemory_lf_memo_epoch(memo)
            if rdmamemory_lf_memo_confirms(memo, start, Int(bitPattern: length)) {
                valid = true
            } else {
                let key = RangeKey(start: start, length: length)
                valid = records.withLock { table -> Bool in
                    // Under the lock the invalidation takes after setSequence: a true answer
                    // holds until the lock is dropped (the readRetry rule).
                    guard let record = table[key], let sequence = record.sequence,
                          !record.subscription.readRetry(sequence) else { return false }
                    rdmamemory_lf_memo_record(memo, start, Int(bitPattern: length), epochNow)
                    return true
                }
            }
        }
        if valid { Counters.bump(counters.valid) } else { Counters.bump(counters.invalid) }
        return valid
    }

    /// libfabric's `unsubscribe`: undoes one `subscribe`. Never waits (see the type's comment);
    /// the removal and unwatch happen on the reclaim thread.
    func unsubscribe(start: UInt, length: UInt) {
        let key = RangeKey(start: start, length: length)
        // The subscription, and the watches to undo when this was its last subscriber.
        let found = records.withLock { table -> (LibfabricSubscription, watches: Int?)? in
            guard var record = table[key] else { return nil }
            record.subscribers -= 1
            if record.subscribers > 0 {
                table[key] = record
                return (record.subscription, nil)
            }
            table.removeValue(forKey: key)
            rdmamemory_lf_memo_forget_all(memo)
            return (record.subscription, record.watches)
        }
        guard let (subscription, watches) = found else { return }
        counters.unsubscribed.add(1, ordering: .relaxed)
        if let watches { retire(subscription, unwatching: watches, remove: true) }
    }

    /// The subscription's invalidation, called before it sets the sequence: every confirmed
    /// range is suspect from now on.
    func invalidationStarts() { rdmamemory_lf_memo_forget_all(memo) }

    /// The rest of it, after the sequence was set: drop its record (so `valid` answers false
    /// from now on), then notify libfabric, with no lock held.
    func invalidated(_ subscription: LibfabricSubscription) {
        let key = RangeKey(start: subscription.range.start, length: subscription.range.length ?? 0)
        let watches = records.withLock { table -> Int? in
            guard table[key]?.subscription === subscription else { return nil }
            return table.removeValue(forKey: key)?.watches
        }
        guard let watches else { return }  // unsubscribed already: libfabric holds nothing here
        retire(subscription, unwatching: watches, remove: true)
        counters.notified.add(1, ordering: .relaxed)
        notify(subscription.range)
    }

    /// libfabric's `stop` (its last cache closed): every record is retired.
    func stop() {
        let all = records.withLock { table -> [Record] in
            defer {
                table.removeAll()
                rdmamemory_lf_memo_forget_all(memo)
            }
            return Array(table.values)
        }
        for record in all { retire(record.subscription, unwatching: record.watches, remove: true) }
    }

    /// Number of ranges subscribed now (tests).
    var subscriptionCount: Int { records.withLock { $0.count } }

    /// Removes the subscription and undoes its watches after a grace period, on the reclaim
    /// thread: never in a libfabric call or a callback (removal may wait for an invalidation
    /// in flight, and that one may be waiting for libfabric's lock).
    private func retire(_ subscription: LibfabricSubscription, unwatching count: Int, remove: Bool) {
        let watcher = watcher
        space.srcu.call(afterGracePeriod: {
            if remove { try? subscription.remove() }
            for _ in 0..<count { watcher.unwatch(subscription.range) }
        })
    }
}
