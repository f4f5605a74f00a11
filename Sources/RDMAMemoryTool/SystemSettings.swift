#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Reads of kernel settings and process limits, each answering nil when unreadable (a container
/// may hide /proc/sys), never failing the report.
enum SystemSettings {
    /// `/proc/sys/<path>` as an integer, e.g. `vm/max_map_count`.
    static func integer(sysctl path: String) -> Int64? {
        guard let text = try? String(contentsOfFile: "/proc/sys/" + path, encoding: .utf8) else { return nil }
        return Int64(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isReadableAndWritable(_ path: String) -> Bool { access(path, R_OK | W_OK) == 0 }

    /// RLIMIT_MEMLOCK's soft and hard limits; nil when getrlimit fails. RLIM_INFINITY is all ones
    /// (Swift cannot import the macro: it is written as -1 cast to an unsigned type).
    static func memlockLimit() -> (soft: ResourceLimit, hard: ResourceLimit)? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit) == 0 else { return nil }
        func value(_ raw: rlim_t) -> ResourceLimit { raw == rlim_t.max ? .unlimited : .bytes(UInt64(raw)) }
        return (value(limit.rlim_cur), value(limit.rlim_max))
    }
}
