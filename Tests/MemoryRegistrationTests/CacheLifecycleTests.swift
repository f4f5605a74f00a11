import CShims
import MemoryMapping
import Testing
@testable import MemoryRegistration

/// fork() and a failed device, the two ways a cache's world ends under it.
@Suite("Registration cache lifecycle") struct CacheLifecycleTests {
    /// Policy: a forked child inherits no monitoring and must not use the parent's
    /// registrations; what the child does to its copy of the memory never revokes the
    /// parent's registrations, and the parent keeps working.
    @Test func forkedChildLeavesTheParentsCacheAlone() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        let page = AnonymousMapping.pageSize
        let buffer = try AnonymousMapping(length: 16 * page)
        let held = try cache.register(buffer.bytes, access: .rdma)
        let child = cshims_fork_touch_unmap_exit(buffer.bytes.baseAddress, UInt(buffer.length), UInt(page))
        try #require(child > 0)
        #expect(cshims_wait_child(child, 10_000) == 0, "the child hung: its munmap waited for a monitor it does not have")
        #expect(!held.isRevoked, "the child's unmap is not the parent's")
        let again = try cache.register(buffer.bytes, access: .rdma)
        #expect(again.lkey == held.lkey)
        try again.release()
        try buffer.unmap()
        #expect(held.isRevoked, "the parent's own unmap is still seen after the fork")
        try held.release()
    }

    /// What a fatal device event does (`DeviceEventMonitor` calls `close`): every registration
    /// is revoked at once, and later calls fail with the reason.
    @Test func deviceFailureRevokesEverythingAndRefusesLaterCalls() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 8192)
        let held = try cache.register(buffer.bytes, access: .rdma)
        cache.close(reason: "the device reported a fatal error")
        #expect(held.isRevoked)
        let error = #expect(throws: RegistrationError.self) { try cache.register(buffer.bytes, access: .rdma) }
        #expect(error?.description.contains("fatal error") == true)
        try held.release()
        try cache.waitForPendingTeardowns()
        #expect(registrar.liveRegistrations == 0)
    }
}
