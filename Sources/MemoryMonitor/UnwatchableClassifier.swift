#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import SystemPackage

/// Turns a refused UFFDIO_REGISTER into a reason a person can act on, by looking at what is
/// mapped there (`/proc/self/maps`). Runs only on the failure path.
enum UnwatchableClassifier {
    /// What is mapped over [start, end): every page mapped (and what kind of memory), or a hole.
    enum Inspection: Equatable {
        case hole
        /// Private anonymous memory only: its pages change only through this process's own
        /// calls, which userfaultfd and the hooks see.
        case privateAnonymous
        /// Memory whose pages can change with no event (or that could not be inspected): why.
        case shared(UnwatchableReason)
    }

    /// Looks at every mapping over [start, end). Asked once per watched mapping or granule, never
    /// on a hit. Where the kernel answers PROCMAP_QUERY the same walk also finds holes (one ioctl
    /// per mapping); elsewhere `mincore` finds them and /proc/self/maps says what is mapped.
    ///
    /// Anything but private anonymous memory can change its pages with no event: a `MAP_SHARED`
    /// mapping of any kind (the kernel's VM_MAYSHARE: memfd, tmpfs, `/dev/shm`, `MAP_SHARED |
    /// MAP_ANONYMOUS` and shared `/dev/zero`, which are all shmem) and a private mapping of a file
    /// (truncation unmaps even its copied-on-write pages). Private `/dev/zero` and private
    /// anonymous hugetlb memory are anonymous: no descriptor reaches their pages.
    static func inspect(start: UInt, end: UInt, pageSize: UInt) -> Inspection {
        let fast = cmemhooks_vma_query_is_fast() != 0
        if !fast && !isFullyMapped(start: start, end: end, pageSize: pageSize) { return .hole }
        var vma = cmemhooks_vma()
        var address = start
        while address < end {
            let failure = cmemhooks_vma_at_or_after(address, end, &vma)
            if failure == ENOENT { return .hole }
            if failure != 0 { return .shared(.refused(call: "read(/proc/self/maps)", errno: Errno(rawValue: failure))) }
            if vma.start > address { return .hole }
            let name = withUnsafeBytes(of: &vma.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let shared = vma.flags & UInt32(CMEMHOOKS_VMA_SHARED.rawValue) != 0
            let anonymous = vma.inode == 0 || name == "/dev/zero" || name.hasPrefix("/anon_hugepage")
            if shared || !anonymous {
                let span = "0x\(String(vma.start, radix: 16))-0x\(String(vma.end, radix: 16))"
                return .shared(.sharedMemory(mapping: "\(shared ? "MAP_SHARED" : "MAP_PRIVATE") \(name.isEmpty ? "inode \(vma.inode)" : name) at \(span)"))
            }
            address = vma.end
        }
        return .privateAnonymous
    }

    /// False when any page of [start, end) is unmapped (mincore answers ENOMEM). 512 pages a
    /// call: a vector that small stays on the stack.
    static func isFullyMapped(start: UInt, end: UInt, pageSize: UInt) -> Bool {
        let chunkPages = 512
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: chunkPages) { vector in
            var cursor = start
            while cursor < end {
                let length = min(end - cursor, UInt(chunkPages) * pageSize)
                if mincore(UnsafeMutableRawPointer(bitPattern: cursor), Int(length), vector.baseAddress) != 0 {
                    if errno == EAGAIN { continue }
                    return false
                }
                cursor += length
            }
            return true
        }
    }

    struct MappingLine {
        var start: UInt
        var end: UInt
        var path: String
    }

    static func reason(start: UInt, end: UInt, errno failure: Errno) -> UnwatchableReason {
        if failure == .resourceBusy { return .ownedByAnotherUserfaultfd }
        let lines = mappings(overlapping: start, end)
        var covered = start
        for line in lines.sorted(by: { $0.start < $1.start }) {
            if line.start > covered { return .notMapped }
            covered = max(covered, line.end)
        }
        if lines.isEmpty || covered < end { return .notMapped }
        for line in lines {
            if line.path.hasPrefix("/SYSV") { return .sysVSharedMemory }
            if line.path.contains("anon_hugepage") || line.path.contains("hugepages") { return .hugetlbUnsupported }
        }
        for line in lines where line.path.hasPrefix("/") && !line.path.hasPrefix("/dev/zero")
            && !line.path.hasPrefix("/memfd:") {
            return .fileBacked(path: line.path)
        }
        return .refused(call: "ioctl(UFFDIO_REGISTER)", errno: failure)
    }

    /// The lines of `/proc/self/maps` that overlap [start, end).
    static func mappings(overlapping start: UInt, _ end: UInt) -> [MappingLine] {
        guard let text = readProcFile("/proc/self/maps") else { return [] }
        var result: [MappingLine] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard let bounds = fields.first?.split(separator: "-"), bounds.count == 2,
                  let low = UInt(bounds[0], radix: 16), let high = UInt(bounds[1], radix: 16) else { continue }
            if high <= start || low >= end { continue }
            let path = fields.count == 6 ? String(fields[5]).trimmingLeadingSpaces : ""
            result.append(MappingLine(start: low, end: high, path: path))
        }
        return result
    }

    private static func readProcFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    fileprivate var trimmingLeadingSpaces: String { String(drop(while: { $0 == " " })) }
}
