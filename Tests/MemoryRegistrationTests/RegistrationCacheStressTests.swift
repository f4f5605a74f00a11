#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemoryMapping
import Synchronization
import SharedTestSupport
import Testing
@testable import MemoryRegistration

/// Threads register, use and release buffers while another unmaps and maps them again at the
/// same addresses, with a region limit small enough that eviction runs all the time.
@Suite("Registration cache under concurrency") struct RegistrationCacheStressTests {
    static var seconds: Double {
        Double(ProcessInfo.processInfo.environment["RDMAMEMORY_STRESS_SECONDS"] ?? "") ?? 1.5
    }

    /// Invariant 1: once the unmap of a buffer returned, no registration that starts later is
    /// served by a region made before the unmap began (the null registrar's keys grow, so
    /// "made before" is "key below the key it would hand out next when the unmap began").
    /// Invariant 2: a region is never deregistered while a `Registration` holds it.
    @Test func noStaleRegionAfterUnmapAndNoTeardownUnderAHolder() throws {
        let registrar = NullRegistrar()
        var options = RegistrationCache.Options()
        options.maxRegions = 6
        let cache = RegistrationCache(registrar: registrar, options: options)
        guard case .userfaultfd = cache.monitoring else {
            Issue.record("userfaultfd unavailable (tests run as root): \(cache.monitoring)")
            return
        }
        let length = 65536
        let buffers = try (0..<8).map { _ in try AnonymousMapping(length: length) }
        let addresses = buffers.map(\.address)
        let shared = Shared(count: buffers.count)
        let seed = UInt64.random(in: 0...UInt64.max)
        print("[cache-stress] seed \(seed) for \(Self.seconds)s, \(buffers.count) buffers, maxRegions 6")

        let users = (0..<2).map { user in
            ThreadRunner {
                var random = SeededRandom(seed: seed &+ UInt64(user))
                while !shared.stop.load(ordering: .relaxed) {
                    let which = Int(random.next() % UInt64(addresses.count))
                    let offset = UInt(random.next() % 15) * 4096
                    let barrier = shared.barriers[which].value.load(ordering: .acquiring)
                    if random.next() % 2 == 0 {
                        guard let registration = try? cache.register(address: addresses[which] + offset, length: 4096,
                                                                     access: .rdma) else { continue }
                        if registration.isCached && registration.lkey < barrier {
                            shared.violation("buffer \(which): lkey \(registration.lkey) made before its unmap (next key then \(barrier))")
                        }
                        if !registrar.isRegistered(lkey: registration.lkey) {
                            shared.violation("lkey \(registration.lkey) deregistered while held")
                        }
                        registration.release()
                    } else {
                        let key = try? cache.withRegistration(
                            UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: addresses[which] + offset), count: 4096),
                            access: .rdma) { scoped in
                            if !registrar.isRegistered(lkey: scoped.lkey) {
                                shared.violation("scoped lkey \(scoped.lkey) deregistered inside its read section")
                            }
                            return scoped.lkey
                        }
                        if let key, key < barrier, key != 0 {
                            // A scoped miss on unmapped memory is registered uncached: fresh key.
                            shared.violation("buffer \(which): scoped lkey \(key) made before its unmap (\(barrier))")
                        }
                    }
                    shared.operations.add(1, ordering: .relaxed)
                }
            }
        }

        var random = SeededRandom(seed: seed ^ 0xABCDEF)
        var remaps = 0
        let deadline = ContinuousClock.now + .seconds(Self.seconds)
        while ContinuousClock.now < deadline {
            let which = Int(random.next() % UInt64(buffers.count))
            // Every key below `barrier` was handed out before the old pages went away, so such
            // a region maps them. (Read before the mmap: a key handed out after it returned may
            // map the new pages and be served legitimately.)
            let barrier = registrar.upcomingKey
            // One mmap(MAP_FIXED) over the buffer: its old pages are unmapped when it returns.
            // (munmap, then mmap at the address, would let another thread's allocation land
            // in the hole first, and the mmap would destroy it.)
            try buffers[which].replaceInPlace()
            shared.barriers[which].value.store(barrier, ordering: .releasing)
            remaps += 1
            // The sharpest check: the unmapping thread itself looks up right away, before the
            // monitor's worker is likely to have invalidated anything.
            if let own = try? cache.register(buffers[which].bytes, access: .rdma) {
                if own.isCached && own.lkey < barrier {
                    shared.violation("remapper, buffer \(which): lkey \(own.lkey) made before its unmap (\(barrier))")
                }
                own.release()
            }
        }
        shared.stop.store(true, ordering: .relaxed)
        for user in users { user.join() }
        let statistics = cache.statistics
        cache.shutdown()

        print("[cache-stress] \(remaps) remaps, \(shared.operations.load(ordering: .relaxed)) registrations, \(statistics)")
        #expect(shared.violations.load(ordering: .relaxed) == 0, "seed \(seed): see the lines above")
        #expect(remaps > 0 && shared.operations.load(ordering: .relaxed) > 0)
        #expect(statistics.invalidations > 0)
        #expect(registrar.liveRegistrations == 0, "invariant 5: nothing left registered after shutdown")
    }

    /// Atomics only (the stdlib `Mutex` gives false ThreadSanitizer reports).
    final class Shared: Sendable {
        /// Per buffer: the key the registrar would hand out next when its last unmap returned.
        let barriers: [Cell]
        let stop = Atomic<Bool>(false)
        let operations = Atomic<Int>(0)
        let violations = Atomic<Int>(0)

        init(count: Int) { barriers = (0..<count).map { _ in Cell() } }

        final class Cell: Sendable {
            let value = Atomic<UInt32>(0)
        }

        func violation(_ message: String) {
            if violations.add(1, ordering: .relaxed).newValue <= 5 { print("[cache-stress] violation: \(message)") }
        }
    }
}
