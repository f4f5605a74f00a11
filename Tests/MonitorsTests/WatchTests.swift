#if canImport(Glibc)
import Glibc
#endif
import CShims
import NotifierEngine
import MemoryMapping
import Monitors
import Testing

/// Lines of /proc/self/maps: each is a VMA (vm.max_map_count caps their number).
/// VMAs (lines of /proc/self/maps) that start inside [start, end): blind to mappings that other
/// threads, the allocator or a sanitizer's runtime make or remove meanwhile elsewhere.
func mapCount(from start: UInt, to end: UInt) -> Int {
    guard let file = fopen("/proc/self/maps", "r") else { return -1 }
    defer { fclose(file) }
    var count = 0
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0 {
        guard let line, let text = String(validatingCString: line),
              let dash = text.firstIndex(of: "-"), let first = UInt(text[..<dash], radix: 16) else { continue }
        if first >= start && first < end { count += 1 }
    }
    return count
}

/// Counts, per buffer index, the invalidations that reached it (one notifier for 10^5 buffers).
final class BufferHits: MMUNotifier {
    let base: UInt
    let stride: UInt
    let hits: TestLock<[UInt8]>
    init(base: UInt, stride: UInt, count: Int) {
        self.base = base
        self.stride = stride
        hits = TestLock([UInt8](repeating: 0, count: count))
    }
    func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool {
        guard range.event == .unmap, range.range.start >= base else { return true }
        let first = Int((range.range.start - base) / stride)
        let last = Int((range.range.last - base) / stride)
        hits.withLock { hits in
            for index in first...last where index < hits.count { hits[index] = 1 }
        }
        return true
    }
}

extension MonitorsTests {
    @Suite("watch / unwatch, granules and unwatchable memory")
        struct WatchTests {
        @Test("file-backed mapping: unwatchable, with the file named")
        func fileBacked() throws {
            let harness = try Harness()
            defer { harness.close() }
            // A regular file on a disk (or 9p) file system. A file on tmpfs is shmem, which
            // userfaultfd can watch: that is not this case.
            let path = "/etc/passwd"
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            try #require(fd >= 0)
            defer { close(fd) }
            let pointer = mmap(nil, Int(pageSize), PROT_READ, MAP_PRIVATE, fd, 0)
            try #require(pointer != MAP_FAILED)
            let base = UInt(bitPattern: pointer)
            defer { unmap(base, pageSize) }
            let watched = try range(base, pageSize)
            #expect(throws: MonitorError.unwatchable(range: watched, reason: .fileBacked(path: path))) {
                try harness.monitor.watch(watched)
            }
            let facade = MemoryMonitor(space: AddressSpace(), useUserfaultfd: false)
            if case .uncached = facade.watch(watched) {} else { Issue.record("explicit-only mode watched a range") }
        }

