import ArgumentParser

/// `rdmamemory check DEVICE`: proves the registration cache on this machine, on this device,
/// with real RDMA WRITEs, instead of trusting that the monitor sees what it should here.
///
/// Exit status 0 only when the control came out stale and every memory change was fresh
/// through the cache; 1 on a stale row, a failed control, or a device that cannot be opened.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Prove the registration cache on DEVICE: change memory under cached registrations, "
            + "RDMA-WRITE through what the cache gives, and count the bytes that land.",
        discussion: """
            A control row first registers without the cache and must come out stale (0 bytes land): \
            otherwise the check cannot see staleness and fails. Then, for each memory change the \
            monitor handles, a row: the change, how the cache served it, bytes landed of written, \
            fresh or STALE. On-demand paging is measured too where the device offers it; an unsafe \
            ODP is reported but does not change the exit status (the cache does not use ODP).
            """)

    @Argument(help: "The RDMA device, e.g. rxe0 (`rdmamemory info` lists them).")
    var device: String

    @Flag(help: "Print one JSON object (stable snake_case keys, schema_version) instead of text.")
    var json = false

    func run() throws {
        let report = DeviceCheck.run(device: device)
        print(json ? try report.jsonText() : CheckTextFormatter.format(report), terminator: "")
        if !report.passed { throw ExitCode.failure }
    }
}
