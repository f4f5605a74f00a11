// Figures for the userfaultfd monitor: munmap cost watched vs unwatched, latency from munmap
// return to invalidation done, events per second under an unmap storm, watch cost; first with
// munmap intercepted (the default), then as userfaultfd events with the reader sleeping between
// events, then with it spinning briefly after each burst.
// Usage: MonitorBenchmark [rounds] [spin µs]   (defaults 5 and 50; medians over rounds)
let arguments = CommandLine.arguments
let rounds = arguments.count > 1 ? Int(arguments[1]) ?? 5 : 5
let spin = arguments.count > 2 ? Int(arguments[2]) ?? 50 : 50
runFigures(rounds: max(1, rounds), configuration: .init())
runFigures(rounds: max(1, rounds), configuration: .init(interceptsMunmap: false))
runFigures(rounds: max(1, rounds), configuration: .init(spinMicroseconds: spin, interceptsMunmap: false))
