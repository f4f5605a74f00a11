#if canImport(Glibc)
import Glibc
#endif
import CShims
import MemoryMapping
import MemoryRegistration
import Verbs

/// One row of `check`: register a buffer through the cache, release it, change the memory under
/// it, register the address again through the cache, RDMA-WRITE the pattern through the second
/// registration's rkey and count the bytes that reached the application's current memory.
///
/// Each change owns its memory for the length of its row and gives it back before the next one,
/// so one row's leftovers cannot make another pass.
struct MemoryChangeCheck {
    let cache: RegistrationCache
    let writer: LoopbackWriter
    static let length = 65536

    /// The memory after a change, and anything a reader should know about where it is.
    struct Changed {
        var target: UnsafeMutableRawBufferPointer
        var note: String?
    }

    /// How often a change that something else in the process got in the way of is tried.
    static let attempts = 3

    func run(_ change: MemoryChange) -> ChangeRow {
        var (row, retryable) = attempt(change)
        var tries = 1
        while retryable, tries < Self.attempts {
            let reason = row.detail ?? "skipped"
            tries += 1
            (row, retryable) = attempt(change)
            row.detail = (row.detail.map { $0 + "; " } ?? "") + "try \(tries) of \(Self.attempts) (before: \(reason))"
        }
        return row
    }

    /// One try; `retryable` when it was skipped for a reason another try may not meet.
    private func attempt(_ change: MemoryChange) -> (row: ChangeRow, retryable: Bool) {
        var row = ChangeRow(change: change.rawValue, description: change.description, bytesWritten: Self.length,
                            bytesLanded: 0, result: .error)
        do {
            switch change {
            case .munmapMapFixed: try munmapMapFixed(&row)
            case .rawMunmap: try rawMunmap(&row)
            case .mremap: try mremap(&row)
            case .dontNeed: try dontNeed(&row)
            case .freeMalloc: try freeMalloc(&row)
            case .brk: try brk(&row)
            case .memfdTruncate: try memfdTruncate(&row)
            case .shmatRemap: try shmatRemap(&row)
            case .guardPages: try guardPages(&row)
            }
        } catch let skipped as ChangeSkipped {
            row.result = .skipped
            row.detail = skipped.reason
            return (row, skipped.retryable)
        } catch {
            row.result = .error
            row.detail = "\(error)"
        }
        return (row, false)
    }

    /// The measurement every row shares; `change` changes the memory and says where it is now.
    private func measure(_ row: inout ChangeRow, before buffer: UnsafeMutableRawBufferPointer,
                         change: () throws -> Changed) throws {
        let before = try cache.register(buffer, access: .rdma)
        row.cachedBefore = before.isCached
        let beforeKeys = (before.lkey, before.rkey)
        before.release()

        let changed = try change()
        row.detail = changed.note
        let after = try cache.register(changed.target, access: .rdma)
        row.cachedAfter = after.isCached
        row.uncachedReason = after.uncachedReason
        row.newRegion = (after.lkey, after.rkey) != beforeKeys
        let outcome = try writer.write(to: after.address, rkey: after.rkey, observing: changed.target)
        after.release()
        row.bytesWritten = outcome.bytesWritten
        row.bytesLanded = outcome.bytesLanded
        row.result = outcome.bytesLanded == outcome.bytesWritten ? .fresh : .stale
    }

    private func munmapMapFixed(_ row: inout ChangeRow) throws {
        let mapping = try AnonymousMapping(length: Self.length)
        try measure(&row, before: mapping.bytes) {
            try mapping.replaceWithFreshMapping()
            return Changed(target: mapping.bytes)
        }
    }

    /// Bypasses the C library's munmap (and so the hook): only the userfaultfd event tells.
    private func rawMunmap(_ row: inout ChangeRow) throws {
        let mapping = try AnonymousMapping(length: Self.length)
        try measure(&row, before: mapping.bytes) {
            guard cshims_raw_munmap(mapping.bytes.baseAddress, UInt(Self.length)) == 0 else {
                throw MappingError.fromErrno("syscall(SYS_munmap)", argument: Self.describe(mapping.address, Self.length))
            }
            try mapping.mapAgain()
            return Changed(target: mapping.bytes)
        }
    }

