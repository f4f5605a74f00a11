import Synchronization
import SharedTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import NotifierEngine

/// Bounded, randomized, many-thread runs that assert the invariants of DESIGN.md. Each prints
/// its seed; MMU_STRESS_SEED replays the per-thread random choices (thread interleaving is the
/// OS's), MMU_STRESS_SECONDS sets the length (default 1 s each).
@Suite("Stress", .serialized)
struct StressTests {
    /// Randomly yields, sleeps or spins: perturbs the schedule.
    static func jitter(_ rng: inout SeededRandom) {
        switch rng.next() % 8 {
        case 0: sleepMicroseconds(Int(rng.next() % 200))
        case 1, 2: sched_yield()
        default: break
        }
    }

    final class Object: Sendable {
        let freed = Atomic<Bool>(false)
    }

    @Test func objectPassedToCallIsNeverFreedUnderAReader() throws {
        let config = StressConfig("srcu-call")
        let watchdog = Watchdog(name: "srcu-call", seed: config.seed, limitSeconds: config.seconds + 30)
        defer { watchdog.finish() }
        let srcu = SRCUDomain()
        let current = Locked(Object())
        let violations = Violations()
        let deadline = config.deadline
        let sections = Atomic<Int>(0)
        runConcurrently(5) { thread in
            var rng = config.random(thread: thread)
            if thread < 3 {  // readers
                while monotonicNanoseconds() < deadline {
                    let token = srcu.readLock()
                    let seen = current.withLock { $0 }
                    if seen.freed.load(ordering: .acquiring) { violations.record("freed object published") }
                    if rng.next() % 4 == 0 {
                        srcu.withReadLock { StressTests.jitter(&rng) }  // nested
                    } else {
                        StressTests.jitter(&rng)
                    }
                    if seen.freed.load(ordering: .acquiring) {
                        violations.record("object freed while a reader that saw it was inside")
                    }
                    srcu.readUnlock(token)
                    sections.wrappingAdd(1, ordering: .relaxed)
                }
            } else {  // writers: replace, then free after a grace period
                while monotonicNanoseconds() < deadline {
                    let old = current.withLock { slot in
                        let old = slot
                        slot = Object()
                        return old
                    }
                    if rng.next() % 2 == 0 {
                        srcu.call { old.freed.store(true, ordering: .releasing) }
                    } else {
                        do { try srcu.synchronize() } catch { violations.record("\(error)") }
                        old.freed.store(true, ordering: .releasing)
                    }
                    StressTests.jitter(&rng)
                }
            }
        }
        try srcu.barrier()
        #expect(violations.count == 0, "seed \(config.seed): \(violations.first)")
        let n = sections.load(ordering: .relaxed)
        #expect(n > 0)
    }

    /// Checks every callback against "unregister returned" and "freed through call".
    final class StressNotifier: MMUNotifier {
        let unregisterReturned = Atomic<Bool>(false)
        let freed = Atomic<Bool>(false)
        let selfUnregisters: Bool
        let blockMicroseconds: Int
        let calls = Atomic<Int>(0)
        let violations: Violations
        let seed: UInt64

        init(selfUnregisters: Bool, blockMicroseconds: Int, violations: Violations, seed: UInt64) {
            self.selfUnregisters = selfUnregisters
            self.blockMicroseconds = blockMicroseconds
            self.violations = violations
            self.seed = seed
        }

        func check(_ what: String) {
            if unregisterReturned.load(ordering: .acquiring) {
                violations.record("seed \(seed): \(what) ran after unregister returned")
            }
            if freed.load(ordering: .acquiring) {
                violations.record("seed \(seed): \(what) ran after the notifier was freed via call")
            }
        }

