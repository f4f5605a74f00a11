import Foundation
import NotifierEngine
import Synchronization
import SharedTestSupport
import Testing
@testable import MemoryRegistration

/// Readers look registrations up without locks while a writer inserts and removes them.
@Suite("Region index under concurrency") struct RegionIndexStressTests {
    static var seconds: Double {
        Double(ProcessInfo.processInfo.environment["RDMAMEMORY_STRESS_SECONDS"] ?? "") ?? 1
    }

    /// Invariants: an entry found is never a torn or wrong one (its key and range match, even
    /// while slots are reused under the reader), and once `remove` has returned, no lookup that
    /// starts afterwards finds the removed entry.
    @Test func readersNeverSeeRemovedOrTornEntries() throws {
        let srcu = SRCUDomain()
        let index = RegionIndex(srcu: srcu, granuleShift: 16, initialCapacity: 16)
        let factory = EntryFactory()
        let kept = Locked<[CacheEntry]>([])  // entries stay alive to the end (readers hold addresses)
        let slots: UInt = 512
        let shared = Shared()
        let seed = UInt64.random(in: 0...UInt64.max)
        print("[region-index] seed \(seed) (replay: not schedule-exact; threads interleave freely) for \(Self.seconds)s")

        @Sendable func address(_ owner: UInt) -> UInt { 0x4000_0000 + (owner % slots) * 0x3000 }

        let readers = (0..<2).map { reader in
            ThreadRunner {
                var random = SeededRandom(seed: seed &+ UInt64(reader))
                var done = 0
                while !shared.stop.load(ordering: .relaxed) {
                    let before = shared.removedThrough.load(ordering: .acquiring)
                    let slot = UInt(random.next() % UInt64(slots))
                    let start = 0x4000_0000 + slot * 0x3000
                    let found: (key: UInt, start: UInt, covers: Bool)? = srcu.withReadLock {
                        let bits = index.lookup(start: start, end: start + 0x1000, access: 1)
                        guard bits != 0, let pointer = UnsafeRawPointer(bitPattern: bits) else { return nil }
                        let entry = Unmanaged<CacheEntry>.fromOpaque(pointer).takeUnretainedValue()
                        return (UInt(entry.region.lkey), entry.start, entry.covers(start: start, end: start + 0x1000, access: 1))
                    }
                    if let found {
                        if found.start != address(found.key) || !found.covers {
                            shared.violation("wrong entry \(found) for 0x\(String(start, radix: 16))")
                        }
                        if found.key <= before {
                            shared.violation("key \(found.key) found after its removal (\(before))")
                        }
                    }
                    done += 1
                }
                shared.lookups.add(done, ordering: .relaxed)
            }
        }

        var owner: UInt = 0
        var live: [UInt: CacheEntry] = [:]
        let deadline = ContinuousClock.now + .seconds(Self.seconds)
        while ContinuousClock.now < deadline {
            owner += 1
            let entry = try factory.entry(address(owner), 0x2000, access: 0b11, key: UInt32(truncatingIfNeeded: owner))
            kept.withLock { $0.append(entry) }
            live[owner] = entry
            index.insert(entry)
            if owner > slots / 2 {
                let victim = owner - slots / 2
                if let removed = live.removeValue(forKey: victim) { index.remove(removed) }
                shared.removedThrough.store(victim, ordering: .releasing)
            }
        }
        shared.stop.store(true, ordering: .relaxed)
        for reader in readers { reader.join() }
        try srcu.barrier()

        let lookups = shared.lookups.load(ordering: .relaxed)
        print("[region-index] \(owner) inserts, \(lookups) lookups")
        #expect(shared.violations.load(ordering: .relaxed) == 0, "seed \(seed): see the lines above")
        #expect(lookups > 0)
    }

    /// What the writer and the readers share. Atomics only: the stdlib `Mutex` gives false
    /// ThreadSanitizer reports (its futex path is not instrumented).
    final class Shared: Sendable {
        let removedThrough = Atomic<UInt>(0)
        let stop = Atomic<Bool>(false)
        let lookups = Atomic<Int>(0)
        let violations = Atomic<Int>(0)

        func violation(_ message: String) {
            if violations.add(1, ordering: .relaxed).newValue <= 5 { print("[region-index] violation: \(message)") }
        }
    }
}

/// A plain thread to join, so blocking loops stay off Swift's cooperative pool.
final class ThreadRunner: Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Void) {
        Thread { [done] in
            body()
            done.signal()
        }.start()
    }

    func join() { done.wait() }
}
