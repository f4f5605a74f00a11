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
        MemoryRegion(try register(address: address, length: length, access: access), protectionDomain: self, access: access)
    }

    /// `ibv_reg_mr` with the checks and error explanations of `registerMemory`.
    private func register(address: UInt, length: Int, access: AccessFlags) throws -> UnsafeMutablePointer<ibv_mr> {
        // Built only for an error: formatting it cost a fifth of a registration's CPU in the VM.
        func described() -> String { "address: 0x\(String(address, radix: 16)), length: \(length)" }
        guard length > 0 else {
            throw VerbsError(call: "ibv_reg_mr", argument: "length: \(length)", errno: .invalidArgument,
                             detail: "a memory region needs at least one byte")
        }
        guard address.addingReportingOverflow(UInt(length) - 1).overflow == false else {
            throw VerbsError(call: "ibv_reg_mr", argument: described(), errno: .invalidArgument,
                             detail: "the range wraps the end of the address space")
        }
        clearErrno()
        guard let mr = ibv_reg_mr(pointer, UnsafeMutableRawPointer(bitPattern: address), length,
                                  Int32(bitPattern: access.rawValue)) else {
            let failure = VerbsError.fromErrno("ibv_reg_mr", argument: described())
            throw MappingProbe.explain(failure, address: address, length: length, access: access)
        }
        return mr
    }

    /// Registers memory without a `MemoryRegion` object: the keys and a handle, for an owner that
    /// keeps them in its own storage (a registration cache keeps them in the one allocation of
    /// its region). The handle is the `ibv_mr` pointer's bits; give it back to
    /// `deregisterMemory(handle:)` exactly once. The domain must outlive it.
    public func registerMemoryHandle(address: UInt, length: Int, access: AccessFlags) throws
        -> (lkey: UInt32, rkey: UInt32, handle: UInt)
    {
        let mr = try register(address: address, length: length, access: access)
        return (mr.pointee.lkey, mr.pointee.rkey, UInt(bitPattern: mr))
    }

    /// `ibv_dereg_mr` of a handle from `registerMemoryHandle`. The handle is turned back into the
    /// `ibv_mr` pointer it was made from: valid because that registration is live until this call
    /// (libibverbs frees the struct in `ibv_dereg_mr`), and the caller gives each handle back once.
    public func deregisterMemory(handle: UInt) throws {
        guard let mr = UnsafeMutablePointer<ibv_mr>(bitPattern: handle) else {
            throw VerbsError(call: "ibv_dereg_mr", argument: "handle: 0", errno: .invalidArgument)
        }
        let code = ibv_dereg_mr(mr)
        if code != 0 { throw VerbsError.fromReturn("ibv_dereg_mr", code, argument: "handle: 0x\(String(handle, radix: 16))") }
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
