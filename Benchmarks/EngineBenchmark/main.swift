// Figures for the notifier engine (issue 4). Not a test: prints medians of several runs.
// Usage: swift run -c release EngineBenchmark [runs]
// Everything runs from `Figures.swift` (nonisolated code): a thread entry closure written
// here in top-level code would be inferred @MainActor and trap.
let runs = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 5
runAllFigures(runs: max(1, runs))
