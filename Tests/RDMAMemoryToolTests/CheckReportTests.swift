import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import RDMAMemoryTool

/// `check`'s exit decision, JSON and text over reports built by hand: what scripts read (keys,
/// `exit_status`, `failures`) and what people read (the control line, STALE rows, ODP figures).
@Suite struct CheckReportTests {
    static let control = ControlResult(change: ControlCheck.change, bytesWritten: 65536, bytesLanded: 0,
                                       outcome: .staleAsExpected)

    static func row(_ change: MemoryChange, landed: Int = 65536, result: ChangeRow.Result = .fresh,
                    cached: Bool = true, reason: String? = nil, detail: String? = nil) -> ChangeRow {
        ChangeRow(change: change.rawValue, description: change.description, cachedBefore: true, cachedAfter: cached,
                  uncachedReason: reason, newRegion: true, bytesWritten: 65536, bytesLanded: landed, result: result,
                  detail: detail)
    }

    static let rows = MemoryChange.allCases.map { change in
        change.isUncachedByRule ? row(change, cached: false, reason: "shared memory (memfd): truncation") : row(change)
    }

    static let unsafeODP = OnDemandPagingResult(offered: true, mtu: 1024, bytesWritten: 65536, bytesLanded: 0,
                                                bytesChanged: 16384, verdict: .unsafe)

    static func report(control: ControlResult? = control, rows: [ChangeRow] = rows,
                       odp: OnDemandPagingResult? = unsafeODP, errors: [String] = []) -> CheckReport {
        CheckReport(device: "rxe0", activeMTU: 1024, monitoring: "userfaultfd (full)", control: control, rows: rows,
                    onDemandPaging: odp, errors: errors)
    }

