#if canImport(Glibc)
import Glibc
#endif
import CShims
import NotifierEngine
import MemoryMapping
import Monitors
import SharedTestSupport
import Synchronization
import Testing
import Verbs
@testable import MemoryRegistration

/// Calls into the cache from inside an invalidation callback (the user's own subscription on
/// the process's address space, run by the monitor's worker inside its window or by a hooked
/// call in the calling thread) wait for an invalidation that is their own: each must fail with
/// `.wouldDeadlock` instead, and every later call in the process must go on. Each would hang
/// if the rule broke; `finishes(within:)` reports that as a failure.
@Suite("Calls from inside an invalidation never hang", .serialized)
struct CallbackDeadlockTests {
    let registrar = NullRegistrar()

    /// What a callback's call into the cache answered.
    final class Outcome: Sendable {
        let text = Locked<[String]>([])
        func record(_ line: String) { text.withLock { $0.append(line) } }
        var lines: [String] { text.withLock { $0 } }
    }

    static func range(_ mapping: AnonymousMapping) throws -> AddressRange {
        try AddressRange(start: mapping.address, length: UInt(mapping.length))
    }

    /// Subscribes `body` to invalidations of `mapping` on the process's space (the cache's).
    static func subscribe(_ mapping: AnonymousMapping, _ body: @escaping @Sendable () -> Void) throws -> IntervalSubscription {
        let subscription = try AddressSpace.process.insertInterval(range(mapping)) { sub, _, sequence in
            sub.setSequence(sequence)
            body()
            return true
        }
        // Inserted during an invalidation (a monitor's window open for another event), the
        // subscription joins the tree only when that ends; readBegin waits for it, so the unmap
        // the test makes next is sure to reach it (without, CI saw the callback never run).
        _ = try subscription.readBegin()
        return subscription
    }

