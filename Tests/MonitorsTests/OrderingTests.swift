#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine
import MemoryMapping
@testable import Monitors
import Synchronization
import Testing

/// The ordering guarantee (DESIGN.md, "Closing the userfaultfd race"), end to end.
///
extension MonitorsTests {
    /// Thread A unmaps and maps again at the same address in a loop; each mapping is a new
    /// *generation*. Threads B..n look the range up like a registration cache: `readBegin`, a hit
    /// returns the cached generation; a miss does `watch`, "registers" the generation mapped now,
    /// and publishes it only if `readRetry` allows. The invalidate callback clears the entry. A
    /// lookup that starts after the munmap of generation g returned and still returns g (or
    /// older) is a violation.
    @Suite("Ordering: after munmap returns, no later lookup sees the old generation")
        struct OrderingTests {
        final class Shared: Sendable {
            let unmapped = Atomic<Int>(0)      // generations whose munmap has returned
            let mapped = Atomic<Int>(0)        // generation mapped now; -1 while none
            let done = Atomic<Bool>(false)
            let cached = TestLock<Int>(-1)     // the "cache entry": a generation, or -1
            let violations = Atomic<Int>(0)
            let hits = Atomic<Int>(0)
            let misses = Atomic<Int>(0)
            let samples = TestLock<[String]>([])
        }

        /// The guarantee, forced: the worker is held before it invalidates, so the window the
        /// reader opened before reading stays open after munmap returned. A lookup that starts
        /// then must wait (the space's sequence is odd: `readBegin` waits while a window is
        /// open), and once the worker is let go it sees the invalidation.
        @Test("after munmap returned, a lookup waits for the invalidation (worker held open)")
        func lookupWaitsForTheWindow() throws {
            let harness = try Harness(configuration: .init(interceptsMunmap: false))
            defer { harness.close() }
            let length = 4 * pageSize
            let base = try mapIsolated(length)
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            harness.monitor.holdWorker(true)
            unmap(base, length)  // an event: returns once the reader has read it
            #expect(harness.space.openWindowSequence & 1 == 1, "no window open after munmap returned")
            #expect(probe.log.events.withLock { $0 }.isEmpty, "invalidated before the worker was let go")
            let lookup = spawnLookup(probe)
            harness.monitor.holdWorker(false)
            #expect(lookup.wait() == [.unmap], "the lookup did not see the invalidation")
        }