    static func object(_ report: CheckReport) throws -> [String: Any] {
        let text = try report.jsonText()
        #expect(text.hasSuffix("}\n") && text.filter { $0 == "\n" }.count == 1, "one object on one line")
        return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func staleControlAndFreshRowsPassEvenWithUnsafeODP() {
        let report = Self.report()
        #expect(report.failures.isEmpty, "\(report.failures)")
        #expect(report.passed && report.exitStatus == 0)
    }

    @Test func aStaleRowFailsAndIsNamed() throws {
        var rows = Self.rows
        rows[3] = Self.row(.dontNeed, landed: 0, result: .stale)
        let report = Self.report(rows: rows)
        #expect(report.exitStatus == 1)
        #expect(report.failures.count == 1)
        #expect(report.failures.first?.hasPrefix("madvise(MADV_DONTNEED): STALE: 0 of 65536 bytes") == true,
                "\(report.failures)")
        let text = CheckTextFormatter.format(report)
        #expect(text.contains("result: FAIL\n"))
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("madvise(MADV_DONTNEED)") })
        #expect(line.hasSuffix("STALE") && line.contains("0/65536"), "\(text)")
    }

    @Test func aControlThatIsNotStaleFailsTheCheck() {
        var control = Self.control
        control.bytesLanded = 65536
        control.outcome = .notStale
        let report = Self.report(control: control)
        #expect(report.exitStatus == 1)
        #expect(report.failures.first?.contains("control: NOT stale") == true)
        #expect(report.failures.first?.contains("proves nothing") == true)
        #expect(CheckTextFormatter.format(report).contains("control: NOT stale"))
    }

    @Test func aControlThatFailedOrDidNotRunFailsTheCheck() {
        var control = Self.control
        control.outcome = .error
        control.detail = "ibv_poll_cq(expecting 1 completions): Connection timed out (ETIMEDOUT)"
        #expect(Self.report(control: control).failures == ["control: \(control.detail ?? "")"])
        #expect(Self.report(control: nil).exitStatus == 1)
    }

    @Test func aDeviceThatCannotBeOpenedFailsWithItsError() throws {
        let error = "ibv_open_device(name: \"mlx9\"): No such device (ENODEV); devices present: rxe0"
        let report = CheckReport(device: "mlx9", monitoring: "userfaultfd (full)", errors: [error])
        #expect(report.failures == [error])
        #expect(report.exitStatus == 1)
        #expect(CheckTextFormatter.format(report).contains("  \(error)\n"))
        let json = try Self.object(report)
        #expect(json["exit_status"] as? Int == 1 && json["passed"] as? Bool == false)
        #expect(json["control"] is NSNull && (json["rows"] as? [Any])?.isEmpty == true)
    }

    @Test func aRowThatErredFailsAndASkippedOneDoesNot() {
        var rows = Self.rows
        rows[5] = Self.row(.brk, result: .skipped, detail: "the program break moved under the check")
        #expect(Self.report(rows: rows).exitStatus == 0)
        #expect(CheckTextFormatter.format(Self.report(rows: rows)).contains("8 of 9 memory changes are fresh"))
        rows[0] = Self.row(.munmapMapFixed, landed: 0, result: .error, detail: "ibv_reg_mr(...): Bad address (EFAULT)")
        let report = Self.report(rows: rows)
        #expect(report.failures == ["munmap + mmap(MAP_FIXED): ibv_reg_mr(...): Bad address (EFAULT)"])
    }

    @Test func rowsThatWereNeverCachedPassButSayTheyProveNoInvalidation() {
        let rows = Self.rows.map { row in
            var row = row
            (row.cachedBefore, row.cachedAfter, row.uncachedReason) = (false, false, "no userfaultfd")
            return row
        }
        let report = Self.report(rows: rows)
        #expect(report.exitStatus == 0)
        #expect(CheckTextFormatter.format(report).contains("note: the cache cached nothing here"))
        #expect(!CheckTextFormatter.format(Self.report()).contains("cached nothing"))
    }

    @Test func noRowsIsNotAPass() {
        #expect(Self.report(rows: []).exitStatus == 1)
    }

    @Test func jsonHasTheStableKeys() throws {
        let json = try Self.object(Self.report())
        #expect(json["schema_version"] as? Int == 1)
        #expect(json["device"] as? String == "rxe0" && json["port"] as? Int == 1 && json["active_mtu"] as? Int == 1024)
        #expect(json["passed"] as? Bool == true && json["exit_status"] as? Int == 0)
        #expect((json["failures"] as? [String])?.isEmpty == true)
        let control = try #require(json["control"] as? [String: Any])
        #expect(control["outcome"] as? String == "stale_as_expected")
        #expect(control["bytes_landed"] as? Int == 0 && control["bytes_written"] as? Int == 65536)
        let rows = try #require(json["rows"] as? [[String: Any]])
        #expect(rows.map { $0["change"] as? String } == [
            "munmap_mmap_fixed", "raw_munmap_mmap", "mremap", "madvise_dontneed", "free_malloc", "brk_shrink_grow",
            "memfd_ftruncate", "shmat_remap", "madvise_guard_install",
        ])
        let memfd = try #require(rows.first { $0["change"] as? String == "memfd_ftruncate" })
        #expect(memfd["cached_after"] as? Bool == false && memfd["cached_before"] as? Bool == true)
        #expect((memfd["uncached_reason"] as? String)?.contains("memfd") == true)
        #expect(memfd["result"] as? String == "fresh" && memfd["bytes_landed"] as? Int == 65536)
        #expect(memfd["new_region"] as? Bool == true)
        let odp = try #require(json["odp"] as? [String: Any])
        #expect(odp["verdict"] as? String == "unsafe" && odp["offered"] as? Bool == true && odp["mtu"] as? Int == 1024)
        #expect(odp["bytes_changed"] as? Int == 16384 && odp["bytes_landed"] as? Int == 0)
    }

    @Test func jsonRoundTrips() throws {
        var rows = Self.rows
        rows[2].detail = "moved from 0x1000 to 0x2000: checked at the new address"
        let report = Self.report(rows: rows)
        let decoded = try JSONDecoder().decode(CheckReport.self, from: Data(try report.jsonText().utf8))
        #expect(decoded == report)
    }

    @Test func textShowsTheControlTheTableAndTheReasons() throws {
        let text = CheckTextFormatter.format(Self.report())
        #expect(text.hasPrefix("rdmamemory check rxe0: port 1, active MTU 1024\n"))
        #expect(text.contains("\ncontrol: stale as expected: plain ibv_reg_mr (no cache)"))
        #expect(text.contains("0 of 65536 bytes landed\n"))
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let header = try #require(lines.first { $0.hasPrefix("memory change") })
        #expect(header.contains("landed") && header.contains("result"))
        for change in MemoryChange.allCases {
            #expect(lines.contains { $0.hasPrefix(change.description) && $0.contains("65536/65536") }, "\(change)")
        }
        #expect(text.contains("uncached [1]") && text.contains("  [1] uncached: shared memory (memfd): truncation\n"))
        #expect(text.contains("result: PASS: the control is stale and all 9 memory changes are fresh"))
    }

    @Test func textSaysWhetherODPIsUnsafeWithItsFiguresOrNotOffered() {
        let unsafe = CheckTextFormatter.format(Self.report())
        #expect(unsafe.contains("rxe0 is UNSAFE for on-demand paging"))
        #expect(unsafe.contains("at MTU 1024") && unsafe.contains("0 of 65536 bytes landed")
            && unsafe.contains("16384"), "\(unsafe)")
        #expect(unsafe.contains("exit status is not affected"))
        let none = OnDemandPagingResult(offered: false, mtu: 1024, bytesWritten: 65536, bytesLanded: 0, bytesChanged: 0,
                                        verdict: .notOffered)
        #expect(CheckTextFormatter.format(Self.report(odp: none)).contains("on-demand paging: not offered"))
        var safe = Self.unsafeODP
        (safe.bytesLanded, safe.bytesChanged, safe.verdict, safe.mtu) = (65536, 65536, .safe, 4096)
        let text = CheckTextFormatter.format(Self.report(odp: safe))
        #expect(text.contains("all 65536 bytes landed: safe at this MTU") && text.contains("MTU 4096"))
    }

    @Test func thePatternIsNeverZeroAndTheCountsSayWhereBytesWent() {
        #expect((0..<65536).allSatisfy { LoopbackWriter.pattern($0) != 0 }, "a zero would count as landed")
        let pageSize = 4096
        #expect(Set((0..<pageSize).map { LoopbackWriter.pattern($0) }).count > 200)
        var bytes = [UInt8](repeating: 0, count: 4 * pageSize)
        bytes.withUnsafeBytes { #expect(LoopbackWriter.count($0) == .init(bytesWritten: 16384, bytesLanded: 0, bytesChanged: 0)) }
        for index in bytes.indices { bytes[index] = LoopbackWriter.pattern(index) }
        bytes.withUnsafeBytes { #expect(LoopbackWriter.count($0).bytesLanded == 16384) }
        // rxe 7.3's ODP bug: each page's first KiB holds the page's last packet.
        for page in 0..<4 {
            for offset in 0..<pageSize {
                bytes[page * pageSize + offset] = offset < 1024 ? LoopbackWriter.pattern(page * pageSize + 3072 + offset) : 0
            }
        }
        bytes.withUnsafeBytes {
            let counted = LoopbackWriter.count($0)
            #expect(counted.bytesChanged == 4096 && counted.bytesLanded < 64, "\(counted)")
        }
    }

    @Test func odpPlacementTellsRxesFirstMTUBugFromOtherLoss() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var bytes = [UInt8](repeating: 0, count: 4 * page)
        bytes.withUnsafeMutableBytes {
            #expect(OnDemandPagingCheck.placement(ofChangesIn: $0, mtu: 1024) == "nothing reached the buffer")
        }
        for index in bytes.indices where index % page < 1024 { bytes[index] = 7 }
        bytes.withUnsafeMutableBytes {
            #expect(OnDemandPagingCheck.placement(ofChangesIn: $0, mtu: 1024)
                == "every changed byte lies in the first 1024 bytes (one MTU) of its \(page)-byte page")
        }
        bytes[page + 2000] = 1
        bytes.withUnsafeMutableBytes {
            #expect(OnDemandPagingCheck.placement(ofChangesIn: $0, mtu: 1024).hasPrefix("4096 of 4097 changed bytes"))
        }
        var unsafe = Self.unsafeODP
        unsafe.detail = "every changed byte lies in the first 1024 bytes (one MTU) of its 4096-byte page"
        #expect(CheckTextFormatter.format(Self.report(odp: unsafe)).contains("\n  every changed byte lies in the first 1024"))
    }
}
