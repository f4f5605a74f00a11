#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import Monitors
import Testing

extension MonitorsTests {
    /// A mapping the hooked `mmap` made in a registered granule is remembered as private
    /// anonymous memory: its first watch registers it and asks nothing more (no probe, no
    /// query). What the hooks or events see change there is forgotten, so a later mapping of
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

        @Test("a buffer in a mapping the hooked mmap made is watched with one register, and its unmap is seen")
        func knownMappingIsWatchedAndSeen() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let (base, anchor) = try anchored(harness)
            defer { unmap(base, 4 * pageSize) }
            let address = try mapAnonymous(8 * pageSize, at: base + 8 * pageSize, replace: false)
            #expect(harness.monitor.knownMappingCount == 1)
            let buffer = try range(address, 8 * pageSize)
            let before = harness.monitor.statistics
            try harness.monitor.watch(buffer)
            #expect(harness.monitor.statistics.watchesOfKnownMappings == before.watchesOfKnownMappings + 1)
            #expect(harness.monitor.watchCount(in: buffer) == 2)

            // Registered for real: an unmap by a raw system call (no hook) is an event.
            let probe = try RangeProbe(harness.space, buffer)
            _ = try probe.subscription.readBegin()
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: address), 8 * pageSize) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(harness.monitor.knownMappingCount == 0, "the unmap event forgot the mapping")
            try probe.subscription.remove()
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
            #expect(harness.monitor.knownMappingCount == 1)
            switch removal {
            case .hookedMunmap:
                unmap(address, 4 * pageSize)
                #expect(harness.monitor.knownMappingCount == 0)
            case .rawMunmap:
                #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: address), 4 * pageSize) == 0)
                #expect(harness.monitor.knownMappingCount == 1)
            }
            _ = try mapAnonymous(4 * pageSize, at: address, shared: true, replace: false)
            defer { unmap(address, 4 * pageSize) }
            #expect(harness.monitor.knownMappingCount == 0, "the hooked mmap forgot what it replaced knowledge of")
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

        @Test("mappings made outside registered granules are not remembered (no lock, no work)")
        func unwatchedGranulesAreIgnored() throws {
            let harness = try Harness()
            defer { harness.close() }
            try #require(harness.monitor.hooks == .active)
            let address = try mapIsolated(4 * pageSize)
            defer { unmap(address, 4 * pageSize) }
            #expect(harness.monitor.knownMappingCount == 0)
            #expect(harness.monitor.statistics.mappingsSeenMade == 0)
        }
    }
}
