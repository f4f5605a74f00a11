import MemoryMapping
import Verbs

/// The control row: the bug itself, with no cache. A plain `ibv_reg_mr`, munmap + mmap(MAP_FIXED)
/// at the same address, an RDMA WRITE through the old rkey: the bytes go to the old pinned pages
/// and none reach the application. Only if this comes out stale does a fresh cache row prove
/// that the cache (and not luck, or a device that follows the mapping) kept the data right.
enum ControlCheck {
    static let change = "plain ibv_reg_mr (no cache), munmap + mmap(MAP_FIXED), RDMA WRITE through the old rkey"

    static func run(domain: ProtectionDomain, writer: LoopbackWriter, length: Int) -> ControlResult {
        var result = ControlResult(change: change, bytesWritten: length, bytesLanded: 0, outcome: .error)
        do {
            let mapping = try AnonymousMapping(length: length)
            let region = try domain.registerMemory(mapping.bytes, access: .rdma)
            try mapping.replaceWithFreshMapping()
            let outcome = try writer.write(to: region.address, rkey: region.rkey, observing: mapping.bytes)
            try region.deregister()
            result.bytesWritten = outcome.bytesWritten
            result.bytesLanded = outcome.bytesLanded
            result.outcome = outcome.bytesLanded == 0 ? .staleAsExpected : .notStale
        } catch {
            result.detail = "\(error)"
        }
        return result
    }
}
