#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import SystemPackage

/// What is mapped over a range (`CMemoryHooks`' VMA query: PROCMAP_QUERY, or /proc/self/maps):
/// whether its pages can change with no event, and why a refused UFFDIO_REGISTER was refused,
/// as a reason a person can act on.
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
    /// per mapping); elsewhere `mincore` finds them, a listing of /proc/self/map_files says
    /// whether any mapping with a file is there, and only then /proc/self/maps says which.
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
        let answer = cmemhooks_vma_classify(start, end, &vma)
        switch answer {
        case Int32(CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS.rawValue):
            return .privateAnonymous
        case Int32(CMEMHOOKS_RANGE_HOLE.rawValue):
            return .hole
        case Int32(CMEMHOOKS_RANGE_OTHER.rawValue):
            let name = name(of: &vma)
            let shared = vma.flags & UInt32(CMEMHOOKS_VMA_SHARED.rawValue) != 0
            let span = "0x\(String(vma.start, radix: 16))-0x\(String(vma.end, radix: 16))"
            return .shared(.sharedMemory(mapping: "\(shared ? "MAP_SHARED" : "MAP_PRIVATE") \(name.isEmpty ? "inode \(vma.inode)" : name) at \(span)"))
        default:
            return .shared(.refused(call: "read(/proc/self/maps)", errno: Errno(rawValue: -answer)))
        }
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

    /// Why UFFDIO_REGISTER refused [start, end) with `failure`. Runs only on the failure path.
    static func reason(start: UInt, end: UInt, errno failure: Errno) -> UnwatchableReason {
        if failure == .resourceBusy { return .ownedByAnotherUserfaultfd }
        var names: [String] = []
        var vma = cmemhooks_vma()
        var address = start
        while address < end {
            guard cmemhooks_vma_at_or_after(address, end, &vma) == 0, vma.start <= address else { return .notMapped }
            names.append(name(of: &vma))
            address = vma.end
        }
        if names.contains(where: { $0.hasPrefix("/SYSV") }) { return .sysVSharedMemory }
        if names.contains(where: { $0.contains("anon_hugepage") || $0.contains("hugepages") }) { return .hugetlbUnsupported }
        if let file = names.first(where: { $0.hasPrefix("/") && !$0.hasPrefix("/dev/zero") && !$0.hasPrefix("/memfd:") }) {
            return .fileBacked(path: file)
        }
        return .refused(call: "ioctl(UFFDIO_REGISTER)", errno: failure)
    }

    /// The mapping's path (or [heap], [stack], ...; "" for anonymous memory).
    private static func name(of vma: inout cmemhooks_vma) -> String {
        withUnsafeBytes(of: &vma.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
