import Foundation
import Verbs

/// Everything `rdmamemory info` says, as one value: collected once, then rendered as text or
/// encoded as JSON, so the two outputs can never disagree and the rendering is testable without
/// a device.
///
/// JSON keys are spelled out in `CodingKeys` (snake_case) so that renaming a Swift property never
/// changes what scripts read; `schema_version` changes when a key does.
struct InfoReport: Codable, Equatable, Sendable {
    static let currentSchemaVersion = 1

    var schemaVersion = Self.currentSchemaVersion
    var devices: [DeviceReport]
    var invalidation: InvalidationReport
    var limits: ProcessLimitsReport
    /// Failures outside any one device (the device list itself).
    var errors: [String] = []

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version", devices, invalidation, limits, errors
    }

    /// True when any query failed: the exit status is then non-zero.
    var hasErrors: Bool { !errors.isEmpty || devices.contains { !$0.errors.isEmpty } }

    /// Asks the verbs layer, the process's memory monitor and the kernel.
    static func collect() -> InfoReport {
        let limits = ProcessLimitsReport.collect()
        let invalidation = InvalidationReport.collect()
        do {
            let devices = try DeviceContext.devices().map { DeviceReport.collect($0) }
            return InfoReport(devices: devices, invalidation: invalidation, limits: limits)
        } catch {
            return InfoReport(devices: [], invalidation: invalidation, limits: limits, errors: ["\(error)"])
        }
    }

    /// One line of JSON (sorted keys), ending in a newline.
    func jsonText() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }
}
