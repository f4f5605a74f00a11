#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import Monitors
import Synchronization
import Testing

/// mseal exists (Linux 6.10+): `mseal(0, 0)` succeeds there and is ENOSYS before.
let msealAvailable = ctest_mseal(nil, 0) == 0

extension MonitorsTests {
    /// `munmap` through the C library's symbol is handled in the calling thread: the range is
    /// invalidated and unregistered before the unmap, so the kernel queues no event and the
    /// caller never sleeps waiting for the monitor (see `MemoryHooks`).
    @Suite("Intercepted munmap")
        struct InterceptedUnmapTests {
        @Test("invalidated in the calling thread, before munmap returns, without an event")
        func invalidatedInCaller() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 4 * pageSize
            let base = try mapAnonymous(length)
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            defer { try? harness.monitor.unwatch(watched) }
            let caller = UInt(pthread_self())
            let callbackThreads = TestLock<[UInt]>([])
            try harness.space.register(ActionNotifier { invalidation in
                if invalidation.range.overlaps(watched) { callbackThreads.withLock { $0.append(UInt(pthread_self())) } }
            })
            let probe = try RangeProbe(harness.space, watched)
            #expect(munmap(UnsafeMutableRawPointer(bitPattern: base), Int(length)) == 0)
            #expect(callbackThreads.withLock { $0 } == [caller])
            #expect(probe.seenByNewLookup == [.unmap])
            let statistics = harness.monitor.statistics
            #expect(statistics.interceptedUnmaps == 1)
            #expect(statistics.unmapEvents == 0)
        }

        @Test("sbrk lowering the break over watched heap pages: invalidated in the calling thread, without an event")
        func sbrkShrinkInCaller() throws {
            let harness = try Harness()
            defer { harness.close() }
            guard let heap = try GrownHeap.grow(watchedBy: harness.monitor) else { return }
            let caller = UInt(pthread_self())
            let callbackThreads = TestLock<[UInt]>([])
            let watched = heap.watched
            try harness.space.register(ActionNotifier { invalidation in
                if invalidation.range.overlaps(watched) { callbackThreads.withLock { $0.append(UInt(pthread_self())) } }
            })
            let probe = try RangeProbe(harness.space, heap.watched)
            #expect(UInt(bitPattern: cshims_sbrk(-heap.length)) == heap.top)
            #expect(cshims_sbrk(0) == heap.old, "glibc's cached break follows")
            #expect(callbackThreads.withLock { $0 } == [caller])
            #expect(probe.seenByNewLookup == [.unmap])
            let statistics = harness.monitor.statistics
            #expect(statistics.interceptedUnmaps == 1)
            #expect(statistics.unmapEvents == 0)
            // The heap grows again and malloc goes on working over the break glibc cached.
            #expect(cshims_sbrk(heap.length) == heap.old)
            _ = cshims_sbrk(-heap.length)
            let block = malloc(1 << 10)
            #expect(block != nil)
            free(block)
        }

