import BenchmarkSupport

/// Every table shows medians over the runs, never one run: figures on this shared, emulated
/// hardware vary from run to run, and a median ignores the odd slow one.
enum Medians {
    /// Each figure's median over `runs`, by `FigureResult.key` (figure and parameters).
    static func byKey(_ runs: [[FigureResult]]) -> [String: FigureResult] {
        var byKey: [String: [FigureResult]] = [:]
        for run in runs { for figure in run { byKey[figure.key, default: []].append(figure) } }
        return byKey.compactMapValues { figures in
            guard var figure = figures.first else { return nil }
            figure.value = median(figures.map(\.value))
            return figure
        }
    }
}
