#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import SystemPackage

/// Turns a refused UFFDIO_REGISTER into a reason a person can act on, by looking at what is
/// mapped there (`/proc/self/maps`). Runs only on the failure path.
enum UnwatchableClassifier {
    /// Why [start, end) must not be cached on trust, or nil when every mapping there is private
    /// anonymous memory (whose pages change only through this process's own calls, which
    /// userfaultfd and the hooks see). Asked once per watched mapping or granule, never on a hit.
    ///
    /// Anything else can change its pages with no event: a `MAP_SHARED` mapping of any kind
    /// (the kernel's VM_MAYSHARE: memfd, tmpfs, `/dev/shm`, `MAP_SHARED | MAP_ANONYMOUS` and
    /// shared `/dev/zero`, which are all shmem) and a private mapping of a file (truncation
    /// unmaps even its copied-on-write pages). Private `/dev/zero` and private anonymous
    /// hugetlb memory are anonymous: no descriptor reaches their pages.
    static func sharedMemory(start: UInt, end: UInt) -> UnwatchableReason? {
        var vma = cmemhooks_vma()
        var address = start
        while address < end {
            let failure = cmemhooks_vma_at_or_after(address, end, &vma)
            if failure == ENOENT { return nil }  // a hole: the probe and mincore speak to those
            if failure != 0 { return .refused(call: "read(/proc/self/maps)", errno: Errno(rawValue: failure)) }
            let name = withUnsafeBytes(of: &vma.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let shared = vma.flags & UInt32(CMEMHOOKS_VMA_SHARED.rawValue) != 0
            let anonymous = vma.inode == 0 || name == "/dev/zero" || name.hasPrefix("/anon_hugepage")
            if shared || !anonymous {
                let span = "0x\(String(vma.start, radix: 16))-0x\(String(vma.end, radix: 16))"
                return .sharedMemory(mapping: "\(shared ? "MAP_SHARED" : "MAP_PRIVATE") \(name.isEmpty ? "inode \(vma.inode)" : name) at \(span)")
            }
            address = vma.end
        }
        return nil
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