    /// Grows the mapping fourfold; the kernel may move it, and then the old address is gone and
    /// the mapping's new address is the one registered again.
    private func mremap(_ row: inout ChangeRow) throws {
        let mapping = try AnonymousMapping(length: Self.length)
        let address = mapping.address
        try measure(&row, before: mapping.bytes) {
            try mapping.remap(to: 4 * Self.length)
            let target = UnsafeMutableRawBufferPointer(start: mapping.bytes.baseAddress, count: Self.length)
            return Changed(target: target, note: mapping.address == address ? "grown in place"
                : "moved from \(Self.hex(address)) to \(Self.hex(mapping.address)): checked at the new address")
        }
    }

    private func dontNeed(_ row: inout ChangeRow) throws {
        let mapping = try AnonymousMapping(length: Self.length)
        try measure(&row, before: mapping.bytes) {
            try mapping.advise(MADV_DONTNEED)
            return Changed(target: mapping.bytes)
        }
    }

    /// Guard pages (Linux 6.13+) zap the pages with no userfaultfd event: only the madvise hook
    /// sees them. Removing the guards leaves new zero pages under the address.
    private func guardPages(_ row: inout ChangeRow) throws {
        let mapping = try AnonymousMapping(length: Self.length)
        try measure(&row, before: mapping.bytes) {
            let install: Int32 = 102, remove: Int32 = 103  // MADV_GUARD_INSTALL / _REMOVE
            guard madvise(mapping.bytes.baseAddress, Self.length, install) == 0 else {
                if errno == EINVAL { throw ChangeSkipped(reason: "not on this kernel (madvise(MADV_GUARD_INSTALL): EINVAL; Linux 6.13 and later)") }
                throw MappingError.fromErrno("madvise(MADV_GUARD_INSTALL)", argument: Self.describe(mapping.address, Self.length))
            }
            guard madvise(mapping.bytes.baseAddress, Self.length, remove) == 0 else {
                throw MappingError.fromErrno("madvise(MADV_GUARD_REMOVE)", argument: Self.describe(mapping.address, Self.length))
            }
            return Changed(target: mapping.bytes)
        }
    }

    /// Above glibc's mmap threshold, so malloc maps the block and free unmaps it; malloc usually
    /// gives the same address back (the case that matters), and the row says when it did not.
    private func freeMalloc(_ row: inout ChangeRow) throws {
        let size = 64 << 20
        guard let first = malloc(size) else { throw MappingError.fromErrno("malloc", argument: "\(size)") }
        var second: UnsafeMutableRawPointer?
        var firstFreed = false
        defer {
            if !firstFreed { free(first) }
            free(second)
        }
        try measure(&row, before: UnsafeMutableRawBufferPointer(start: first, count: Self.length)) {
            free(first)
            firstFreed = true
            guard let block = malloc(size) else { throw MappingError.fromErrno("malloc", argument: "\(size)") }
            second = block
            let note = block == first ? "malloc gave the same address back"
                : "malloc gave another address (\(Self.hex(UInt(bitPattern: block))) after "
                    + "\(Self.hex(UInt(bitPattern: first)))): checked there"
            return Changed(target: UnsafeMutableRawBufferPointer(start: block, count: Self.length), note: note)
        }
    }

