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
        @Test("a granule only partly mapped is never validated whole: a watch of pages not asked about asks the kernel")
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

        /// A heap's top, a block glibc mapped for itself: granules never whole, where buffers come
        /// back at the same addresses (a new cache, an eviction). Mapped by a raw system call, so
        /// that no record of the hooks answers instead.
        @Test("pages asked about in a partly mapped granule need no ioctl again, until an unmap there")
        func askedPagesAreTrustedUntilUnmapped() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolatedUnseen(16 * pageSize)
            defer { unmap(base, 16 * pageSize) }
            let buffer = try range(base, 4 * pageSize)
            try harness.monitor.watch(buffer)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 0)
            try harness.monitor.watch(buffer)
            try harness.monitor.watch(try range(base + pageSize, pageSize))
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 2, "pages asked about once are known")
            #expect(harness.monitor.validatedGranuleCount == 0, "the granule is not validated whole")
            let beside = try range(base + 8 * pageSize, pageSize)
            try harness.monitor.watch(beside)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 2, "a page not asked about asks the kernel")

            // Unmapped and mapped again at the same address: asked about again, and registered
            // for real (its unmap reaches the engine).
            unmap(base, 4 * pageSize)
            _ = try mapAgain(4 * pageSize, at: base)
            try harness.monitor.watch(buffer)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 2, "the unmap made the pages unknown")
            let probe = try RangeProbe(harness.space, buffer)
            _ = try? probe.subscription.readBegin()
            unmap(base, 4 * pageSize)
            #expect(probe.seenByNewLookup == [.unmap])
            try probe.subscription.remove()
            for _ in 0..<3 { try harness.monitor.unwatch(buffer) }
            try harness.monitor.unwatch(try range(base + pageSize, pageSize))
            try harness.monitor.unwatch(beside)
        }

        @Test("an unmap beside pages asked about forgets only what it unmapped (a heap trimmed at its top)")
        func unmapBesideKeepsThePagesBelow() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolatedUnseen(16 * pageSize)
            defer { unmap(base, 16 * pageSize) }
            let buffer = try range(base, 8 * pageSize)
            try harness.monitor.watch(buffer)
            unmap(base + 12 * pageSize, 4 * pageSize)  // not the buffer's pages
            unmap(base + 6 * pageSize, 2 * pageSize)   // the buffer's top two pages
            let below = try range(base, 4 * pageSize)
            try harness.monitor.watch(below)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 1, "the pages below the unmap stayed known")
            _ = try mapAgain(2 * pageSize, at: base + 6 * pageSize)
            let top = try range(base + 6 * pageSize, 2 * pageSize)
            try harness.monitor.watch(top)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == 1, "the unmapped pages are asked about again")
            try harness.monitor.unwatch(top)
            try harness.monitor.unwatch(below)
            try harness.monitor.unwatch(buffer)
        }
    }
}
