import ArgumentParser
import Foundation

/// The registration cache measured beside UCX's rcache (null registrations on both sides; one
/// or more UCX releases in the same run) and, with `--device`, on a real device against plain
/// verbs. Prints a table, writes JSON. Never part of the tests: scripts/run-benchmarks runs it.
@main
struct CacheBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Registration cache figures, side by side with UCX's ucs_rcache.")

    @Option(help: "Runs of every figure; the table shows medians.")
    var runs = 3

    @Option(help: ArgumentHelp(
        "A build of the UCX peer program (Benchmarks/UCXPeer) as LABEL=PATH, to run the same figures with that UCX; repeat it for several releases (columns in the order given).",
        valueName: "label=path"))
    var ucxPeer: [UCXPeer] = []

    @Option(help: "Measure real registrations on this device (e.g. rxe0) instead.")
    var device: String?

    @Option(help: ArgumentHelp(
        "With --device: a build of the UCX device peer program (Benchmarks/UCXPeer/ucx_rcache_device_peer.c) as LABEL=PATH, run on the same device after ours in every run; repeat it for several releases.",
        valueName: "label=path"))
    var ucxDevicePeer: [UCXPeer] = []

    @Option(help: "With --device: measure only this pair (cycle, miss, miss_evicting, hit), e.g. to profile it.")
    var deviceFigure: String?

    @Option(help: "Where to write the figures as JSON.")
    var json: String?

    @Flag(help: "Short iteration counts: a smoke run, not figures to quote.")
    var quick = false

    @Option(help: "Measure only this group of figures (hit, random, miss, evicting, invalidation, throughput), e.g. to profile it.")
    var only: CacheFigures.Group?

    func run() throws {
        let scale = quick ? 10 : 1
        var ours: [[FigureResult]] = []
        var peers = ucxPeer.map { (label: $0.label, runs: [[FigureResult]]()) }
        var devicePeers = ucxDevicePeer.map { (label: $0.label, runs: [[FigureResult]]()) }
        for run in 1...max(1, runs) {
            print("run \(run) of \(runs)...")
            if let device {
                ours.append(try DeviceFigures(device: device, scale: scale).all(only: deviceFigure))
                for (index, peer) in ucxDevicePeer.enumerated() {
                    devicePeers[index].runs.append(try peer.deviceFigures(device: device, quick: quick))
                }
            } else {
                ours.append(try CacheFigures(scale: scale).all(only: only))
                if only == nil {
                    for (index, peer) in ucxPeer.enumerated() { peers[index].runs.append(try peer.figures(quick: quick)) }
                }
            }
        }
        let (table, data) = device == nil
            ? UCXComparisonReport(ours: ours, peers: only == nil ? peers : []).render()
            : DeviceReport(runs: ours, peers: devicePeers).render()
        print(table)
        if let json {
            try data.write(to: URL(fileURLWithPath: json))
            print("figures written to \(json)")
        }
    }
}
