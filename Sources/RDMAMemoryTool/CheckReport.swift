import Foundation

/// Everything `rdmamemory check DEVICE` found, as one value: measured once, then rendered as text
/// or encoded as JSON, and the exit status is decided from it alone (`failures`), so the three
/// can never disagree and each is testable without a device.
///
/// JSON keys are spelled out in `CodingKeys` (snake_case); `schema_version` changes when a key
/// or the meaning of a value does.
struct CheckReport: Codable, Equatable, Sendable {
    static let currentSchemaVersion = 1

    var schemaVersion = Self.currentSchemaVersion
    var device: String
    /// The port the loopback queue pairs use (1).
    var port: Int
    /// The port's active MTU in bytes, which every RDMA WRITE of the check uses; nil if unknown.
    var activeMTU: Int?
    /// `MemoryMonitor.shared.mode` in the monitor's words: without userfaultfd every row is
    /// registered uncached (fresh, but nothing about the cache is proved).
    var monitoring: String
    /// Nil when the check stopped before it (the device could not be opened).
    var control: ControlResult?
    var rows: [ChangeRow] = []
    var onDemandPaging: OnDemandPagingResult?
    /// Failures that stopped the check (the device, its port, its protection domain).
    var errors: [String] = []

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version", device, port, activeMTU = "active_mtu", monitoring, control, rows
        case onDemandPaging = "odp", errors, passed, exitStatus = "exit_status", failures
    }

    init(device: String, port: Int = 1, activeMTU: Int? = nil, monitoring: String, control: ControlResult? = nil,
         rows: [ChangeRow] = [], onDemandPaging: OnDemandPagingResult? = nil, errors: [String] = []) {
        self.device = device
        self.port = port
        self.activeMTU = activeMTU
        self.monitoring = monitoring
        self.control = control
        self.rows = rows
        self.onDemandPaging = onDemandPaging
        self.errors = errors
    }

    /// Why the exit status is non-zero, one line each; empty when the cache was proved here: the
    /// control came out stale (so the check can see staleness) and every cache row is fresh.
    /// On-demand paging never appears here: the cache does not use it.
    var failures: [String] {
        var reasons = errors
        switch control?.outcome {
        case .staleAsExpected?: break
        case .notStale?:
            reasons.append("control: NOT stale (\(control?.bytesLanded ?? 0) of \(control?.bytesWritten ?? 0) bytes "
                + "landed through the old registration): this check cannot detect a stale registration on "
                + "this device, so it proves nothing")
        case .error?: reasons.append("control: \(control?.detail ?? "failed")")
        case nil: if errors.isEmpty { reasons.append("control: not run") }
        }
        for row in rows {
            switch row.result {
            case .fresh, .skipped: break
            case .stale:
                reasons.append("\(row.description): STALE: \(row.bytesLanded) of \(row.bytesWritten) bytes landed "
                    + "in the application's memory (the cache served a region of the old pages)")
            case .error: reasons.append("\(row.description): \(row.detail ?? "failed")")
            }
        }
        if errors.isEmpty && control != nil && rows.isEmpty { reasons.append("no memory change was checked") }
        return reasons
    }

    var passed: Bool { failures.isEmpty }
    var exitStatus: Int32 { passed ? 0 : 1 }

    /// One line of JSON (sorted keys), ending in a newline.
    func jsonText() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        schemaVersion = try container.decode(Int.self, forKey: .schemaVersion)
        device = try container.decode(String.self, forKey: .device)
        port = try container.decode(Int.self, forKey: .port)
        activeMTU = try container.decodeIfPresent(Int.self, forKey: .activeMTU)
        monitoring = try container.decode(String.self, forKey: .monitoring)
        control = try container.decodeIfPresent(ControlResult.self, forKey: .control)
        rows = try container.decode([ChangeRow].self, forKey: .rows)
        onDemandPaging = try container.decodeIfPresent(OnDemandPagingResult.self, forKey: .onDemandPaging)
        errors = try container.decode([String].self, forKey: .errors)
    }

    /// Derived fields (`passed`, `exit_status`, `failures`) are written for scripts, never read back.
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(schemaVersion, forKey: .schemaVersion)
        try container.encode(device, forKey: .device)
        try container.encode(port, forKey: .port)
        try container.encode(activeMTU, forKey: .activeMTU)
        try container.encode(monitoring, forKey: .monitoring)
        try container.encode(control, forKey: .control)
        try container.encode(rows, forKey: .rows)
        try container.encode(onDemandPaging, forKey: .onDemandPaging)
        try container.encode(errors, forKey: .errors)
        try container.encode(passed, forKey: .passed)
        try container.encode(exitStatus, forKey: .exitStatus)
        try container.encode(failures, forKey: .failures)
    }
}

