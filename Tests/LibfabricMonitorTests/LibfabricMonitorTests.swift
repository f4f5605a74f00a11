#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine
import Monitors
import SharedTestSupport
import Synchronization
import Testing
@testable import RDMAMemoryLibfabric

/// The libfabric monitor's protocol against a fake of libfabric's cache, on an address space
/// of its own with explicit invalidations: what `subscribe`, `valid`, `unsubscribe` and
/// `notify` do, and that `unsubscribe` from inside `notify` under the cache's lock (what
/// libfabric does) never deadlocks. The real libfabric on rxe is `scripts/libfabric-tests`.
@Suite("Libfabric monitor")
struct LibfabricMonitorTests {
    /// Watches everything except the ranges it is told to refuse; counts watches and unwatches.
    final class FakeWatcher: RangeWatcher {
        let watches = Atomic<Int>(0)
        let unwatches = Atomic<Int>(0)
        let refuseFrom = Atomic<UInt>(UInt.max)

        func watch(_ range: AddressRange) -> MemoryMonitor.WatchResult {
            if range.start >= refuseFrom.load(ordering: .relaxed) {
                return .uncached(.unwatchable(range: range, reason: .sysVSharedMemory))
            }
            watches.add(1, ordering: .relaxed)
            return .watched
        }

        func unwatch(_ range: AddressRange) { unwatches.add(1, ordering: .relaxed) }
    }

    /// libfabric's cache reduced to what the monitor sees: entries under one lock (its mm_lock);
    /// `notify` takes the lock, drops overlapping entries and unsubscribes each, as libfabric
    /// does from inside notify.
    final class FakeCache: Sendable {
        struct Entry { let start: UInt; let length: UInt; let startedAtSubscribe: Int }
        let state = Locked<[UInt: Entry]>([:])
        let monitor = Locked<LibfabricMonitor?>(nil)
        let notified = Locked<[AddressRange]>([])

        func notify(_ range: AddressRange) {
            notified.withLock { $0.append(range) }
            let target = monitor.withLock { $0 }
            state.withLock { entries in
                for (start, entry) in entries {
                    guard let r = try? AddressRange(start: entry.start, length: entry.length), r.overlaps(range) else { continue }
                    entries.removeValue(forKey: start)
                    target?.unsubscribe(start: entry.start, length: entry.length)
                }
            }
        }
    }

    struct Fixture {
        let space = AddressSpace()
        let watcher = FakeWatcher()
        let cache = FakeCache()
        let monitor: LibfabricMonitor

        init() {
            let cache = cache
            monitor = LibfabricMonitor(space: space, watcher: watcher, notify: { cache.notify($0) })
            cache.monitor.withLock { [monitor] in $0 = monitor }
        }

        /// Waits for the retirements queued so far (removal and unwatch on the reclaim thread).
        func settle() throws { try space.srcu.barrier() }
    }

    static let page: UInt = 4096
    static func range(_ start: UInt, _ length: UInt) throws -> AddressRange { try AddressRange(start: start, length: length) }

    @Test func anInvalidationMakesValidFalseAndNotifiesOnce() throws {
        let f = Fixture()
        let start: UInt = 0x10_0000, length: UInt = 16 * Self.page
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        #expect(f.monitor.isValid(start: start, length: length))
        // A change touching one page of it, through the engine like any monitor's.
        f.space.invalidate(try Self.range(start + 4 * Self.page, Self.page), event: .unmap)
        #expect(!f.monitor.isValid(start: start, length: length))
        #expect(f.cache.notified.withLock { $0 } == [try Self.range(start, length)])
        // Unrelated memory: nobody is told.
        f.space.invalidate(try Self.range(0x9000_0000, Self.page), event: .unmap)
        #expect(f.cache.notified.withLock { $0.count } == 1)
        try f.settle()
        #expect(f.monitor.subscriptionCount == 0)
        #expect(f.space.intervalCount == 0)
        #expect(f.watcher.watches.load(ordering: .relaxed) == 1)
        #expect(f.watcher.unwatches.load(ordering: .relaxed) == 1)
        // Subscribed again (libfabric registered it again): valid again, with a new sequence.
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        #expect(f.monitor.isValid(start: start, length: length))
    }