        @Test("a partial munmap unregisters only what it unmaps: the rest still reports its unmap")
        func partialKeepsTheRestWatched() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(4 * pageSize)
            let watched = try range(base, 4 * pageSize)
            try harness.monitor.watch(watched)
            defer { try? harness.monitor.unwatch(watched) }
            let probes = try (0..<4).map { try RangeProbe(harness.space, range(base + UInt($0) * pageSize, pageSize)) }
            unmap(base + pageSize, pageSize)
            #expect(probes[1].seenByNewLookup == [.unmap])
            #expect(harness.monitor.statistics.interceptedUnmaps == 1)
            // A raw system call bypasses the hook: only userfaultfd can report it, so page 3
            // must still be registered.
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base + 3 * pageSize), pageSize) == 0)
            #expect(probes[3].seenByNewLookup == [.unmap])
            #expect(probes[0].seenByNewLookup.isEmpty)
            #expect(probes[2].seenByNewLookup.isEmpty)
            #expect(harness.monitor.statistics.unmapEvents == 1)
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), 3 * pageSize) == 0)
        }

        @Test("a mapping made again where an intercepted munmap was is watched again by the next watch")
        func mappedAgainIsWatchedAgain() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 4 * pageSize
            let base = try mapIsolated(length)
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            unmap(base, length)
            try harness.monitor.unwatch(watched)
            _ = try mapAgain(length, at: base)
            try harness.monitor.watch(watched)
            defer { try? harness.monitor.unwatch(watched) }
            let probe = try RangeProbe(harness.space, watched)
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), length) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(harness.monitor.statistics.unmapEvents == 1)
        }

        @Test("a munmap the kernel refuses (EPERM: mseal) returns its error and leaves the memory watched",
              .enabled(if: msealAvailable, "mseal needs Linux 6.10"))
        func failedUnmapStaysWatched() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(3 * pageSize)
            // The third page can never be unmapped again: a munmap over all three fails whole.
            #expect(ctest_mseal(UnsafeMutableRawPointer(bitPattern: base + 2 * pageSize), pageSize) == 0)
            let watched = try range(base, 2 * pageSize)
            try harness.monitor.watch(watched)
            defer { try? harness.monitor.unwatch(watched) }
            let probe = try RangeProbe(harness.space, watched)
            let result = munmap(UnsafeMutableRawPointer(bitPattern: base), Int(3 * pageSize))
            let failure = errno
            #expect(result == -1)
            #expect(failure == EPERM)
            // Invalidated anyway (harmless: a miss registers again); still mapped and watched:
            // the raw unmap below is reported by userfaultfd.
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), 2 * pageSize) == 0)
            #expect(probe.seenByNewLookup == [.unmap, .unmap])
            #expect(harness.monitor.statistics.unmapEvents == 1)
        }

        @Test("unmaps of memory nobody watches, and ones the kernel refuses (EINVAL), pass through untouched")
        func unwatchedPassThrough() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(2 * pageSize)
            let probe = try RangeProbe(harness.space, range(base, 2 * pageSize))
            let unaligned = munmap(UnsafeMutableRawPointer(bitPattern: base + 1), Int(pageSize))
            let unalignedErrno = errno
            let empty = munmap(UnsafeMutableRawPointer(bitPattern: base), 0)
            let emptyErrno = errno
            #expect(unaligned == -1 && unalignedErrno == EINVAL)
            #expect(empty == -1 && emptyErrno == EINVAL)
            #expect(munmap(UnsafeMutableRawPointer(bitPattern: base), Int(2 * pageSize)) == 0)
            #expect(probe.seenByNewLookup.isEmpty)
            #expect(harness.monitor.statistics.interceptedUnmaps == 0)
        }

        /// A file mapping in the granule makes the monitor register buffers as pieces. A piece
        /// is padded by a page on each side where the neighbour allows, so unregistering it does
        /// not merge it into the anonymous memory beside it (which the munmap would split again).
        @Test("pieces beside a file mapping: padded where the neighbours allow, exact where not; both stay watched")
        func paddedPieces() throws {
            let harness = try Harness()
            defer { harness.close() }
            let granule: UInt = 2 << 20
            let base = try mapIsolated(granule)  // 1 GiB aligned: one granule
            defer { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), granule) }
            let fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC)
            try #require(fd >= 0)
            defer { close(fd) }
            let filePage = base + 16 * pageSize
            let file = mmap(UnsafeMutableRawPointer(bitPattern: filePage), Int(pageSize), PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0)
            try #require(file != MAP_FAILED)

            // Pages 4 and 5: anonymous on both sides, padded to pages 3...6.
            let padded = try range(base + 4 * pageSize, 2 * pageSize)
            try harness.monitor.watch(padded)
            let before = mapCount(from: base, to: base + granule)
            unmap(padded.start, 2 * pageSize)
            #expect(mapCount(from: base, to: base + granule) == before + 1,
                    "the unregistered piece merged with its neighbours (or was not padded)")
            #expect(harness.monitor.statistics.interceptedUnmaps == 1)
            try harness.monitor.unwatch(padded)

            // Page 15: the file page after it cannot be registered, so the piece is exact.
            let exact = try range(base + 15 * pageSize, pageSize)
            try harness.monitor.watch(exact)
            defer { try? harness.monitor.unwatch(exact) }
            let probe = try RangeProbe(harness.space, exact)
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: exact.start), pageSize) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(harness.monitor.statistics.unmapEvents == 1)
        }

        /// Buffers of other lengths coming and going at one address of a granule registered in
        /// pieces (a churning application): each unmap costs one unregister, however many came
        /// before, and the pieces left after it still catch a raw unmap.
        @Test("churn in a granule registered in pieces: one unregister per unmap, still watched after")
        func churnInPieces() throws {
            let harness = try Harness()
            defer { harness.close() }
            let granule: UInt = 2 << 20
            let base = try mapIsolated(granule)
            defer { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), granule) }
            let fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC)
            try #require(fd >= 0)
            defer { close(fd) }
            let file = mmap(UnsafeMutableRawPointer(bitPattern: base + 16 * pageSize), Int(pageSize), PROT_READ,
                            MAP_PRIVATE | MAP_FIXED, fd, 0)
            try #require(file != MAP_FAILED)
            // Keeps the granule counted while the churning buffers come and go.
            let anchor = try range(base + 200 * pageSize, pageSize)
            try harness.monitor.watch(anchor)
            defer { try? harness.monitor.unwatch(anchor) }

            let start = base + 64 * pageSize
            let rounds = 40
            let before = harness.monitor.statistics
            for round in 0..<rounds {
                let length = UInt(1 + round % 8) * pageSize
                let buffer = try range(start, length)
                try harness.monitor.watch(buffer)
                unmap(start, length)
                try harness.monitor.unwatch(buffer)
                let fresh = mmap(UnsafeMutableRawPointer(bitPattern: start), Int(length), PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                try #require(fresh != MAP_FAILED)
            }
            let after = harness.monitor.statistics
            #expect(after.interceptedUnmaps - before.interceptedUnmaps >= rounds)
            #expect(after.interceptedUnregisters - before.interceptedUnregisters == rounds,
                    "unregisters per unmap grew with the buffers that came before")
            #expect(after.unmapEvents == before.unmapEvents)

            let last = try range(start, 3 * pageSize)
            try harness.monitor.watch(last)
            defer { try? harness.monitor.unwatch(last) }
            let probe = try RangeProbe(harness.space, last)
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: start), 3 * pageSize) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
        }

        @Test("one munmap over memory two monitors watch invalidates both")
        func twoMonitors() throws {
            let first = try Harness()
            defer { first.close() }
            let second = try Harness()
            defer { second.close() }
            let granule: UInt = 2 << 20
            let reservation = try mapIsolated(3 * granule)
            let base = (reservation + granule - 1) & ~(granule - 1)
            defer { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: reservation), 3 * granule) }
            let inFirst = try range(base, pageSize)
            let inSecond = try range(base + granule, pageSize)
            try first.monitor.watch(inFirst)
            try second.monitor.watch(inSecond)
            defer {
                try? first.monitor.unwatch(inFirst)
                try? second.monitor.unwatch(inSecond)
            }
            let firstProbe = try RangeProbe(first.space, inFirst)
            let secondProbe = try RangeProbe(second.space, inSecond)
            unmap(base, 2 * granule)
            #expect(firstProbe.seenByNewLookup == [.unmap])
            #expect(secondProbe.seenByNewLookup == [.unmap])
            #expect(first.monitor.statistics.interceptedUnmaps == 1)
            #expect(second.monitor.statistics.interceptedUnmaps == 1)
            #expect(first.monitor.statistics.unmapEvents + second.monitor.statistics.unmapEvents == 0)
        }
    }
}
