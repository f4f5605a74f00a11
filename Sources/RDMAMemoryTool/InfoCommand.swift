import ArgumentParser

/// `rdmamemory info`: devices, invalidation mode and limits, as text or one JSON object.
///
/// A host without RDMA devices is a valid answer (exit 0); a query that failed is printed with
/// the rest of the report and the exit status is 1, so scripts notice without parsing.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "RDMA devices, ports, GIDs and ODP; how invalidations reach this process; memory limits.")

    @Flag(help: "Print one JSON object (stable keys) instead of text.")
    var json = false

    func run() throws {
        let report = InfoReport.collect()
        print(json ? try report.jsonText() : InfoTextFormatter.format(report), terminator: "")
        if report.hasErrors { throw ExitCode.failure }
    }
}