    @Test func refusedAndBadRangesAreNotCached() throws {
        let f = Fixture()
        f.watcher.refuseFrom.store(0x4000_0000, ordering: .relaxed)
        #expect(f.monitor.subscribe(start: 0x4000_0000, length: Self.page) == -EPERM)
        #expect(!f.monitor.isValid(start: 0x4000_0000, length: Self.page))
        #expect(f.monitor.subscribe(start: 0x1000, length: 0) == -EINVAL)
        #expect(f.monitor.subscribe(start: UInt.max - 100, length: 4096) == -EINVAL)
        #expect(f.monitor.counters.refused.load(ordering: .relaxed) == 3)
        #expect(f.monitor.subscriptionCount == 0)
        #expect(f.watcher.watches.load(ordering: .relaxed) == 0)
        // Never subscribed at all: not valid, and unsubscribing it is harmless.
        #expect(!f.monitor.isValid(start: 0x2000, length: Self.page))
        f.monitor.unsubscribe(start: 0x2000, length: Self.page)
    }

    /// An invalidation in flight when libfabric subscribes may not reach the new subscription
    /// (the engine defers its insert), and the region was registered before: refused (libfabric
    /// uses it once, uncached), never valid, and nothing stays subscribed or watched.
    @Test func aSubscriptionMadeDuringAnInvalidationIsRefused() throws {
        let f = Fixture()
        let start: UInt = 0x20_0000, length: UInt = 4 * Self.page
        let inFlight = try f.space.invalidateRangeStart(try Self.range(start, length), event: .unmap)
        #expect(f.monitor.subscribe(start: start, length: length) == -EAGAIN)
        #expect(!f.monitor.isValid(start: start, length: length))
        inFlight.end()
        #expect(!f.monitor.isValid(start: start, length: length))
        try f.settle()
        #expect(f.monitor.subscriptionCount == 0)
        #expect(f.space.intervalCount == 0)
        #expect(f.watcher.watches.load(ordering: .relaxed) == f.watcher.unwatches.load(ordering: .relaxed))
        // Once it ended, the same range subscribes and is valid.
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        #expect(f.monitor.isValid(start: start, length: length))
    }

    /// The memo of confirmed ranges never outlives a change: a range confirmed (so the next hit
    /// takes the lock-free path) is invalid right after an invalidation of it, and one
    /// confirmed range does not vouch for another in the same slot.
    @Test func aConfirmedRangeIsForgottenByTheNextInvalidation() throws {
        let f = Fixture()
        let start: UInt = 0x60_0000, length: UInt = Self.page
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        #expect(f.monitor.isValid(start: start, length: length))  // confirmed under the lock
        #expect(f.monitor.isValid(start: start, length: length))  // from the memo
        #expect(!f.monitor.isValid(start: start, length: 2 * length))  // another range: not subscribed
        f.space.invalidate(try Self.range(start, length), event: .remove)
        #expect(!f.monitor.isValid(start: start, length: length))
        // An invalidation elsewhere sends the next hit back to the record, which still holds.
        let other: UInt = 0x70_0000
        #expect(f.monitor.subscribe(start: other, length: length) == 0)
        #expect(f.monitor.isValid(start: other, length: length))
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        f.space.invalidate(try Self.range(start, length), event: .unmap)
        #expect(f.monitor.isValid(start: other, length: length))
        #expect(!f.monitor.isValid(start: start, length: length))
    }

    /// A monitor window (userfaultfd events read, not yet invalidated) makes every hit invalid
    /// until it closes: valid cannot wait for it under libfabric's lock.
    @Test func validIsFalseWhileAWindowIsOpen() throws {
        let f = Fixture()
        let start: UInt = 0x30_0000, length: UInt = Self.page
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        let window = f.space.beginInvalidation()
        #expect(!f.monitor.isValid(start: start, length: length))
        window.end()
        #expect(f.monitor.isValid(start: start, length: length))
    }

    @Test func subscribersOfOneRangeAreCounted() throws {
        let f = Fixture()
        let start: UInt = 0x40_0000, length: UInt = Self.page
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        f.monitor.unsubscribe(start: start, length: length)
        #expect(f.monitor.isValid(start: start, length: length))
        f.monitor.unsubscribe(start: start, length: length)
        #expect(!f.monitor.isValid(start: start, length: length))
        try f.settle()
        #expect(f.watcher.watches.load(ordering: .relaxed) == f.watcher.unwatches.load(ordering: .relaxed))
        #expect(f.space.intervalCount == 0)
    }

