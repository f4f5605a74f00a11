import CVerbs

/// A protection domain (`struct ibv_pd`): memory regions and queue pairs in one domain may be
/// used together, and only together.
///
/// `@unchecked Sendable`: the pointer is written once in `init` and freed only in `deinit`;
/// the verbs that take it are thread-safe in libibverbs.
public final class ProtectionDomain: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_pd>
    /// Held so the device stays open as long as anything in this domain exists.
    public let context: DeviceContext

    public init(context: DeviceContext) throws {
        clearErrno()
        guard let pd = ibv_alloc_pd(context.pointer) else {
            throw VerbsError.fromErrno("ibv_alloc_pd", argument: "device: \(context.name)")
        }
        pointer = pd
        self.context = context
    }

    deinit { ibv_dealloc_pd(pointer) }

    /// Registers `length` bytes at `address` with the device (`ibv_reg_mr`): pins the pages
    /// and gives the device a translation for them.
    ///
    /// Bad input is reported, never crashes: a zero length, a NULL or unmapped address, a range
    /// with a hole, or write access to read-only memory each throw a `VerbsError` that names
    /// the argument at fault and the errno (the kernel's own, where it decides).
    public func registerMemory(address: UInt, length: Int, access: AccessFlags) throws -> MemoryRegion {
        let described = "address: 0x\(String(address, radix: 16)), length: \(length)"
        guard length > 0 else {
            throw VerbsError(call: "ibv_reg_mr", argument: "length: \(length)", errno: .invalidArgument,
                             detail: "a memory region needs at least one byte")
        }
        guard address.addingReportingOverflow(UInt(length) - 1).overflow == false else {
            throw VerbsError(call: "ibv_reg_mr", argument: described, errno: .invalidArgument,
                             detail: "the range wraps the end of the address space")
        }
        clearErrno()
        guard let mr = ibv_reg_mr(pointer, UnsafeMutableRawPointer(bitPattern: address), length,
                                  Int32(bitPattern: access.rawValue)) else {
            let failure = VerbsError.fromErrno("ibv_reg_mr", argument: described)
            throw MappingProbe.explain(failure, address: address, length: length, access: access)
        }
        return MemoryRegion(mr, protectionDomain: self, access: access)
    }

    /// Registers a buffer; see `registerMemory(address:length:access:)`.
    public func registerMemory(_ buffer: UnsafeMutableRawBufferPointer, access: AccessFlags) throws -> MemoryRegion {
        try registerMemory(address: UInt(bitPattern: buffer.baseAddress), length: buffer.count, access: access)
    }

    /// Registers a read-only buffer; write access to it is refused with a clear error.
    public func registerMemory(_ buffer: UnsafeRawBufferPointer, access: AccessFlags) throws -> MemoryRegion {
        try registerMemory(address: UInt(bitPattern: buffer.baseAddress), length: buffer.count, access: access)
    }
}
