import CVerbs
import Synchronization

/// A registered memory region (`struct ibv_mr`): while it exists, its pages stay pinned and the
/// device may read or write them through `lkey` (local work requests) and `rkey` (remote peers).
///
/// Deregistration is explicit (`deregister()`) for owners that must know when the pin is gone
/// (a registration cache), and automatic when the last reference ends.
public final class MemoryRegion: Sendable {
    /// The registered MR, or nil once deregistered. A Mutex so that `deregister()` from one
    /// thread and `deinit` or a second `deregister()` can never free it twice.
    private let handle: Mutex<UnsafeMutablePointer<ibv_mr>?>
    /// Held so the domain (and the device) outlive the region: MR before PD, always.
    public let protectionDomain: ProtectionDomain
    public let address: UInt
    public let length: Int
    public let lkey: UInt32
    public let rkey: UInt32
    public let access: AccessFlags

    init(_ mr: sending UnsafeMutablePointer<ibv_mr>, protectionDomain: ProtectionDomain, access: AccessFlags) {
        self.protectionDomain = protectionDomain
        address = UInt(bitPattern: mr.pointee.addr)
        length = mr.pointee.length
        lkey = mr.pointee.lkey
        rkey = mr.pointee.rkey
        self.access = access
        handle = Mutex(mr)
    }

    deinit {
        handle.withLock { mr in
            if let registered = mr { ibv_dereg_mr(registered) }
        }
    }

    /// Whether the device still holds this region.
    public var isRegistered: Bool { handle.withLock { $0 != nil } }

    /// Whether `[address, address + length)` lies inside this region.
    public func contains(address start: UInt, length count: Int) -> Bool {
        guard start >= address, count >= 0 else { return false }
        let offset = start - address
        return offset <= UInt(length) && UInt(count) <= UInt(length) - offset
    }

    /// Releases the pages and the keys (`ibv_dereg_mr`).
    ///
    /// - Throws: `VerbsError` if the region was already deregistered (a caller bug worth
    ///   hearing about), or with the provider's errno if the device refused (the region then
    ///   stays registered and `deinit` tries again).
    public func deregister() throws {
        try handle.withLock { mr in
            guard let registered = mr else {
                throw VerbsError(call: "ibv_dereg_mr", argument: "lkey: \(lkey)",
                                 detail: "the memory region was already deregistered")
            }
            let code = ibv_dereg_mr(registered)
            guard code == 0 else { throw VerbsError.fromReturn("ibv_dereg_mr", code, argument: "lkey: \(lkey)") }
            mr = nil
        }
    }
}