        func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool {
            check("invalidateRangeStart")
            let n = calls.wrappingAdd(1, ordering: .relaxed).newValue
            if blockMicroseconds > 0 { sleepMicroseconds(blockMicroseconds) }
            if selfUnregisters && n % 3 == 0 {
                // Seed 002: drop ourselves from inside a callback, free after a grace period.
                if (try? space.unregisterNoRelease(self)) != nil {
                    space.srcu.call { self.freed.store(true, ordering: .releasing) }
                }
            }
            check("invalidateRangeStart (after blocking)")
            return true
        }
        func invalidateRangeEnd(_ range: InvalidationRange, in space: AddressSpace) { check("invalidateRangeEnd") }
        func clearYoung(_ range: AddressRange, in space: AddressSpace) -> Bool { check("clearYoung"); return true }
        func testYoung(_ range: AddressRange, in space: AddressSpace) -> Bool { check("testYoung"); return false }
        func release(_ space: AddressSpace) {
            check("release")
            if blockMicroseconds > 0 { sleepMicroseconds(blockMicroseconds) }
        }
    }

    @Test func noCallbackAfterUnregisterAndNoDeadlock() throws {
        let config = StressConfig("unregister")
        let watchdog = Watchdog(name: "unregister", seed: config.seed, limitSeconds: config.seconds + 30)
        defer { watchdog.finish() }
        let space = AddressSpace()
        let violations = Violations()
        let deadline = config.deadline
        let invalidations = Atomic<Int>(0)
        runConcurrently(6) { thread in
            var rng = config.random(thread: thread)
            switch thread {
            case 0, 1:  // invalidation sources, in every form
                while monotonicNanoseconds() < deadline {
                    let start = UInt(rng.next() % 64) * 0x1000
                    let r = range(start, UInt(1 + rng.next() % 8) * 0x1000)
                    switch rng.next() % 3 {
                    case 0:
                        space.invalidate(r, event: .unmap)
                    case 1:
                        if let token = try? space.invalidateRangeStart(r, event: .protectionChange,
                                                                       blockable: rng.next() % 2 == 0) {
                            StressTests.jitter(&rng)
                            token.end()
                        }
                    default:
                        let window = space.beginInvalidation()
                        window.invalidate(r, event: .remove)
                        window.end()
                    }
                    invalidations.wrappingAdd(1, ordering: .relaxed)
                }
            case 2, 3, 4:  // register / unregister churn
                while monotonicNanoseconds() < deadline {
                    let n = StressNotifier(selfUnregisters: rng.next() % 3 == 0,
                                           blockMicroseconds: rng.next() % 4 == 0 ? Int(rng.next() % 300) : 0,
                                           violations: violations, seed: config.seed)
                    do { try space.register(n) } catch { violations.record("register: \(error)"); continue }
                    StressTests.jitter(&rng)
                    if rng.next() % 4 == 0 {
                        if (try? space.unregisterNoRelease(n)) != nil {
                            space.srcu.call { n.freed.store(true, ordering: .releasing) }
                        }
                    } else {
                        do {
                            try space.unregister(n)
                            n.unregisterReturned.store(true, ordering: .releasing)
                        } catch NotifierError.notRegistered {
                            // It unregistered itself from a callback: fine.
                        } catch {
                            violations.record("unregister: \(error)")
                        }
                    }
                }
            default:  // aging
                while monotonicNanoseconds() < deadline {
                    _ = space.clearYoung(range(0, 0x40000))
                    _ = space.testYoung(range(0, 0x40000))
                    StressTests.jitter(&rng)
                }
            }
        }
        try space.release()
        try space.srcu.barrier()
        #expect(violations.count == 0, "seed \(config.seed): \(violations.first)")
        let n = invalidations.load(ordering: .relaxed)
        #expect(n > 0)
    }

    /// One cached "registration" per slot, in the registration cache's shape.
    final class Slot: Sendable {
        struct State {
            var subscription: IntervalSubscription?
            var published: Int?  // the memory version the "MR" was made from
        }
        let range: AddressRange
        let version = Atomic<Int>(0)   // bumped before each invalidation: "the memory changed"
        let state = Locked(State())
        init(range: AddressRange) { self.range = range }
    }

