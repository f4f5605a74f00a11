#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine
import Monitors
import Testing

extension MonitorsTests {
    /// A watch in a granule found wholly registered skips its ioctls; an unmap there must make
    /// the next watch register again, or a new mapping at the same address would go unwatched.
    @Suite("validated granules: watches without ioctls, forgotten on unmap")
    struct ValidatedGranuleTests {
        let granule: UInt = 2 << 20

        @Test("a second buffer in a wholly registered granule is watched without an ioctl")
        func secondWatchIsFree() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolated(3 * granule)  // 1 GiB-aligned: the first granule is whole
            defer { unmap(base, 3 * granule) }
            let first = try range(base, pageSize)
            let second = try range(base + 16 * pageSize, pageSize)
            try harness.monitor.watch(first)
            #expect(harness.monitor.validatedGranuleCount == 1)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 0)
            try harness.monitor.watch(second)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 1)
            #expect(harness.monitor.watchCount(in: first) == 2)
            try harness.monitor.unwatch(second)
            try harness.monitor.unwatch(first)
            #expect(harness.monitor.validatedGranuleCount == 0, "the last unwatch unregisters and forgets the granule")
            #expect(harness.monitor.watchedGranuleCount == 0)
        }

        @Test("munmap + mmap of a neighbour inside a validated granule: the new mapping is watched for real")
        func unmapForgetsTheGranule() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolated(3 * granule)
            defer { unmap(base, 3 * granule) }
            let anchor = try range(base, pageSize)
            try harness.monitor.watch(anchor)
            #expect(harness.monitor.validatedGranuleCount == 1)

            let neighbour = base + 32 * pageSize
            unmap(neighbour, 16 * pageSize)
            // No readBegin here on purpose: a watch right after munmap returned must not
            // trust the granule either (the window is open until the worker forgot it).
            _ = try mapAgain(16 * pageSize, at: neighbour)
            let fresh = try range(neighbour, pageSize)
            let before = harness.monitor.statistics.watchesWithoutIoctl
            try harness.monitor.watch(fresh)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before, "the unmap made the granule untrusted")

            // Proof that the new mapping is registered: its unmap reaches the engine. The first
            // unmap's window may still be open (the probe's insert is then deferred to its end):
            // readBegin waits until the probe is in the tree, as a cache miss would.
            let probe = try RangeProbe(harness.space, fresh)
            _ = try? probe.subscription.readBegin()
            unmap(neighbour, 16 * pageSize)
            #expect(probe.seenByNewLookup == [.unmap])
            try probe.subscription.remove()
            try harness.monitor.unwatch(fresh)
            try harness.monitor.unwatch(anchor)
        }

        /// Mapped by a raw system call: a mapping the hooked mmap made is known without asking,
        /// and the granule's whole register takes it (`KnownMappingTests`).
        @Test("a granule only partly mapped is never trusted: every watch there asks the kernel")
        func partialGranuleIsNotValidated() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolatedUnseen(16 * pageSize)
            defer { unmap(base, 16 * pageSize) }
            for page in 0..<4 { try harness.monitor.watch(try range(base + UInt(page) * pageSize, pageSize)) }
            #expect(harness.monitor.validatedGranuleCount == 0)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 0)
            for page in 0..<4 { try harness.monitor.unwatch(try range(base + UInt(page) * pageSize, pageSize)) }
        }
    }
}