    /// libfabric's shape under load: registering threads subscribe, hit (`valid`) and evict
    /// under the cache lock while invalidating threads change the memory; `notify` takes the
    /// lock and unsubscribes inside it. Bounded: a deadlock fails the test instead of hanging.
    /// Invariant: a hit is never valid once an invalidation that began after its subscribe
    /// has finished.
    @Test func unsubscribeInsideNotifyUnderTheCacheLockNeverDeadlocks() throws {
        let f = Fixture()
        let slots = 32
        let base: UInt = 0x100_0000
        @Sendable func slotStart(_ i: Int) -> UInt { base + UInt(i) * 4 * Self.page }
        final class Count: Sendable { let value = Atomic<Int>(0) }
        let started = (0..<slots).map { _ in Count() }
        let finished = (0..<slots).map { _ in Count() }
        let staleHits = Atomic<Int>(0)
        let hits = Atomic<Int>(0)
        let deadline = monotonicNanoseconds() + 1_500_000_000
        let ok = finishes(within: 60) {
            runConcurrently(4) { thread in
                var rng = SeededRandom(seed: UInt64(thread + 1) * 0x9E37_79B9)
                if thread < 2 {
                    // libfabric threads: everything under the cache lock, as fi_mr_reg does.
                    while monotonicNanoseconds() < deadline {
                        let i = Int(rng.next() % UInt64(slots))
                        let start = slotStart(i), length = 2 * Self.page
                        f.cache.state.withLock { entries in
                            if let entry = entries[start] {
                                let finishedNow = finished[i].value.load(ordering: .acquiring)
                                if f.monitor.isValid(start: start, length: length) {
                                    hits.add(1, ordering: .relaxed)
                                    if finishedNow > entry.startedAtSubscribe { staleHits.add(1, ordering: .relaxed) }
                                } else {
                                    entries.removeValue(forKey: start)  // libfabric drops it and registers again
                                }
                                if rng.next() % 8 == 0, entries.removeValue(forKey: start) != nil {
                                    f.monitor.unsubscribe(start: start, length: length)  // evicted
                                }
                            } else if f.monitor.subscribe(start: start, length: length) == 0 {
                                entries[start] = .init(start: start, length: length,
                                                       startedAtSubscribe: started[i].value.load(ordering: .acquiring))
                            }
                        }
                    }
                } else {
                    // Changes: each slot's invalidations one after another (this thread's half).
                    while monotonicNanoseconds() < deadline {
                        let i = Int(rng.next() % UInt64(slots / 2)) * 2 + (thread - 2)
                        started[i].value.add(1, ordering: .releasing)
                        let pages = UInt(rng.next() % 4) + 1
                        if let range = try? Self.range(slotStart(i), pages * Self.page) {
                            f.space.invalidate(range, event: .unmap)
                        }
                        finished[i].value.add(1, ordering: .releasing)
                    }
                }
            }
        }
        #expect(ok, "libfabric-shaped threads deadlocked")
        guard ok else { return }
        #expect(staleHits.load(ordering: .relaxed) == 0)
        #expect(hits.load(ordering: .relaxed) > 0)
        // Everything left is invalidated (libfabric's notify empties its tree), then settles.
        f.space.invalidate(.everything, event: .unmap)
        try f.settle()
        #expect(f.cache.state.withLock { $0.isEmpty })
        #expect(f.monitor.subscriptionCount == 0)
        #expect(f.space.intervalCount == 0)
        #expect(f.watcher.watches.load(ordering: .relaxed) == f.watcher.unwatches.load(ordering: .relaxed))
    }

    /// Explicit invalidation is one more source: it reaches libfabric like the others.
    @Test func explicitInvalidationReachesNotify() throws {
        let f = Fixture()
        let start: UInt = 0x50_0000, length: UInt = Self.page
        #expect(f.monitor.subscribe(start: start, length: length) == 0)
        ExplicitInvalidator(space: f.space).invalidate(try Self.range(start, length), cause: .reused)
        #expect(f.cache.notified.withLock { $0.count } == 1)
        #expect(!f.monitor.isValid(start: start, length: length))
    }

    /// The C entry points take `size_t`, which reaches Swift as `Int`: a length above `Int.max`
    /// arrives negative. Each must answer (an errno, false), never trap.
    @Test func extremeLengthsAtTheCEntryPoints() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lengths = [0, -1, Int.min, Int.max, -page, Int.max - page]
        let addresses: [UInt] = [0, 1, UInt(page), UInt.max - UInt(page), UInt.max]
        for address in addresses {
            for length in lengths {
                let (end, wraps) = address.addingReportingOverflow(UInt(bitPattern: length))
                let impossible = length == 0 || (wraps && end != 0)
                // Explicit invalidation (the process's space: only impossible ranges, which
                // are refused before anything is invalidated, so tests beside see nothing).
                if impossible { #expect(explicitInvalidate(address, length) == -EINVAL, "invalidate(\(address), \(length))") }
                // libfabric's calls, through the same conversion, on a monitor of its own.
                let f = Fixture()
                let subscribed = f.monitor.subscribe(start: address, length: UInt(bitPattern: length))
                if impossible { #expect(subscribed == -EINVAL, "subscribe(\(address), \(length))") }
                _ = f.monitor.isValid(start: address, length: UInt(bitPattern: length))
                f.monitor.unsubscribe(start: address, length: UInt(bitPattern: length))
                try f.settle()
            }
        }
    }
}
