#if canImport(Glibc)
import Glibc
#endif
import CShims
import NotifierEngine
import Monitors
import Testing

extension MonitorsTests {
    /// Memory whose pages can change with no userfaultfd event (every shared mapping, every
    /// mapping of a file) is refused by `watch`, so a cache never holds it on trust; private
    /// anonymous memory is watched; an explicit opt-in watches shared memory too.
    @Suite("shared memory is never watched on trust")
    struct SharedMemoryTests {
        enum Kind: String, CaseIterable, Sendable {
            case memfdShared, memfdPrivate, sharedAnonymous, sharedDevZero, devShmFile
        }

        /// Maps 64 KiB of `kind`; returns the address and a closure that unmaps and closes it.
        static func map(_ kind: Kind, length: Int = 65536) throws -> (UInt, () -> Void) {
            func mapFile(_ fd: Int32, _ flags: Int32) throws -> UInt {
                let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, flags, fd, 0)
                guard let pointer, pointer != MAP_FAILED else { throw MonitorError.invalidRange(call: "mmap", argument: "\(kind)") }
                return UInt(bitPattern: pointer)
            }
            switch kind {
            case .memfdShared, .memfdPrivate:
                let fd = cshims_memfd("rdmamemory-test", UInt(length))
                try #require(fd >= 0, "memfd_create: \(errno)")
                let address = try mapFile(fd, kind == .memfdShared ? MAP_SHARED : MAP_PRIVATE)
                return (address, { unmap(address, UInt(length)); close(fd) })
            case .sharedAnonymous:
                let address = try mapAnonymous(UInt(length), shared: true)
                return (address, { unmap(address, UInt(length)) })
            case .sharedDevZero:
                let fd = open("/dev/zero", O_RDWR)
                try #require(fd >= 0)
                let address = try mapFile(fd, MAP_SHARED)
                return (address, { unmap(address, UInt(length)); close(fd) })
            case .devShmFile:
                let path = "/dev/shm/rdmamemory-test-\(getpid())"
                let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
                try #require(fd >= 0, "open \(path): \(errno)")
                unlink(path)
                try #require(ftruncate(fd, off_t(length)) == 0)
                let address = try mapFile(fd, MAP_SHARED)
                return (address, { unmap(address, UInt(length)); close(fd) })
            }
        }

        @Test("refused with a reason that names the mapping", arguments: Kind.allCases)
        func refused(kind: Kind) throws {
            let harness = try Harness()
            defer { harness.close() }
            let (address, release) = try Self.map(kind)
            defer { release() }
            let watched = try range(address, 65536)
            let outcome = Result { () throws(MonitorError) in try harness.monitor.watch(watched) }
            switch outcome {
            case .success:
                try harness.monitor.unwatch(watched)
                Issue.record("\(kind) was watched")
            case .failure(.unwatchable(_, .sharedMemory(let mapping))):
                let expected = kind == .memfdShared || kind == .memfdPrivate ? "memfd" : kind == .devShmFile ? "/dev/shm" : "/dev/zero"
                #expect(mapping.contains(expected), "\(mapping)")
                #expect(mapping.contains(kind == .memfdPrivate ? "MAP_PRIVATE" : "MAP_SHARED"), "\(mapping)")
                #expect(UnwatchableReason.sharedMemory(mapping: mapping).description.contains("truncation"), "the reason says why")
            case .failure(let error):
                Issue.record("\(kind): \(error)")
            }
            #expect(harness.monitor.watchCount(in: watched) == 0, "a refused watch leaves nothing counted")
        }

        @Test("private anonymous memory and private /dev/zero are watched")
        func privateMemoryIsWatched() throws {
            let harness = try Harness()
            defer { harness.close() }
            let anonymous = try mapAnonymous(65536)
            defer { unmap(anonymous, 65536) }
            try harness.monitor.watch(try range(anonymous, 65536))
            let fd = open("/dev/zero", O_RDWR)
            try #require(fd >= 0)
            defer { close(fd) }
            let pointer = mmap(nil, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
            try #require(pointer != nil && pointer != MAP_FAILED)
            let zero = UInt(bitPattern: pointer)
            defer { unmap(zero, 65536) }
            try harness.monitor.watch(try range(zero, 65536))
            try harness.monitor.unwatch(try range(zero, 65536))
            try harness.monitor.unwatch(try range(anonymous, 65536))
        }

        @Test("the opt-in watches shared memory, and its unmap still reaches the engine")
        func optIn() throws {
            let harness = try Harness()
            defer { harness.close() }
            let (address, release) = try Self.map(.memfdShared)
            var released = false
            defer { if !released { release() } }
            let watched = try range(address, 65536)
            try harness.monitor.watch(watched, allowingSharedMemory: true)
            let probe = try RangeProbe(harness.space, watched)
            release()
            released = true
            #expect(probe.seenByNewLookup.contains(.unmap))
        }

        @Test("a granule that holds shared memory is never validated (its watches keep checking)")
        func mixedGranuleIsNotValidated() throws {
            let harness = try Harness()
            defer { harness.close() }
            let granule: UInt = 2 << 20
            let base = try mapIsolated(2 * granule)  // 1 GiB-aligned: the first granule is whole
            defer { unmap(base, 2 * granule) }
            let fd = cshims_memfd("rdmamemory-mixed", 65536)
            try #require(fd >= 0)
            defer { close(fd) }
            let sharedAt = base + granule / 2
            let pointer = mmap(UnsafeMutableRawPointer(bitPattern: sharedAt), 65536, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_FIXED, fd, 0)
            try #require(pointer != MAP_FAILED)
            let anonymous = try range(base, pageSize)
            try harness.monitor.watch(anonymous)
            #expect(harness.monitor.validatedGranuleCount == 0, "validated although shared memory lies inside")
            let before = harness.monitor.statistics.watchesWithoutIoctl
            try harness.monitor.watch(try range(base + 8 * pageSize, pageSize))
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before)
            #expect(throws: MonitorError.self) { try harness.monitor.watch(try range(sharedAt, 65536)) }
        }
    }
}