    /// Grows the heap with sbrk, registers its new top pages, shrinks the break back and grows
    /// it again: the same addresses, new zeroed pages. Skipped when something else moved the
    /// break meanwhile (shrinking it then would take memory malloc handed out).
    private func brk(_ row: inout ChangeRow) throws {
        let page = UInt(AnonymousMapping.pageSize)
        let grow = 2 * Self.length + Int(page)
        let old = cshims_sbrk(grow)
        guard let old, UInt(bitPattern: old) != UInt.max else { throw MappingError.fromErrno("sbrk", argument: "+\(grow)") }
        let top = UInt(bitPattern: old) + UInt(grow)
        var grown = true
        defer {
            if grown, UInt(bitPattern: cshims_sbrk(0)) == top { _ = cshims_sbrk(-grow) }
        }
        let start = (UInt(bitPattern: old) + page - 1) & ~(page - 1)
        let buffer = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: start), count: Self.length)
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)  // touch the pages: they exist
        try measure(&row, before: buffer) {
            guard UInt(bitPattern: cshims_sbrk(0)) == top else {
                grown = false
                throw ChangeSkipped(reason: "the program break moved under the check (malloc grew the heap)",
                                    retryable: true)
            }
            guard UInt(bitPattern: cshims_sbrk(-grow)) != UInt.max else { throw MappingError.fromErrno("sbrk", argument: "-\(grow)") }
            grown = false
            let regrown = cshims_sbrk(grow)
            guard let regrown, UInt(bitPattern: regrown) != UInt.max else { throw MappingError.fromErrno("sbrk", argument: "+\(grow)") }
            grown = true
            guard regrown == old else { throw ChangeSkipped(reason: "the heap grew back elsewhere") }
            return Changed(target: buffer)
        }
    }

    /// Shared memory: registered uncached by rule (truncation replaces its pages with no event),
    /// and the write must land all the same.
    private func memfdTruncate(_ row: inout ChangeRow) throws {
        let fd = cshims_memfd("rdmamemory-check", UInt(Self.length))
        guard fd >= 0 else { throw MappingError.fromErrno("memfd_create", argument: "\"rdmamemory-check\", \(Self.length)") }
        defer { close(fd) }
        let pointer = mmap(nil, Self.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw MappingError.fromErrno("mmap", argument: "MAP_SHARED, memfd \(fd), length: \(Self.length)")
        }
        defer { munmap(pointer, Self.length) }
        let buffer = UnsafeMutableRawBufferPointer(start: pointer, count: Self.length)
        try measure(&row, before: buffer) {
            guard ftruncate(fd, 0) == 0 else { throw MappingError.fromErrno("ftruncate", argument: "memfd \(fd), 0") }
            guard ftruncate(fd, off_t(Self.length)) == 0 else {
                throw MappingError.fromErrno("ftruncate", argument: "memfd \(fd), \(Self.length)")
            }
            return Changed(target: buffer)
        }
    }

    /// A System V segment attached over cached anonymous memory (no unmap event: the shmat hook
    /// tells the monitor); System V memory is then registered uncached.
    private func shmatRemap(_ row: inout ChangeRow) throws {
        let mapping = try AnonymousMapping(length: Self.length)
        let id = cshims_shm_create(UInt(Self.length))
        guard id >= 0 else { throw MappingError.fromErrno("shmget", argument: "IPC_PRIVATE, \(Self.length)") }
        defer { _ = cshims_shm_remove(id) }
        var attached: UnsafeMutableRawPointer?
        defer { if let attached { _ = cshims_shmdt(attached) } }
        try withExtendedLifetime(mapping) {
            try measure(&row, before: mapping.bytes) {
                let address = cshims_shmat(id, mapping.bytes.baseAddress, CSHIMS_SHM_REMAP)
                guard let address, UInt(bitPattern: address) != UInt.max else {
                    throw MappingError.fromErrno("shmat", argument: "\(id), \(Self.hex(mapping.address)), SHM_REMAP")
                }
                attached = address
                guard UInt(bitPattern: address) == mapping.address else {
                    throw MappingError(call: "shmat", argument: "attached at \(Self.hex(UInt(bitPattern: address))), "
                        + "not \(Self.hex(mapping.address))", errno: .invalidArgument)
                }
                return Changed(target: UnsafeMutableRawBufferPointer(start: address, count: Self.length))
            }
        }
    }

    static func hex(_ address: UInt) -> String { "0x" + String(address, radix: 16) }
    static func describe(_ address: UInt, _ length: Int) -> String { "address: \(hex(address)), length: \(length)" }
}
