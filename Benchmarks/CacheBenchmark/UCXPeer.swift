import ArgumentParser
import Foundation

/// One build of the UCX peer program (`Benchmarks/UCXPeer`, built by scripts/run-benchmarks
/// against each UCX release it compares with) and the label its column gets, from
/// `--ucx-peer LABEL=PATH`. Several peers run in the same benchmark run, so every release is
/// measured on the same machine at the same time as ours.
struct UCXPeer: ExpressibleByArgument, Sendable {
    /// The column's name, e.g. the UCX release (`1.22.0`).
    var label: String
    var executable: String

    /// `LABEL=PATH`; a bare `PATH` (no `=`) is labelled by its file name.
    init?(argument: String) {
        if let separator = argument.firstIndex(of: "=") {
            label = String(argument[..<separator])
            executable = String(argument[argument.index(after: separator)...])
        } else {
            executable = argument
            label = URL(fileURLWithPath: argument).lastPathComponent
        }
        guard !label.isEmpty, !executable.isEmpty else { return nil }
    }

    /// Runs the peer (`quick`: its short smoke run) and reads its figures, one JSON line each.
    func figures(quick: Bool) throws -> [FigureResult] {
        try figures(arguments: quick ? ["quick"] : [])
    }

    /// Runs a build of the device peer (`ucx_rcache_device_peer.c`, from `--ucx-device-peer`) on
    /// `device`: UCX's rcache with real registrations, and plain verbs measured in the same
    /// process, under the names of `DeviceFigures.pairs`.
    func deviceFigures(device: String, quick: Bool) throws -> [FigureResult] {
        try figures(arguments: [device] + (quick ? ["quick"] : []))
    }

    private func figures(arguments: [String]) throws -> [FigureResult] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchmarkFailure("\(executable) exited with \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap(FigureResult.init(peerLine:))
    }
}
