#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import MemoryMapping
import Monitors
import Testing

extension MonitorsTests {
    /// Every way memory can go away under a registration: once the call returns, a lookup that
    /// starts later sees the invalidation (`RangeProbe.seenByNewLookup` starts such a lookup).
    @Suite("Unmap events reach the engine")
        struct UnmapEventTests {
        @Test("munmap of a whole watched mapping (intercepted, and as an event)", arguments: [true, false])
        func munmapWhole(interceptsMunmap: Bool) throws {
            let harness = try Harness(configuration: .init(interceptsMunmap: interceptsMunmap))
            defer { harness.close() }
            let mapping = try AnonymousMapping(length: 64 << 10)
            let watched = try range(of: mapping)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            #expect(probe.seenByNewLookup.isEmpty)
            try mapping.unmap()
            #expect(probe.seenByNewLookup == [.unmap])
            let statistics = harness.monitor.statistics
            #expect(statistics.unmapEvents == (interceptsMunmap ? 0 : 1))
            #expect(statistics.interceptedUnmaps == (interceptsMunmap ? 1 : 0))
        }

        @Test("munmap of one page in the middle: only that page is invalidated")
        func munmapPartial() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(4 * pageSize)
            // Never unmap page 2 twice: once unmapped, the address may belong to someone else.
            defer { unmap(base, 2 * pageSize); unmap(base + 3 * pageSize, pageSize) }
            try harness.monitor.watch(range(base, 4 * pageSize))
            let probes = try (0..<4).map { try RangeProbe(harness.space, range(base + UInt($0) * pageSize, pageSize)) }
            unmap(base + 2 * pageSize, pageSize)
            #expect(probes[2].seenByNewLookup == [.unmap])
            #expect(probes[0].seenByNewLookup.isEmpty)
            #expect(probes[1].seenByNewLookup.isEmpty)
            #expect(probes[3].seenByNewLookup.isEmpty)
            #expect(probes[2].ranges == [try range(base + 2 * pageSize, pageSize)])
        }

        @Test("mmap(MAP_FIXED) over a watched range")
        func mapFixedOver() throws {
            let harness = try Harness()
            defer { harness.close() }
            let mapping = try AnonymousMapping(length: 16 << 10)
            let watched = try range(of: mapping)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            _ = try mapAnonymous(UInt(mapping.length), at: mapping.address)
            #expect(probe.seenByNewLookup == [.unmap])
        }

        // The mremap and madvise cases below are raw system calls: through libc the hooks take
        // them in the calling thread (AdviceAndRemapHookTests), and no event is queued.
        @Test("mremap moved (MREMAP_FIXED): the old range is invalid")
        func mremapMoved() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 8 * pageSize
            let source = try mapAnonymous(length)
            let target = try mapAnonymous(length)
            let watched = try range(source, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            let moved = ctest_raw_mremap(UnsafeMutableRawPointer(bitPattern: source), length, length,
                                          Int32(CTEST_MREMAP_MAYMOVE | CTEST_MREMAP_FIXED), UnsafeMutableRawPointer(bitPattern: target))
            #expect(UInt(bitPattern: moved) == target)
            defer { unmap(target, length) }
            #expect(probe.seenByNewLookup.contains(.remap))
            #expect(harness.monitor.statistics.remapEvents == 1)
        }

