#if canImport(Glibc)
import Glibc
#endif
import CShims
import NotifierEngine
import Monitors
import Testing

extension MonitorsTests {
    /// Granules kept registered after their last buffer went (`Configuration.idleGranules`): the
    /// next buffer there asks the kernel nothing, at most the limit stay, and what stays is still
    /// watched for real.
    @Suite("idle granules: kept registered after the last buffer, up to a limit")
    struct IdleGranuleTests {
        let granule: UInt = 2 << 20

        @Test("the last unwatch leaves the granule registered and validated: the next buffer there needs no ioctl")
        func idleGranuleServesTheNextWatch() throws {
            let harness = try Harness(configuration: .init(idleGranules: 2))
            defer { harness.close() }
            let base = try mapIsolated(3 * granule)  // 1 GiB-aligned: the first granule is whole
            defer { unmap(base, 3 * granule) }
            let first = try range(base, pageSize)
            try harness.monitor.watch(first)
            #expect(harness.monitor.validatedGranuleCount == 1)
            try harness.monitor.unwatch(first)
            #expect(harness.monitor.idleGranuleCount == 1)
            #expect(harness.monitor.watchedGranuleCount == 1, "still registered")
            #expect(harness.monitor.validatedGranuleCount == 1)

            let before = harness.monitor.statistics.watchesWithoutIoctl
            let second = try range(base + 8 * pageSize, pageSize)
            try harness.monitor.watch(second)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before + 1)
            #expect(harness.monitor.idleGranuleCount == 0, "revived")

            // Still watched for real: a raw unmap there is an event the engine sees.
            let probe = try RangeProbe(harness.space, second)
            _ = try probe.subscription.readBegin()
            #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base + 8 * pageSize), pageSize) == 0)
            #expect(probe.seenByNewLookup == [.unmap])
            try probe.subscription.remove()
            try harness.monitor.unwatch(second)
        }

        @Test("at most the limit stay idle: the oldest is unregistered first; releaseIdleGranules gives back the rest")
        func limitAndRelease() throws {
            let harness = try Harness(configuration: .init(idleGranules: 2))
            defer { harness.close() }
            let base = try mapIsolated(4 * granule)
            defer { unmap(base, 4 * granule) }
            let buffers = try (0..<3).map { try range(base + UInt($0) * granule, pageSize) }
            for buffer in buffers { try harness.monitor.watch(buffer) }
            #expect(harness.monitor.watchedGranuleCount == 3)
            for buffer in buffers { try harness.monitor.unwatch(buffer) }
            #expect(harness.monitor.idleGranuleCount == 2)
            #expect(harness.monitor.watchedGranuleCount == 2, "the oldest idle granule was unregistered")
            #expect(harness.monitor.watchCount(in: buffers[0]) == 0)
            harness.monitor.releaseIdleGranules()
            #expect(harness.monitor.idleGranuleCount == 0)
            #expect(harness.monitor.watchedGranuleCount == 0)
            #expect(harness.monitor.validatedGranuleCount == 0)
        }

        @Test("a watch that fails gives back what it registered at once, idle granules or not")
        func failedWatchIsNotKept() throws {
            let harness = try Harness(configuration: .init(idleGranules: 2))
            defer { harness.close() }
            let base = try mapIsolated(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            let hole = base + 2 * pageSize
            unmap(hole, pageSize)
            #expect(throws: MonitorError.self) { try harness.monitor.watch(try range(hole, pageSize)) }
            #expect(harness.monitor.idleGranuleCount == 0)
            #expect(harness.monitor.watchedGranuleCount == 0)
        }

        @Test("idleGranules out of range is a typed error")
        func outOfRange() {
            #expect(throws: MonitorError.self) { _ = try Harness(configuration: .init(idleGranules: -1)) }
            #expect(throws: MonitorError.self) { _ = try Harness(configuration: .init(idleGranules: 1 << 20)) }
        }
    }
}