/// The row that proves the check can see staleness at all: a plain `ibv_reg_mr` (no cache), the
/// memory replaced by munmap + mmap(MAP_FIXED), an RDMA WRITE through the old rkey. It must land
/// nowhere the application can see (0 bytes): if it does land, a fresh cache row means nothing.
struct ControlResult: Codable, Equatable, Sendable {
    enum Outcome: String, Codable, Sendable {
        case staleAsExpected = "stale_as_expected", notStale = "not_stale", error
    }

    var change: String
    var bytesWritten: Int
    var bytesLanded: Int
    var outcome: Outcome
    var detail: String?

    enum CodingKeys: String, CodingKey {
        case change, bytesWritten = "bytes_written", bytesLanded = "bytes_landed", outcome, detail
    }
}

/// One memory change under a cached registration, and what an RDMA WRITE through the region the
/// cache gave afterwards did.
struct ChangeRow: Codable, Equatable, Sendable {
    enum Result: String, Codable, Sendable {
        /// Every written byte is in the application's current memory.
        case fresh
        /// Fewer: the write went to pages the application no longer has.
        case stale
        /// The change could not be made here (said why in `detail`); neither proves nor fails.
        case skipped
        /// A call failed (named in `detail`): the check cannot say, and fails.
        case error
    }

    /// Stable identifier, e.g. `munmap_mmap_fixed`.
    var change: String
    /// What was done, for people: `munmap + mmap(MAP_FIXED)`.
    var description: String
    /// How the cache served the first registration (before the change): true when cached.
    var cachedBefore: Bool?
    /// How the cache served the registration after the change.
    var cachedAfter: Bool?
    /// The cache's reason for registering uncached after the change (nil when cached).
    var uncachedReason: String?
    /// True when the second registration has other keys than the first (a new region).
    var newRegion: Bool?
    var bytesWritten: Int
    var bytesLanded: Int
    var result: Result
    /// Why a row was skipped or failed, or what else happened (another address given back).
    var detail: String?

    enum CodingKeys: String, CodingKey {
        case change, description, cachedBefore = "cached_before", cachedAfter = "cached_after"
        case uncachedReason = "uncached_reason", newRegion = "new_region", bytesWritten = "bytes_written"
        case bytesLanded = "bytes_landed", result, detail
    }
}

/// Whether the device's on-demand paging can be trusted with RDMA WRITE: measured, not read off
/// the capability bits, because Linux 7.3's rxe reports ODP and loses 3/4 of each page at MTU
/// 1024. Informational only: the cache pins memory and never uses ODP.
struct OnDemandPagingResult: Codable, Equatable, Sendable {
    enum Verdict: String, Codable, Sendable {
        /// The device reports no ODP for RC RDMA WRITE: nothing to test.
        case notOffered = "not_offered"
        /// Every byte landed where it was written.
        case safe
        /// The write completed but bytes are missing or misplaced: ODP is silent data loss here.
        case unsafe
        /// A call failed (named in `detail`).
        case error
    }

    /// The device reports `IBV_ODP_SUPPORT` and `IBV_ODP_SUPPORT_WRITE` for RC.
    var offered: Bool
    /// The MTU (bytes) the write used: the port's active MTU.
    var mtu: Int?
    var bytesWritten: Int
    /// Bytes equal to what was written at their offset.
    var bytesLanded: Int
    /// Bytes that differ from the zeros the buffer held before: a misplaced packet changes
    /// bytes without landing them.
    var bytesChanged: Int
    var verdict: Verdict
    var detail: String?

    enum CodingKeys: String, CodingKey {
        case offered, mtu, bytesWritten = "bytes_written", bytesLanded = "bytes_landed"
        case bytesChanged = "bytes_changed", verdict, detail
    }
}