        @Test("unmap/map loop against concurrent lookups: zero violations (munmap intercepted; events with a queue of 256, and of 1 so wake-ups overflow)",
              arguments: [(256, true), (256, false), (1, false)])
        func orderingGuarantee(queueSlots: Int, interceptsMunmap: Bool) throws {
            let iterations = Int(getenv("MONITOR_ORDERING_ITERATIONS").map { String(cString: $0) } ?? "") ?? 100_000
            let readers = Int(getenv("MONITOR_ORDERING_READERS").map { String(cString: $0) } ?? "") ?? 2
            let harness = try Harness(configuration: .init(queueSlots: queueSlots, interceptsMunmap: interceptsMunmap))
            defer { harness.close() }
            let length = 4 * pageSize
            let base = try mapIsolated(length)
            let lost = Atomic<Bool>(false)
            defer { unmap(base, length) }
            let watched = try range(base, length)
            let shared = Shared()
            let subscription = try harness.space.insertInterval(watched) { sub, _, sequence in
                shared.cached.withLock {
                    sub.setSequence(sequence)
                    $0 = -1
                }
                return true
            }
            let monitor = harness.monitor
            let started = now()
            runThreads(readers + 1) { index in
                if index == 0 {
                    for generation in 0..<iterations {
                        // Give the readers a chance to cache this generation (and so watch its
                        // mapping) before it goes: that is the case the guarantee is about.
                        for _ in 0..<200 where shared.cached.withLock({ $0 }) != generation { sched_yield() }
                        shared.mapped.store(-1, ordering: .sequentiallyConsistent)
                        unmap(base, length)
                        shared.unmapped.store(generation + 1, ordering: .sequentiallyConsistent)
                        if (try? mapAgain(length, at: base)) == nil {
                        lost.store(true, ordering: .relaxed)  // someone took the hole: stop
                        shared.done.store(true, ordering: .releasing)
                        return
                    }
                        shared.mapped.store(generation + 1, ordering: .sequentiallyConsistent)
                    }
                    shared.done.store(true, ordering: .releasing)
                    return
                }
                while !shared.done.load(ordering: .acquiring) {
                    let start = shared.unmapped.load(ordering: .sequentiallyConsistent)
                    guard let sequence = try? subscription.readBegin() else { continue }
                    let hit = shared.cached.withLock { $0 }
                    if hit >= 0 {
                        shared.hits.wrappingAdd(1, ordering: .relaxed)
                        if hit < start {
                            shared.violations.wrappingAdd(1, ordering: .relaxed)
                            shared.samples.withLock { if $0.count < 10 { $0.append("lookup from \(start) saw \(hit)") } }
                        }
                        sched_yield()  // two cores: let A and the monitor run
                        continue
                    }
                    // Miss: readBegin, watch, register what is mapped now, readRetry under the lock.
                    shared.misses.wrappingAdd(1, ordering: .relaxed)
                    guard (try? monitor.watch(watched)) != nil else { continue }  // between munmap and mmap
                    let generation = shared.mapped.load(ordering: .sequentiallyConsistent)
                    if generation < 0 { continue }  // "ibv_reg_mr" would fail: nothing mapped
                    shared.cached.withLock { if !subscription.readRetry(sequence) { $0 = generation } }
                }
            }
            let seconds = now() - started
            let violations = shared.violations.load(ordering: .relaxed)
            let hits = shared.hits.load(ordering: .relaxed)
            let misses = shared.misses.load(ordering: .relaxed)
            print("ordering: \(interceptsMunmap ? "intercepted" : "events"), \(queueSlots) slots, \(iterations) iterations, \(readers) readers, \(hits) hits, \(misses) misses, "
                  + "\(violations) violations in \((seconds * 10).rounded() / 10) s; events \(monitor.statistics)")
            #expect(violations == 0, "violations: \(shared.samples.withLock { $0 })")
        let addressLost = lost.load(ordering: .relaxed)
        #expect(!addressLost, "the address was taken between munmap and mmap")
            #expect(shared.unmapped.load(ordering: .relaxed) == iterations)
            #expect(hits > 0)
            if interceptsMunmap {
                #expect(monitor.statistics.interceptedUnmaps > 0)
            } else {
                #expect(monitor.statistics.unmapEvents > 0)
            }
        }
    }
}

/// A lookup (`seenByNewLookup`) on a thread of its own, joined by `wait()`.
final class LookupThread: @unchecked Sendable {
    // @unchecked: `result` is written by the thread before it ends and read after the join.
    var result: [InvalidationEvent] = []
    var thread = pthread_t()
}

func spawnLookup(_ probe: RangeProbe) -> LookupHandle {
    let box = LookupThread()
    final class Context: @unchecked Sendable {
        // @unchecked: immutable after init.
        let probe: RangeProbe
        let box: LookupThread
        init(_ probe: RangeProbe, _ box: LookupThread) { self.probe = probe; self.box = box }
    }
    let context = Unmanaged.passRetained(Context(probe, box)).toOpaque()
    pthread_create(&box.thread, nil, { raw in
        guard let raw else { return nil }
        let context = Unmanaged<Context>.fromOpaque(raw).takeRetainedValue()
        context.box.result = context.probe.seenByNewLookup
        return nil
    }, context)
    return LookupHandle(box: box)
}

struct LookupHandle {
    let box: LookupThread
    func wait() -> [InvalidationEvent] {
        pthread_join(box.thread, nil)
        return box.result
    }
}