    @Test("a worker callback (raw munmap, inside the monitor's window): register, withRegistration, waitForPendingTeardowns throw .wouldDeadlock; isRevoked answers; the process goes on")
    func workerCallback() throws {
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        try #require(!MemoryMonitor.shared.isExplicitOnly, "needs the userfaultfd monitor (root)")
        let watched = try AnonymousMapping(length: 65536)
        let other = try AnonymousMapping(length: 65536)
        let held = try cache.register(watched.bytes, access: .rdma)  // watched: its unmap is an event
        let (otherAddress, otherLength) = (other.address, other.length)
        let outcome = Outcome()
        let subscription = try Self.subscribe(watched) {
            do {
                let registration = try cache.register(address: otherAddress, length: otherLength, access: .rdma)
                registration.release()
                outcome.record("register: registered")
            } catch {
                outcome.record("register: \(error)")
            }
            do {
                let buffer = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: otherAddress), count: otherLength)
                try cache.withRegistration(buffer, access: .rdma) { _ in }
                outcome.record("withRegistration: ran")
            } catch {
                outcome.record("withRegistration: \(error)")
            }
            do {
                try cache.waitForPendingTeardowns()
                outcome.record("waitForPendingTeardowns: returned")
            } catch {
                outcome.record("waitForPendingTeardowns: \(error)")
            }
        }
        defer { try? subscription.remove() }
        #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: watched.address), UInt(watched.length)) == 0)
        let settled = finishes(within: 20) { _ = try? cache.waitForPendingTeardowns() }
        #expect(settled, "the process hung after a callback called into the cache")
        let revoked = held.isRevoked
        #expect(revoked)
        held.release()
        let lines = outcome.lines
        #expect(lines.count == 3, "\(lines)")
        for line in lines { #expect(line.contains("wouldDeadlock") || line.contains("would wait for itself"), "\(line)") }
        // And afterwards, from any thread, the cache works.
        #expect(finishes(within: 20) {
            if let registration = try? cache.register(address: otherAddress, length: otherLength, access: .rdma) {
                registration.release()
            }
        })
        watched.forgetUnmapped()  // mapping it again could destroy what another thread mapped there since
    }

    @Test("a callback in a hooked munmap (calling thread): a miss of an unrelated buffer throws .wouldDeadlock, a hit works, nothing leaks")
    func hookCallback() throws {
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        try #require(!MemoryMonitor.shared.isExplicitOnly, "needs the userfaultfd monitor (root)")
        let watched = try AnonymousMapping(length: 65536)
        let cached = try AnonymousMapping(length: 65536)
        let fresh = try AnonymousMapping(length: 65536)
        let held = try cache.register(watched.bytes, access: .rdma)
        let warm = try cache.register(cached.bytes, access: .rdma)
        warm.release()
        let (cachedAddress, freshAddress, length) = (cached.address, fresh.address, cached.length)
        let outcome = Outcome()
        let subscription = try Self.subscribe(watched) {
            for (name, address) in [("hit", cachedAddress), ("miss", freshAddress)] {
                do {
                    let registration = try cache.register(address: address, length: length, access: .rdma)
                    registration.release()
                    outcome.record("\(name): registered")
                } catch {
                    outcome.record("\(name): \(error)")
                }
            }
        }
        defer { try? subscription.remove() }
        let regions = cache.statistics.cachedRegions
        // A hooked munmap in this thread: the callbacks run here, inside it. (A hang here hangs
        // the test; the worker case above is the bounded one.)
        try watched.unmap()
        let lines = outcome.lines
        // A hit needs no wait, unless a monitor's window happens to be open for another test's
        // unmap running beside this one (the process's one monitor): then it may not wait either.
        #expect(lines.first == "hit: registered" || lines.first?.contains("window is open") == true, "\(lines)")
        #expect(lines.dropFirst().first?.contains("would wait for itself") == true, "\(lines)")
        held.release()
        // The abandoned miss left nothing behind: the fresh buffer misses and caches normally.
        #expect(finishes(within: 20) { _ = try? cache.waitForPendingTeardowns() })
        let again = try cache.register(fresh.bytes, access: .rdma)
        #expect(Bool(again.isCached))
        again.release()
        #expect(cache.statistics.cachedRegions == regions, "the watched region left, the fresh one came")
    }

    /// A registrar whose deregistration registers another buffer through the same cache.
    final class ReentrantRegistrar: MemoryRegistrar {
        let inner = NullRegistrar()
        let cache = Locked<RegistrationCache?>(nil)
        let target = Atomic<UInt>(0)
        let outcome = Outcome()
        func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion {
            try inner.registerRegion(address: address, length: length, access: access)
        }
        func deregisterRegion(_ region: RegisteredRegion) throws {
            try inner.deregisterRegion(region)
            let address = target.exchange(0, ordering: .relaxed)
            guard address != 0, let cache = cache.withLock({ $0 }) else { return }
            do {
                let registration = try cache.register(address: address, length: 65536, access: .rdma)
                registration.release()
                outcome.record("registered")
            } catch {
                outcome.record("\(error)")
            }
        }
        var limits: (maxRegionBytes: UInt64, maxRegions: Int) { inner.limits }
    }

    @Test("a registrar's deregister that registers through the same cache (on the reclaim thread) finishes")
    func registrarDeregister() throws {
        let registrar = ReentrantRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        registrar.cache.withLock { $0 = cache }
        let first = try AnonymousMapping(length: 65536)
        let second = try AnonymousMapping(length: 65536)
        let registration = try cache.register(first.bytes, access: .rdma)
        registration.release()
        registrar.target.store(second.address, ordering: .relaxed)
        cache.invalidate(address: first.address, length: first.length)
        #expect(finishes(within: 20) { _ = try? cache.waitForPendingTeardowns() }, "teardown hung")
        #expect(registrar.outcome.lines == ["registered"])
        registrar.cache.withLock { $0 = nil }
    }
}