        @Test("mremap grown (the kernel had to move it): the old range is invalid")
        func mremapGrown() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 8 * pageSize
            // One more page, made PROT_NONE: a separate VMA right after, so growing must move.
            let base = try mapAnonymous(length + pageSize)
            #expect(mprotect(UnsafeMutableRawPointer(bitPattern: base + length), Int(pageSize), PROT_NONE) == 0)
            defer { unmap(base + length, pageSize) }
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            let grown = ctest_raw_mremap(UnsafeMutableRawPointer(bitPattern: base), length, 4 * length, Int32(CTEST_MREMAP_MAYMOVE), nil)
            let newAddress = UInt(bitPattern: grown)
            #expect(grown != MAP_FAILED && newAddress != base)
            defer { unmap(newAddress, 4 * length) }
            #expect(probe.seenByNewLookup.contains(.remap))
        }

        @Test("mremap shrunk in place: the cut-off tail is invalid, the head is not")
        func mremapShrunk() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 8 * pageSize
            let base = try mapAnonymous(length)
            defer { unmap(base, length / 2) }
            try harness.monitor.watch(range(base, length))
            let head = try RangeProbe(harness.space, range(base, length / 2))
            let tail = try RangeProbe(harness.space, range(base + length / 2, length / 2))
            let shrunk = ctest_raw_mremap(UnsafeMutableRawPointer(bitPattern: base), length, length / 2, 0, nil)
            #expect(UInt(bitPattern: shrunk) == base)
            #expect(tail.seenByNewLookup == [.unmap])
            #expect(head.seenByNewLookup.isEmpty)
        }

        @Test("madvise(MADV_DONTNEED): the pages are gone, the mapping stays")
        func madviseDontNeed() throws {
            let harness = try Harness()
            defer { harness.close() }
            let mapping = try AnonymousMapping(length: 64 << 10)
            let watched = try range(of: mapping)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            let pointer = UnsafeMutableRawPointer(bitPattern: mapping.address)
            #expect(ctest_raw_madvise(pointer, UInt(mapping.length), MADV_DONTNEED) == 0)
            #expect(probe.seenByNewLookup == [.remove])
            // Still watched: a second discard is reported too, and touching needs no answer.
            mapping.fill { _ in 7 }
            #expect(ctest_raw_madvise(pointer, UInt(mapping.length), MADV_DONTNEED) == 0)
            #expect(probe.seenByNewLookup == [.remove, .remove])
        }

        @Test("madvise(MADV_REMOVE) of shared anonymous (shmem) memory")
        func madviseRemove() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.features & UserfaultfdFeature.wpHugetlbfsShmem != 0,
                         "kernel lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM")
            let length = 16 * pageSize
            let base = try mapAnonymous(length, shared: true)
            defer { unmap(base, length) }
            let watched = try range(base, length)
            // Shared memory is refused unless the caller opts in (its pages can change unseen).
            #expect(throws: MonitorError.self) { try harness.monitor.watch(watched) }
            try harness.monitor.watch(watched, allowingSharedMemory: true)
            let probe = try RangeProbe(harness.space, watched)
            #expect(ctest_raw_madvise(UnsafeMutableRawPointer(bitPattern: base), UInt(pageSize), MADV_REMOVE) == 0)
            #expect(probe.seenByNewLookup == [.remove])
        }

        @Test("a raw brk shrink of watched heap pages")
        func brkShrink() throws {
            let harness = try Harness()
            defer { harness.close() }
            guard let heap = try GrownHeap.grow(watchedBy: harness.monitor) else { return }
            let probe = try RangeProbe(harness.space, heap.watched)
            // The raw call (no hook: an event), then back up where glibc's cached break says it
            // is, then down through glibc's sbrk (the hooked one) to where it was.
            _ = ctest_raw_brk(heap.old)
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(harness.monitor.statistics.unmapEvents >= 1)
            _ = ctest_raw_brk(UnsafeMutableRawPointer(bitPattern: heap.top))
            _ = cshims_sbrk(-heap.length)
        }

        @Test("free() of a large malloc block (glibc returns it with munmap)")
        func freeLargeBlock() throws {
            let harness = try Harness()
            defer { harness.close() }
            let size = 64 << 20  // above glibc's largest mmap threshold (32 MiB): always mmapped
            guard let block = malloc(size) else {
                Issue.record("malloc(\(size)) failed")
                return
            }
            let start = (UInt(bitPattern: block) + pageSize - 1) & ~(pageSize - 1)
            let watched = try range(start, 1 << 20)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            free(block)
            #expect(probe.seenByNewLookup == [.unmap])
        }

        @Test("raw syscall(SYS_munmap): no libc hook sees it, userfaultfd does")
        func rawSyscallMunmap() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 32 * pageSize
            let base = try mapAnonymous(length)
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), length) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
        }

        @Test("shmdt: System V shared memory is refused by watch (never cached silently); explicit invalidation covers it")
        func shmdtSysV() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 16 * pageSize
            guard let segment = ctest_shm_attach_private(length) else {
                Issue.record("shmget/shmat failed: errno \(errno)")
                return
            }
            let base = UInt(bitPattern: segment)
            let watched = try range(base, length)
            #expect(throws: MonitorError.unwatchable(range: watched, reason: .sysVSharedMemory)) {
                try harness.monitor.watch(watched)
            }
            #expect(harness.monitor.watchedGranuleCount == 0)
            let probe = try RangeProbe(harness.space, watched)
            let detached = ExplicitInvalidator(space: harness.space).invalidateAround(watched, cause: .unmapped) {
                cshims_shmdt(segment)
            }
            #expect(detached == 0)
            #expect(probe.seenByNewLookup == [.unmap])
        }
    }
}
