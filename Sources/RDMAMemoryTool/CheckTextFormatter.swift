/// Renders a `CheckReport` for people: the control first (it decides whether the rest means
/// anything), a table with a row per memory change, the cache's reasons and notes under it, the
/// on-demand-paging finding, and a last line that says pass or fail and why.
enum CheckTextFormatter {
    static func format(_ report: CheckReport) -> String {
        var lines = ["rdmamemory check \(report.device): port \(report.port), active MTU "
            + (report.activeMTU.map(String.init) ?? "unknown")]
        lines.append("monitoring: \(report.monitoring)")
        if let control = report.control {
            lines.append("")
            lines.append(controlLine(control))
        }
        if !report.rows.isEmpty {
            lines.append("")
            lines += tableLines(report.rows)
            if !report.rows.contains(where: { $0.cachedBefore == true }) {
                lines.append("note: the cache cached nothing here (monitoring: \(report.monitoring)): every row was "
                    + "registered uncached, which is fresh but proves no invalidation")
            }
        }
        if let odp = report.onDemandPaging {
            lines.append("")
            lines += onDemandPagingLines(odp, device: report.device)
        }
        lines.append("")
        let failures = report.failures
        if failures.isEmpty {
            let fresh = report.rows.filter { $0.result == .fresh }.count
            let skipped = report.rows.filter { $0.result == .skipped }.map(\.description)
            lines.append("result: PASS: the control is stale and "
                + (skipped.isEmpty ? "all \(fresh)" : "\(fresh) of \(report.rows.count)")
                + " memory changes are fresh through the cache on \(report.device)"
                + (skipped.isEmpty ? "" : " (skipped: \(skipped.joined(separator: ", ")))"))
        } else {
            lines.append("result: FAIL")
            for failure in failures { lines.append("  \(failure)") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func controlLine(_ control: ControlResult) -> String {
        switch control.outcome {
        case .staleAsExpected:
            "control: stale as expected: \(control.change): \(control.bytesLanded) of \(control.bytesWritten) bytes landed"
        case .notStale:
            "control: NOT stale: \(control.change): \(control.bytesLanded) of \(control.bytesWritten) bytes landed: "
                + "this check cannot detect staleness on this device"
        case .error:
            "control: failed: \(control.change): \(control.detail ?? "unknown error")"
        }
    }

    /// The table, then one numbered footnote per uncached reason and per note or error.
    static func tableLines(_ rows: [ChangeRow]) -> [String] {
        var notes: [String] = []
        func footnote(_ text: String) -> String {
            if let index = notes.firstIndex(of: text) { return "[\(index + 1)]" }
            notes.append(text)
            return "[\(notes.count)]"
        }
        let header = ["memory change", "before", "after (cache)", "new region", "landed", "result"]
        var cells: [[String]] = [header]
        for row in rows {
            var after = row.cachedAfter.map { $0 ? "cached" : "uncached" } ?? "-"
            if let reason = row.uncachedReason { after += " " + footnote("uncached: \(reason)") }
            var result = row.result == .stale ? "STALE" : row.result.rawValue
            if let detail = row.detail { result += " " + footnote(detail) }
            cells.append([row.description, row.cachedBefore.map { $0 ? "cached" : "uncached" } ?? "-", after,
                          row.newRegion.map { $0 ? "yes" : "NO" } ?? "-",
                          "\(row.bytesLanded)/\(row.bytesWritten)", result])
        }
        let widths = header.indices.map { column in cells.map { $0[column].count }.max() ?? 0 }
        var lines = cells.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column] + 2, withPad: " ", startingAt: 0)
            }.joined()
        }
        lines += notes.enumerated().map { "  [\($0 + 1)] \($1)" }
        return lines
    }

    static func onDemandPagingLines(_ odp: OnDemandPagingResult, device: String) -> [String] {
        let mtu = odp.mtu.map(String.init) ?? "unknown"
        let write = "an ODP RDMA WRITE of \(odp.bytesWritten) bytes (page-aligned) at MTU \(mtu)"
        let figures = odp.bytesLanded == odp.bytesWritten ? "\(write): all \(odp.bytesWritten) bytes landed"
            : "\(write) completed, yet \(odp.bytesLanded) of \(odp.bytesWritten) bytes landed where they were "
                + "written (\(odp.bytesChanged) of the buffer's bytes changed at all)"
        switch odp.verdict {
        case .notOffered:
            return ["on-demand paging: not offered (\(device) reports no ODP for RC RDMA WRITE)"]
        case .safe:
            return ["on-demand paging: offered; \(figures): safe at this MTU"]
        case .unsafe:
            return ["on-demand paging: \(device) is UNSAFE for on-demand paging: \(figures)"]
                + (odp.detail.map { ["  \($0)"] } ?? [])
                + ["  (the cache pins memory and does not use ODP: the exit status is not affected)"]
        case .error:
            return ["on-demand paging: offered, but the check failed: \(odp.detail ?? "unknown error") "
                + "(not used by the cache: the exit status is not affected)"]
        }
    }
}