        @Test("a range owned by another userfaultfd: EBUSY, reported")
        func ownedByAnotherUserfaultfd() throws {
            let harness = try Harness()
            defer { harness.close() }
            let other = cshims_userfaultfd(O_CLOEXEC | O_NONBLOCK)
            try #require(other >= 0)
            defer { close(other) }
            var api = uffdio_api(api: 0xAA, features: 0, ioctls: 0)
            #expect(cshims_ioctl_pointer(other, CSHIMS_UFFDIO_API, &api) == 0)
            let length = 4 * pageSize
            let base = try mapAnonymous(length)
            defer { unmap(base, length) }
            var request = uffdio_register(range: uffdio_range(start: UInt64(base), len: UInt64(length)),
                                          mode: UInt64(UFFDIO_REGISTER_MODE_WP), ioctls: 0)
            #expect(cshims_ioctl_pointer(other, CSHIMS_UFFDIO_REGISTER, &request) == 0)
            let watched = try range(base, length)
            #expect(throws: MonitorError.unwatchable(range: watched, reason: .ownedByAnotherUserfaultfd)) {
                try harness.monitor.watch(watched)
            }
        }

        static let hugePages: Bool = {
            let pointer = mmap(nil, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0)
            if pointer == MAP_FAILED { return false }
            munmap(pointer, 2 << 20)
            return true
        }()

        @Test("a new mapping taken by another userfaultfd after our watch: the next watch says so (the probe alone cannot tell)")
        func foreignAfterRemap() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 4 * pageSize
            let base = try mapIsolated(length)
            defer { unmap(base, length) }
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            unmap(base, length)
            _ = try mapAgain(length, at: base)
            let other = cshims_userfaultfd(O_CLOEXEC | O_NONBLOCK)
            try #require(other >= 0)
            defer { close(other) }
            var api = uffdio_api(api: 0xAA, features: 0, ioctls: 0)
            #expect(cshims_ioctl_pointer(other, CSHIMS_UFFDIO_API, &api) == 0)
            var request = uffdio_register(range: uffdio_range(start: UInt64(base), len: UInt64(length)),
                                          mode: UInt64(UFFDIO_REGISTER_MODE_WP), ioctls: 0)
            #expect(cshims_ioctl_pointer(other, CSHIMS_UFFDIO_REGISTER, &request) == 0)
            #expect(throws: MonitorError.unwatchable(range: watched, reason: .ownedByAnotherUserfaultfd)) {
                try harness.monitor.watch(watched)
            }
            #expect(harness.monitor.watchCount(in: watched) == 1)
        }

        @Test("hugetlb: watched where the kernel can, otherwise reported as hugetlb",
              .enabled(if: MonitorsTests.WatchTests.hugePages, "no huge pages configured (vm.nr_hugepages = 0)"))
        func hugetlb() throws {
            let harness = try Harness()
            defer { harness.close() }
            let pointer = mmap(nil, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0)
            try #require(pointer != MAP_FAILED)
            let base = UInt(bitPattern: pointer)
            let watched = try range(base, 2 << 20)
            do {
                try harness.monitor.watch(watched)
                let probe = try RangeProbe(harness.space, watched)
                unmap(base, 2 << 20)
                #expect(probe.seenByNewLookup == [.unmap])
                print("hugetlb: watched, its unmap seen")
            } catch {
                print("hugetlb: \(error)")
                unmap(base, 2 << 20)
                #expect((error as? MonitorError) == .unwatchable(range: watched, reason: .hugetlbUnsupported))
            }
        }

        @Test("not mapped, empty and wrapping ranges are typed errors")
        func badInput() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(4 * pageSize)
            unmap(base, 4 * pageSize)
            let gone = try range(base, 4 * pageSize)
            #expect(throws: MonitorError.unwatchable(range: gone, reason: .notMapped)) { try harness.monitor.watch(gone) }
            let empty = try range(base, 0)
            #expect(throws: MonitorError.invalidRange(call: "watch", argument: "\(empty)")) { try harness.monitor.watch(empty) }
            let top = try AddressRange(start: UInt.max - 10, last: UInt.max)
            #expect(throws: MonitorError.invalidRange(call: "watch", argument: "\(top)")) { try harness.monitor.watch(top) }
            #expect(throws: MonitorError.notWatched(range: gone)) { try harness.monitor.unwatch(gone) }
            #expect(harness.monitor.watchedGranuleCount == 0)
        }

        @Test("a buffer over a hole between two mappings is not mapped, on every kernel (6.18's probe skips holes)")
        func holeInTheMiddle() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolated(3 * pageSize)
            defer { unmap(base, 3 * pageSize) }
            unmap(base + pageSize, pageSize)
            let spanning = try range(base, 3 * pageSize)
            #expect(throws: MonitorError.unwatchable(range: spanning, reason: .notMapped)) {
                try harness.monitor.watch(spanning)
            }
            #expect(harness.monitor.watchedGranuleCount == 0, "nothing stays counted after the refusal")
        }

        @Test("buffers share a granule: counted, registered once, unregistered with the last")
        func granuleCounting() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length: UInt = 4 << 20
            let base = try mapAnonymous(length)
            let granule = (base + harness.monitor.granuleSize - 1) & ~(harness.monitor.granuleSize - 1)
            defer { unmap(base, granule - base); unmap(granule + pageSize, base + length - granule - pageSize) }
            let buffers = try (0..<3).map { try range(granule + UInt($0) * 8 * pageSize, 100) }
            for buffer in buffers { try harness.monitor.watch(buffer) }
            #expect(harness.monitor.watchedGranuleCount == 1)
            #expect(harness.monitor.watchCount(in: buffers[0]) == 3)
            try harness.monitor.watch(buffers[0])  // again: counted again
            #expect(harness.monitor.watchCount(in: buffers[0]) == 4)
            for buffer in buffers { try harness.monitor.unwatch(buffer) }
            #expect(harness.monitor.watchedGranuleCount == 1)
            try harness.monitor.unwatch(buffers[0])
            #expect(harness.monitor.watchedGranuleCount == 0)
            #expect(throws: MonitorError.notWatched(range: buffers[0])) { try harness.monitor.unwatch(buffers[0]) }
            // Unregistered: an unmap now sends no event.
            let before = harness.monitor.statistics.unmapEvents
            unmap(granule, pageSize)
            #expect(harness.monitor.statistics.unmapEvents == before)
        }

        @Test("a buffer over several granules: counted in each, its unmap seen, unwatched with it")
        func multiGranuleBuffer() throws {
            let harness = try Harness()
            defer { harness.close() }
            let granule = harness.monitor.granuleSize
            let length = 5 * granule
            let base = try mapAnonymous(length + granule)
            let start = (base + granule - 1) & ~(granule - 1)
            defer { unmap(base, start - base); unmap(start + length, base + granule - start) }
            // Not granule-aligned: it touches 5 granules.
            let watched = try range(start + pageSize, length - 2 * pageSize)
            try harness.monitor.watch(watched)
            #expect(harness.monitor.watchedGranuleCount == 5)
            try harness.monitor.watch(watched)  // all whole now: the one-ioctl path
            #expect(harness.monitor.watchCount(in: watched) == 10)
            let probe = try RangeProbe(harness.space, watched)
            unmap(start + 2 * granule, pageSize)
            #expect(probe.seenByNewLookup == [.unmap])
            try harness.monitor.unwatch(watched)
            try harness.monitor.unwatch(watched)
            #expect(harness.monitor.watchedGranuleCount == 0)
            unmap(start, 2 * granule)
            unmap(start + 2 * granule + pageSize, length - 2 * granule - pageSize)
        }

        @Test("munmap + mmap at the same address gives an unwatched mapping: the next watch registers it")
        func rewatchAfterRemap() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 16 * pageSize
            let base = try mapIsolated(length)
            defer { unmap(base, length) }
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            for round in 1...3 {
                unmap(base, length)
                #expect(probe.seenByNewLookup.count == round)
                _ = try mapAgain(length, at: base)
                // The granule is still counted, but the new mapping is not registered yet.
                try harness.monitor.watch(watched)
            }
            // The last mapping was registered by the last watch: its unmap is seen.
            unmap(base, length)
            #expect(probe.seenByNewLookup.count == 4)
            _ = try mapAgain(length, at: base)
        }

        /// 10^5 on the host; scripts/run-tests runs it with fewer in the VM (`MONITOR_SCALE_BUFFERS`),
        /// where an emulated CPU makes each unmap's event slow, as it cuts the ordering loop.
        @Test("10^5 disjoint small buffers: a few VMAs, and every unmap is seen")
        func hundredThousandBuffers() throws {
            let harness = try Harness()
            defer { harness.close() }
            let count = Int(getenv("MONITOR_SCALE_BUFFERS").map { String(cString: $0) } ?? "") ?? 100_000
            let stride = 2 * pageSize
            let length = UInt(count) * stride
            let base = try mapAnonymous(length)  // untouched: virtual only
            var unmappedUpTo = base
            defer { if unmappedUpTo < base + length { unmap(unmappedUpTo, base + length - unmappedUpTo) } }
            // The mapping and a granule either side (a granule at its edge is registered too).
            let around = (from: base &- harness.monitor.granuleSize, to: base + length + harness.monitor.granuleSize)
            let mapsBefore = mapCount(from: around.from, to: around.to)
            for index in 0..<count {
                try harness.monitor.watch(range(base + UInt(index) * stride, pageSize))
            }
            let mapsAfter = mapCount(from: around.from, to: around.to)
            #expect(mapsAfter - mapsBefore <= 4, "watching split the mapping: \(mapsBefore) -> \(mapsAfter) VMAs")
            #expect(harness.monitor.watchedGranuleCount <= Int(length / harness.monitor.granuleSize) + 2)
            let hits = BufferHits(base: base, stride: stride, count: count)
            try harness.space.register(hits)
            let whole = try RangeProbe(harness.space, range(base, length))
            // Unmap buffer by buffer, front to back (no holes: vm.max_map_count is never hit).
            var missed: [Int] = []
            for index in 0..<count {
                unmap(base + UInt(index) * stride, stride)
                unmappedUpTo = base + UInt(index + 1) * stride
                _ = try? whole.subscription.readBegin()
                if hits.hits.withLock({ $0[index] }) == 0 { missed.append(index) }
            }
            #expect(missed.isEmpty, "unmaps not seen: \(missed.prefix(10)) (\(missed.count) in all)")
            for index in 0..<count { try harness.monitor.unwatch(range(base + UInt(index) * stride, pageSize)) }
            #expect(harness.monitor.watchedGranuleCount == 0)
        }
    }
}
