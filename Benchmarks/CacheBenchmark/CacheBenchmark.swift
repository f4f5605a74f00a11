import ArgumentParser
import Foundation

/// The registration cache measured beside UCX's rcache (null registrations on both sides) and,
/// with `--device`, on a real device. Prints a table, writes JSON. Never part of the tests:
/// scripts/run-benchmarks runs it.
@main
struct CacheBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Registration cache figures, side by side with UCX's ucs_rcache.")

    @Option(help: "Runs of every figure; the table shows medians.")
    var runs = 3

    @Option(help: "The UCX peer program (Benchmarks/UCXPeer), to run the same figures with UCX.")
    var ucxPeer: String?

    @Option(help: "Measure real registrations on this device (e.g. rxe0) instead.")
    var device: String?

    @Option(help: "Where to write the figures as JSON.")
    var json: String?

    @Flag(help: "Short iteration counts: a smoke run, not figures to quote.")
    var quick = false

    @Option(help: "Measure only this group of figures (hit, random, miss, evicting, invalidation, throughput), e.g. to profile it.")
    var only: CacheFigures.Group?

    func run() throws {
        let scale = quick ? 10 : 1
        var ours: [[FigureResult]] = []
        var ucx: [[FigureResult]] = []
        for run in 1...max(1, runs) {
            print("run \(run) of \(runs)...")
            if let device {
                ours.append(try DeviceFigures(device: device, scale: scale).all())
            } else {
                ours.append(try CacheFigures(scale: scale).all(only: only))
                if let ucxPeer, only == nil { ucx.append(try UCXPeerRun(executable: ucxPeer, quick: quick).figures()) }
            }
        }
        let (table, data) = Report(ours: ours, ucx: ucx).render()
        print(table)
        if let json {
            try data.write(to: URL(fileURLWithPath: json))
            print("figures written to \(json)")
        }
    }
}