    final class SlotOps: IntervalNotifierOps {
        let slot: Slot
        let removeReturned = Atomic<Bool>(false)
        let violations: Violations
        let seed: UInt64
        init(slot: Slot, violations: Violations, seed: UInt64) {
            self.slot = slot
            self.violations = violations
            self.seed = seed
        }
        func invalidate(_ subscription: IntervalSubscription, range: InvalidationRange,
                        currentSequence: UInt64) -> Bool {
            if removeReturned.load(ordering: .acquiring) {
                violations.record("seed \(seed): interval callback after remove returned")
            }
            slot.state.withLock { s in
                subscription.setSequence(currentSequence)
                if s.subscription === subscription { s.published = nil }
            }
            if currentSequence % 5 == 1 { sched_yield() }
            return true
        }
    }

    @Test func everyOverlappingInvalidationAfterReadBeginIsCaught() throws {
        let config = StressConfig("interval-retry")
        let watchdog = Watchdog(name: "interval-retry", seed: config.seed, limitSeconds: config.seconds + 30)
        defer { watchdog.finish() }
        let space = AddressSpace()
        let violations = Violations()
        let slots = (0..<8).map { Slot(range: range(UInt($0) * 0x10000, 0x10000)) }
        for slot in slots {
            let sub = try space.insertInterval(slot.range,
                                               ops: SlotOps(slot: slot, violations: violations, seed: config.seed))
            slot.state.withLock { $0.subscription = sub }
        }
        let deadline = config.deadline
        let published = Atomic<Int>(0), retried = Atomic<Int>(0)
        runConcurrently(6) { thread in
            var rng = config.random(thread: thread)
            switch thread {
            case 0, 1, 2:  // cache misses: readBegin, "register", readRetry under the lock
                while monotonicNanoseconds() < deadline {
                    let slot = slots[Int(rng.next() % UInt64(slots.count))]
                    guard let sub = slot.state.withLock({ $0.subscription }) else { continue }
                    guard let seq = try? sub.readBegin() else { continue }
                    let memory = slot.version.load(ordering: .acquiring)  // "ibv_reg_mr pins it"
                    StressTests.jitter(&rng)
                    let ok = slot.state.withLock { s -> Bool in
                        guard s.subscription === sub, !sub.readRetry(seq) else { return false }
                        s.published = memory
                        return true
                    }
                    if ok {
                        published.wrappingAdd(1, ordering: .relaxed)
                    } else {
                        retried.wrappingAdd(1, ordering: .relaxed)
                    }
                }
            case 3, 4:  // memory changes, then invalidation in one of three forms
                while monotonicNanoseconds() < deadline {
                    let start = UInt(rng.next() % 0x80) * 0x1000
                    let r = range(start, UInt(1 + rng.next() % 0x18) * 0x1000)
                    let touched = slots.filter { $0.range.overlaps(r) }
                    var versions: [Int] = []
                    func memoryChanges() {
                        for slot in touched { versions.append(slot.version.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue) }
                    }
                    switch rng.next() % 3 {
                    case 0:
                        memoryChanges()
                        space.invalidate(r, event: .unmap)
                    case 1:
                        memoryChanges()
                        if let token = try? space.invalidateRangeStart(r, event: .remap) {
                            StressTests.jitter(&rng)
                            token.end()
                        }
                    default:  // the monitor: open first, then learn what changed
                        let window = space.beginInvalidation()
                        memoryChanges()
                        StressTests.jitter(&rng)
                        window.invalidate(r, event: .remove)
                        window.end()
                    }
                    for (slot, v) in zip(touched, versions) {
                        let stale = slot.state.withLock { s in s.published.map { $0 < v } ?? false }
                        if stale {
                            violations.record("seed \(config.seed): a registration of memory older than version \(v) survived an invalidation of \(r)")
                        }
                    }
                    // Leave gaps: back-to-back overlapping invalidations keep the sequence odd and
                    // (by design, as in the kernel) starve readBegin.
                    sleepMicroseconds(Int(rng.next() % 100))
                }
            default:  // subscription churn: remove and re-insert during invalidations
                while monotonicNanoseconds() < deadline {
                    let slot = slots[Int(rng.next() % UInt64(slots.count))]
                    let old = slot.state.withLock { s -> IntervalSubscription? in
                        let old = s.subscription
                        s.subscription = nil
                        s.published = nil
                        return old
                    }
                    if let old {
                        do { try old.remove() } catch { violations.record("remove: \(error)") }
                        ((old as? OpsIntervalSubscription)?.ops as? SlotOps)?.removeReturned.store(true, ordering: .releasing)
                    }
                    StressTests.jitter(&rng)
                    do {
                        let sub = try space.insertInterval(slot.range,
                                                           ops: SlotOps(slot: slot, violations: violations, seed: config.seed))
                        slot.state.withLock { $0.subscription = sub }
                    } catch {
                        violations.record("insert: \(error)")
                    }
                    sleepMicroseconds(Int(rng.next() % 2000))
                }
            }
        }
        #expect(violations.count == 0, "seed \(config.seed): \(violations.first)")
        let p = published.load(ordering: .relaxed)
        #expect(p > 0)
        print("[interval-retry] published \(p), retried \(retried.load(ordering: .relaxed))")
        for slot in slots { try slot.state.withLock({ $0.subscription })?.remove() }
        #expect(space.intervalCount == 0)
    }

