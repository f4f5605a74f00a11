#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine
import MemoryMapping
import Monitors
import Synchronization
import SharedTestSupport
import Testing

/// A notifier whose invalidate callback runs `action` (once per event, on whatever thread
/// delivers it: the monitor's worker for userfaultfd events).
final class ActionNotifier: MMUNotifier {
    let action: @Sendable (InvalidationRange) -> Void
    init(_ action: @escaping @Sendable (InvalidationRange) -> Void) { self.action = action }
    func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool {
        action(range)
        return true
    }
}

extension MonitorsTests {
    /// A thread in munmap of watched memory sleeps until the monitor reads its event; these tests
    /// prove nobody waits in a circle (each bounded: a hang fails the test instead of the run).
    @Suite("No deadlock")
        struct DeadlockTests {
        @Test("many threads unmapping watched memory at once (intercepted, and as events)", arguments: [true, false])
        func manyUnmappers(interceptsMunmap: Bool) throws {
            let harness = try Harness(configuration: .init(interceptsMunmap: interceptsMunmap))
            defer { harness.close() }
            let threads = 8
            let rounds = Int(stressSeconds(0.5) * 400)
            let monitor = harness.monitor
            let failures = Atomic<Int>(0)
            let finished = finishes(within: 60) {
                runThreads(threads) { _ in
                    for _ in 0..<rounds {
                        guard let base = try? mapAnonymous(4 * pageSize), let watched = try? range(base, 4 * pageSize) else {
                            failures.wrappingAdd(1, ordering: .relaxed)
                            continue
                        }
                        if (try? monitor.watch(watched)) == nil { failures.wrappingAdd(1, ordering: .relaxed) }
                        unmap(base, 4 * pageSize)
                        try? monitor.unwatch(watched)
                    }
                }
            }
            #expect(finished, "unmapping threads hung (\(threads) threads × \(rounds) rounds)")
            #expect(failures.load(ordering: .relaxed) == 0)
            let statistics = harness.monitor.statistics
            #expect((interceptsMunmap ? statistics.interceptedUnmaps : statistics.unmapEvents) > 0)
        }

        @Test("an invalidation callback that unmaps (and watches, unwatches) watched memory")
        func callbackUnmaps() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 8 * pageSize
            let first = try mapAnonymous(length)
            let second = try mapAnonymous(length)
            let firstRange = try range(first, length)
            let secondRange = try range(second, length)
            let third = try mapAnonymous(length)
            let thirdRange = try range(third, length)
            defer { unmap(third, length) }
            try harness.monitor.watch(firstRange)
            try harness.monitor.watch(secondRange)
            let monitor = harness.monitor
            let once = Atomic<Bool>(false)
            let callbackErrors = TestLock<[String]>([])
            try harness.space.register(ActionNotifier { invalidation in
                guard invalidation.range.overlaps(firstRange), !once.exchange(true, ordering: .relaxed) else { return }
                // On the worker: unmapping watched memory waits for the reader, which never waits for us.
                unmap(second, length)
                do {
                    try monitor.watch(thirdRange)
                    try monitor.unwatch(firstRange)
                } catch {
                    callbackErrors.withLock { $0.append("\(error)") }
                }
            })
            let probe = try RangeProbe(harness.space, secondRange)
            let finished = finishes(within: 20) { unmap(first, length) }
            #expect(finished, "munmap hung: the callback's unmap deadlocked")
            #expect(finishes(within: 20) { _ = probe.seenByNewLookup })
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(callbackErrors.withLock { $0 }.isEmpty)
        }

        /// Only on the event path: an intercepted munmap runs the callbacks in the unmapping
        /// thread, like the kernel's mmu notifiers, so there a callback must not take a lock
        /// held across munmap (see `UserfaultfdMonitor.Configuration.interceptsMunmap`).
        @Test("without interception, a lock held across munmap that the invalidate callback also takes (queue of 256, and of 2 to force overflows)",
              arguments: [256, 2])
        func lockAcrossMunmap(queueSlots: Int) throws {
            let harness = try Harness(configuration: .init(queueSlots: queueSlots, interceptsMunmap: false))
            defer { harness.close() }
            let userLock = TestLock<Int>(0)
            try harness.space.register(ActionNotifier { _ in userLock.withLock { $0 += 1 } })
            let finished = finishes(within: 30) {
                runThreads(4) { _ in
                    for _ in 0..<200 {
                        guard let base = try? mapAnonymous(2 * pageSize), let watched = try? range(base, 2 * pageSize) else { continue }
                        _ = try? harness.monitor.watch(watched)
                        userLock.withLock { _ in unmap(base, 2 * pageSize) }  // like a cache freeing under its lock
                        try? harness.monitor.unwatch(watched)
                    }
                }
            }
            #expect(finished, "hung with \(queueSlots) queue slots: \(harness.monitor.statistics)")
            if !finished { return }  // the lock may still be held by a hung thread
            #expect(userLock.withLock { $0 } > 0)
            print("lock across munmap, \(queueSlots) slots: \(harness.monitor.statistics)")
        }

        @Test("an explicit invalidation whose callback unmaps watched memory")
        func explicitCallbackUnmaps() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 4 * pageSize
            let victim = try mapAnonymous(length)
            let victimRange = try range(victim, length)
            try harness.monitor.watch(victimRange)
            let trigger = try range(0x1000, pageSize)
            try harness.space.register(ActionNotifier { invalidation in
                if invalidation.event == .explicit && invalidation.range == trigger { unmap(victim, length) }
            })
            let probe = try RangeProbe(harness.space, victimRange)
            let explicit = ExplicitInvalidator(space: harness.space)
            #expect(finishes(within: 20) { explicit.invalidate(trigger, cause: .reused) })
            #expect(probe.seenByNewLookup == [.unmap])
        }
    }
}
