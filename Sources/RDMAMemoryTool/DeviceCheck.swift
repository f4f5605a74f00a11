import Monitors
import MemoryRegistration
import Verbs

/// Runs the whole `check` on one device, in the order that makes its answer mean something: the
/// control first (can this check see a stale registration at all?), then every memory change
/// through one cache over the device's protection domain, then on-demand paging.
///
/// Nothing here traps on bad input: a device that cannot be opened (or an unknown name, whose
/// error lists the devices present) ends the check with that error in the report.
enum DeviceCheck {
    static let port: UInt8 = 1

    static func run(device name: String, changes: [MemoryChange] = MemoryChange.allCases) -> CheckReport {
        // The process's monitor, shared with the cache below (never a monitor of our own).
        var report = CheckReport(device: name, port: Int(port), monitoring: MemoryMonitor.shared.mode.description)
        let context: DeviceContext
        let domain: ProtectionDomain
        let writer: LoopbackWriter
        do {
            context = try DeviceContext(name: name)
            report.activeMTU = try context.queryPort(port).activeMTUBytes
            domain = try ProtectionDomain(context: context)
            writer = try LoopbackWriter(domain: domain, capacity: MemoryChangeCheck.length)
        } catch {
            report.errors.append("\(error)")
            return report
        }
        report.control = ControlCheck.run(domain: domain, writer: writer, length: MemoryChangeCheck.length)

        let cache = RegistrationCache(protectionDomain: domain)
        let check = MemoryChangeCheck(cache: cache, writer: writer)
        report.rows = changes.map(check.run)
        cache.shutdown()

        report.onDemandPaging = OnDemandPagingCheck.run(context: context, domain: domain, writer: writer,
                                                        mtu: report.activeMTU, length: MemoryChangeCheck.length)
        return report
    }
}
