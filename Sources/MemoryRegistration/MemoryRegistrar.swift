import Verbs

/// What the cache needs of a device: register and deregister memory. `ProtectionDomain` is the
/// real one; a null registrar (no device work) lets tests and benchmarks measure the cache alone.
public protocol MemoryRegistrar: Sendable {
    func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> any RegisteredMemory
    /// The most bytes one registration may cover, and how many registrations may exist.
    var limits: (maxRegionBytes: UInt64, maxRegions: Int) { get }
}

/// One registration made by a `MemoryRegistrar`.
public protocol RegisteredMemory: AnyObject, Sendable {
    var lkey: UInt32 { get }
    var rkey: UInt32 { get }
    /// Releases the pin (`ibv_dereg_mr`); throws if it was already released.
    func deregister() throws
}

extension MemoryRegion: RegisteredMemory {}

extension ProtectionDomain: MemoryRegistrar {
    public func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> any RegisteredMemory {
        try registerMemory(address: address, length: length, access: access)
    }

    public var limits: (maxRegionBytes: UInt64, maxRegions: Int) {
        guard let attributes = try? context.queryDevice() else { return (UInt64.max, Int.max) }
        return (attributes.maxMRSize, attributes.maxMR)
    }
}
