import Foundation
import MemoryMapping
import MemoryRegistration
import Synchronization
import Testing
import Verbs

extension RxeIntegration {
    /// Threads register through one cache, RDMA-write through the registration, and unmap and
    /// map their buffers again, for a bounded time: every write must land in the memory the
    /// application has at that address now (DESIGN.md invariant 1 on the real device).
    @Suite struct CacheStress {
        static var seconds: Double {
            Double(ProcessInfo.processInfo.environment["RDMAMEMORY_STRESS_SECONDS"] ?? "") ?? 3
        }

        @Test func writesLandInCurrentMemoryWhileBuffersAreRemapped() throws {
            let context = try DeviceContext(name: Rxe.deviceName)
            let domain = try ProtectionDomain(context: context)
            let cache = RegistrationCache(protectionDomain: domain)
            defer { cache.shutdown() }
            let counters = Counters()
            let seed = UInt64.random(in: 0...UInt64.max)
            print("[rxe-cache-stress] seed \(seed) for \(Self.seconds)s")

            let workers = try (0..<2).map { worker in
                let queue = try CompletionQueue(context: context)
                let queuePair = try QueuePair(protectionDomain: domain, sendCompletionQueue: queue)
                try queuePair.connectToItself()
                return BackgroundThread { () throws -> Void in
                    try Self.work(worker: worker, seed: seed, cache: cache, domain: domain, queuePair: queuePair,
                                  counters: counters)
                }
            }
            for worker in workers { try worker.join(timeout: .now() + Self.seconds + 120) }
            let statistics = cache.statistics
            print("[rxe-cache-stress] \(counters.writes.load(ordering: .relaxed)) writes, \(counters.remaps.load(ordering: .relaxed)) remaps; \(statistics)")
            #expect(counters.failures.load(ordering: .relaxed) == 0, "seed \(seed): see the lines above")
            #expect(counters.writes.load(ordering: .relaxed) > 0)
            #expect(statistics.invalidations > 0)
        }

        final class Counters: Sendable {
            let failures = Atomic<Int>(0)
            let writes = Atomic<Int>(0)
            let remaps = Atomic<Int>(0)
        }

        static func work(worker: Int, seed: UInt64, cache: RegistrationCache, domain: ProtectionDomain,
                         queuePair: QueuePair, counters: Counters) throws {
            var state = seed &+ UInt64(worker) &* 0x9E37_79B9_7F4A_7C15
            func next() -> UInt64 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return state >> 11
            }
            let length = 16384
            let buffers = try (0..<4).map { _ in try AnonymousMapping(length: length) }
            let source = try AnonymousMapping(length: length)
            let sourceRegion = try domain.registerMemory(source.bytes, access: .rdma)
            let deadline = ContinuousClock.now + .seconds(seconds)
            var iteration: UInt64 = 0
            while ContinuousClock.now < deadline {
                iteration += 1
                let buffer = buffers[Int(next() % UInt64(buffers.count))]
                if next() % 4 == 0 {
                    try buffer.replaceInPlace()
                    counters.remaps.add(1, ordering: .relaxed)
                }
                let pattern = UInt8(truncatingIfNeeded: iteration &* 31 &+ UInt64(worker) &* 101) | 1
                source.fill { _ in pattern }
                let registration = try cache.register(buffer.bytes, access: .rdma)
                try queuePair.postWrite([ScatterGatherElement(region: sourceRegion)],
                                        remoteAddress: UInt64(registration.address), rkey: registration.rkey,
                                        id: iteration)
                let completion = try queuePair.sendCompletionQueue.waitForCompletions(1, timeout: .seconds(30))[0]
                let cached = registration.isCached
                registration.release()
                let landed = buffer.count { $0 == pattern }
                counters.writes.add(1, ordering: .relaxed)
                if completion.status != .success || landed != length {
                    if counters.failures.add(1, ordering: .relaxed).newValue <= 5 {
                        print("[rxe-cache-stress] worker \(worker) iteration \(iteration): \(completion.status), \(landed) of \(length) bytes landed (cached: \(cached))")
                    }
                }
            }
        }
    }
}
