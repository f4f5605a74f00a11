#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import Monitors
import Testing

extension MonitorsTests {
    /// A private anonymous mapping the hooked `mmap` made is remembered (anywhere, not only in
    /// registered granules): a watch there registers at most once and asks nothing more (no
    /// probe, no query), and none at all when its granule was registered whole after the mapping
    /// was made. What the hooks or events see change there is forgotten, so a later mapping of
    /// another kind at the same address is asked about for real.
    @Suite("mappings the hooked mmap made: watched with one register, forgotten on change")
    struct KnownMappingTests {
        let granule: UInt = 2 << 20

        /// An anchor buffer watched in an isolated granule (so the granule has a record), and room
        /// behind it for the mappings the test makes with the hooked mmap.
        private func anchored(_ harness: Harness) throws -> (base: UInt, anchor: AddressRange) {
            let base = try mapIsolated(4 * pageSize)
            let anchor = try range(base, pageSize)
            try harness.monitor.watch(anchor)
            return (base, anchor)
        }

        /// Proof that `range` is registered for real: unmapped by a raw system call (no hook
        /// runs), it reaches the engine as an event. The range's memory is gone afterwards.
        private func expectRawUnmapIsSeen(_ harness: Harness, _ range: AddressRange) throws {
            let probe = try RangeProbe(harness.space, range)
            _ = try probe.subscription.readBegin()
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: range.start), range.last - range.start + 1) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
            try probe.subscription.remove()
        }

        @Test("a buffer in a mapping the hooked mmap made is watched with one register, and its unmap is seen")
        func knownMappingIsWatchedAndSeen() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let (base, anchor) = try anchored(harness)
            defer { unmap(base, 4 * pageSize) }
            let address = try mapAnonymous(8 * pageSize, at: base + 8 * pageSize, replace: false)
            let buffer = try range(address, 8 * pageSize)
            #expect(harness.monitor.knowsMapping(of: buffer))
            let before = harness.monitor.statistics
            try harness.monitor.watch(buffer)
            #expect(harness.monitor.statistics.watchesOfKnownMappings == before.watchesOfKnownMappings + 1)
            #expect(harness.monitor.watchCount(in: buffer) == 2)

            try expectRawUnmapIsSeen(harness, buffer)
            #expect(!harness.monitor.knowsMapping(of: buffer), "the unmap event forgot the mapping")
            try harness.monitor.unwatch(buffer)
            try harness.monitor.unwatch(anchor)
        }

        /// How the known mapping goes before shared memory is mapped in its place.
        enum Removal: String, CaseIterable, CustomTestStringConvertible {
            /// Through the hooks: the munmap forgets the mapping.
            case hookedMunmap
            /// A raw system call on memory not registered yet: seen by nothing, the knowledge
            /// goes stale, and the hooked mmap that maps over the hole must forget it.
            case rawMunmap
            var testDescription: String { rawValue }
        }

        @Test("shared memory mapped where a known mapping was: asked about, refused", arguments: Removal.allCases)
        func replacedMappingIsAskedAbout(_ removal: Removal) throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let (base, anchor) = try anchored(harness)
            defer { unmap(base, 4 * pageSize) }
            let address = try mapAnonymous(4 * pageSize, at: base + 8 * pageSize, replace: false)
            let mapping = try range(address, 4 * pageSize)
            #expect(harness.monitor.knowsMapping(of: mapping))
            switch removal {
            case .hookedMunmap:
                unmap(address, 4 * pageSize)
                #expect(!harness.monitor.knowsMapping(of: mapping))
            case .rawMunmap:
                #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: address), 4 * pageSize) == 0)
                #expect(harness.monitor.knowsMapping(of: mapping), "nothing saw the raw munmap")
            }
            _ = try mapAnonymous(4 * pageSize, at: address, shared: true, replace: false)
            defer { unmap(address, 4 * pageSize) }
            #expect(!harness.monitor.knowsMapping(of: mapping), "the hooked mmap forgot what it replaced knowledge of")
            #expect(throws: MonitorError.self) { try harness.monitor.watch(try range(address, 4 * pageSize)) }
            try harness.monitor.unwatch(anchor)
        }

        /// On a kernel without PROCMAP_QUERY (6.1) the classifier answers from its last scan of
        /// /proc/self/maps while no hooked call changed mappings; glibc's malloc maps with its own
        /// mmap, which no hook sees, so a mapping made that way after the scan must not read as a
        /// hole (it did, for one build: every malloc'ed 256 KiB buffer was registered uncached).
        @Test("a mapping made by a raw mmap (as malloc makes its large blocks) after the classifier's last scan is watched")
        func mappingUnseenByTheHooksIsWatched() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolated(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            try harness.monitor.watch(try range(base, pageSize))  // a scan of what is mapped
            let address = base + 16 * pageSize
            let raw = ctest_raw_mmap_anonymous(UnsafeMutableRawPointer(bitPattern: address), 4 * pageSize)
            try #require(raw == UnsafeMutableRawPointer(bitPattern: address))
            defer { _ = cshims_raw_munmap(raw, 4 * pageSize) }
            let buffer = try range(address, 4 * pageSize)
            try harness.monitor.watch(buffer)
            #expect(harness.monitor.watchCount(in: buffer) == 2)
            try harness.monitor.unwatch(buffer)
            try harness.monitor.unwatch(try range(base, pageSize))
        }

        /// The device miss figure's shape: buffers each in a mapping of its own, all mapped
        /// before the first is registered. The first watch in the granule registers it whole;
        /// the others were mapped before that register, so they are watched with no ioctl, and
        /// are watched for real: a raw munmap of one is an event.
        @Test("buffers mapped before their granule's whole register are watched with no ioctl, and for real")
        func mappingsCoveredByAWholeRegisterNeedNoIoctl() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let base = try mapIsolated(4 * pageSize)  // a granule of its own
            defer { unmap(base, 4 * pageSize) }
            let first = try mapAnonymous(4 * pageSize, at: base + 16 * pageSize, replace: false)
            let second = try mapAnonymous(4 * pageSize, at: base + 32 * pageSize, replace: false)
            defer { unmap(first, 4 * pageSize) }
            let firstBuffer = try range(first, 4 * pageSize)
            let secondBuffer = try range(second, 4 * pageSize)
            #expect(harness.monitor.knowsMapping(of: firstBuffer) && harness.monitor.knowsMapping(of: secondBuffer))
            try harness.monitor.watch(firstBuffer)  // the granule's first: registered whole
            let before = harness.monitor.statistics
            try harness.monitor.watch(secondBuffer)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before.watchesWithoutIoctl + 1)
            #expect(harness.monitor.statistics.watchesOfKnownMappings == before.watchesOfKnownMappings + 1)
            try expectRawUnmapIsSeen(harness, secondBuffer)
            try harness.monitor.unwatch(secondBuffer)
            try harness.monitor.unwatch(firstBuffer)
        }

        /// A mapping made after the granule's whole register is not registered by it: its watch
        /// registers (the granule again, whole), and it too is watched for real.
        @Test("a buffer mapped after its granule's whole register is registered, once")
        func mappingNewerThanTheRegisterIsRegistered() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let (base, anchor) = try anchored(harness)
            defer { unmap(base, 4 * pageSize) }
            let address = try mapAnonymous(4 * pageSize, at: base + 16 * pageSize, replace: false)
            let buffer = try range(address, 4 * pageSize)
            let before = harness.monitor.statistics
            try harness.monitor.watch(buffer)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before.watchesWithoutIoctl)
            #expect(harness.monitor.statistics.watchesOfKnownMappings == before.watchesOfKnownMappings + 1)
            try expectRawUnmapIsSeen(harness, buffer)
            try harness.monitor.unwatch(buffer)
            try harness.monitor.unwatch(anchor)
        }

        /// A granule that refuses a whole register (a file mapping in it) is registered in
        /// pieces: the second watch in a known mapping there registers all of the mapping and
        /// marks its record, so the third asks nothing, and is watched for real.
        @Test("in a granule registered in pieces, a known mapping registered once needs no ioctl after")
        func markedMappingNeedsNoIoctl() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let base = try mapIsolatedUnseen(pageSize)  // the granule's first page, raw
            defer { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), pageSize) }
            let fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC)
            try #require(fd >= 0)
            defer { close(fd) }
            let file = mmap(UnsafeMutableRawPointer(bitPattern: base + pageSize), Int(pageSize), PROT_READ,
                            MAP_PRIVATE | 0x100000 /* MAP_FIXED_NOREPLACE */, fd, 0)
            try #require(file == UnsafeMutableRawPointer(bitPattern: base + pageSize))
            defer { unmap(base + pageSize, pageSize) }
            let address = try mapAnonymous(8 * pageSize, at: base + 16 * pageSize, replace: false)
            defer { unmap(address, 8 * pageSize) }
            let buffers = try (0..<3).map { try range(address + UInt($0) * 2 * pageSize, pageSize) }
            try harness.monitor.watch(buffers[0])  // the granule's first: refused whole, a piece
            var before = harness.monitor.statistics
            try harness.monitor.watch(buffers[1])  // the whole mapping, once
            #expect(harness.monitor.statistics.watchesOfKnownMappings == before.watchesOfKnownMappings + 1)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before.watchesWithoutIoctl)
            before = harness.monitor.statistics
            try harness.monitor.watch(buffers[2])
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before.watchesWithoutIoctl + 1)
            try expectRawUnmapIsSeen(harness, buffers[2])
            for buffer in buffers { try harness.monitor.unwatch(buffer) }
        }
    }
}
