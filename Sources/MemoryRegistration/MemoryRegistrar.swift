import Verbs

/// One registration a registrar made: the keys, and the registrar's own handle to deregister it.
/// A value, so that the cache keeps it inside its region's one allocation.
public struct RegisteredRegion: Sendable, Equatable {
    public var lkey: UInt32
    public var rkey: UInt32
    /// The registrar's handle for the registration (a protection domain's is its `ibv_mr`
    /// pointer's bits). Opaque to the cache, which gives it back to `deregisterRegion` once.
    public var handle: UInt

    public init(lkey: UInt32, rkey: UInt32, handle: UInt) {
        self.lkey = lkey
        self.rkey = rkey
        self.handle = handle
    }
}

/// What the cache needs of a device: register and deregister memory. `ProtectionDomain` is the
/// real one; a null registrar (no device work) lets tests and benchmarks measure the cache alone.
public protocol MemoryRegistrar: Sendable {
    func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion
    /// Releases the pin of a registration this registrar made (once per registration).
    func deregisterRegion(_ region: RegisteredRegion) throws
    /// The most bytes one registration may cover, and how many registrations may exist.
    var limits: (maxRegionBytes: UInt64, maxRegions: Int) { get }
}

extension ProtectionDomain: MemoryRegistrar {
    public func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion {
        let made = try registerMemoryHandle(address: address, length: length, access: access)
        return RegisteredRegion(lkey: made.lkey, rkey: made.rkey, handle: made.handle)
    }

    public func deregisterRegion(_ region: RegisteredRegion) throws {
        try deregisterMemory(handle: region.handle)
    }

    public var limits: (maxRegionBytes: UInt64, maxRegions: Int) {
        guard let attributes = try? context.queryDevice() else { return (UInt64.max, Int.max) }
        return (attributes.maxMRSize, attributes.maxMR)
    }
}