    final class Entry: Sendable {
        let refs = SpeculativeRefCount(1)  // the cache's own reference
        let evicted = Atomic<Bool>(false)
    }

    @Test func getUnlessZeroNeverResurrectsAFrozenCount() throws {
        let config = StressConfig("speculative-ref")
        let watchdog = Watchdog(name: "speculative-ref", seed: config.seed, limitSeconds: config.seconds + 30)
        defer { watchdog.finish() }
        let current = Locked(Entry())
        let evictedEntries = Locked<[Entry]>([])
        let violations = Violations()
        let deadline = config.deadline
        let hits = Atomic<Int>(0), evictions = Atomic<Int>(0)
        runConcurrently(3) { thread in
            var rng = config.random(thread: thread)
            if thread < 2 {  // lookups
                while monotonicNanoseconds() < deadline {
                    let entry = current.withLock { $0 }
                    guard entry.refs.getUnlessZero() else { continue }
                    if entry.evicted.load(ordering: .acquiring) { violations.record("lookup won against an eviction") }
                    if rng.next() % 8 == 0 { StressTests.jitter(&rng) }
                    if entry.evicted.load(ordering: .acquiring) { violations.record("evicted while referenced") }
                    do { _ = try entry.refs.put() } catch { violations.record("put: \(error)") }
                    hits.wrappingAdd(1, ordering: .relaxed)
                    if rng.next() % 4 == 0 { sched_yield() }
                }
            } else {  // eviction: freeze from the cache's own count, or change its mind
                while monotonicNanoseconds() < deadline {
                    let entry = current.withLock { $0 }
                    if entry.refs.freeze(expected: 1) {
                        if rng.next() % 4 == 0 {
                            do { try entry.refs.unfreeze(1) } catch { violations.record("unfreeze: \(error)") }
                        } else {
                            entry.evicted.store(true, ordering: .releasing)
                            current.withLock { $0 = Entry() }
                            evictedEntries.withLock { $0.append(entry) }
                            evictions.wrappingAdd(1, ordering: .relaxed)
                        }
                    }
                    if rng.next() % 16 == 0 { StressTests.jitter(&rng) }
                }
            }
        }
        for entry in evictedEntries.withLock({ $0 }) where entry.refs.value != 0 {
            violations.record("a frozen count came back to \(entry.refs.value)")
        }
        #expect(violations.count == 0, "seed \(config.seed): \(violations.first)")
        print("[speculative-ref] hits \(hits.load(ordering: .relaxed)), evictions \(evictions.load(ordering: .relaxed))")
    }
}
