// swift-tools-version: 6.1
// RDMAMemory: a device-driver style memory registration layer for RDMA applications.
// One module per layer (see DESIGN.md): a lower module never imports a higher one. The targets
// are grouped below in that order: the C the layers need, the layers bottom to top, libfabric's
// monitor, the programs, the benchmarks, the tests.
import PackageDescription

let swiftSystem = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")

/// C for what Swift cannot do itself.
let cTargets: [Target] = [
    // libibverbs + librdmacm as a system library (Debian: libibverbs-dev, librdmacm-dev).
    .systemLibrary(
        name: "CVerbs",
        path: "CVerbs",
        pkgConfig: "libibverbs",
        providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]
    ),
    // syscall() and ioctl wrappers (userfaultfd's ABI) for the monitor, MemoryMapping and
    // `rdmamemory check`.
    .target(name: "CShims"),
    // The engine's SRCU read side, window sequence and callback depth: NotifierEngine's alone.
    .target(name: "CMMUNotifier"),
    // The cache's per-thread statistics counters: MemoryRegistration's alone.
    .target(name: "CShardedCounters"),
    // The process's munmap, mmap, mremap, madvise, mprotect, shmat, shmdt: a memory monitor sees
    // them in the calling thread (C: they must be defined as C symbols).
    .target(name: "CMemoryHooks"),
]

/// The layers, bottom to top: verbs, the notifier engine, the monitors, the registration cache,
/// and what users import.
let layers: [Target] = [
    .target(name: "Verbs", dependencies: ["CVerbs", swiftSystem]),
    .target(name: "NotifierEngine", dependencies: ["CMMUNotifier"]),
    // Anonymous mappings that tests, examples and benchmarks unmap and remap on purpose.
    .target(name: "MemoryMapping", dependencies: ["CShims", swiftSystem]),
    .target(name: "Monitors", dependencies: ["NotifierEngine", "CShims", "CMemoryHooks", swiftSystem]),
    .target(
        name: "MemoryRegistration",
        dependencies: ["NotifierEngine", "Monitors", "Verbs", "CShardedCounters", .product(name: "Metrics", package: "swift-metrics")]
    ),
    .target(name: "RDMAMemory", dependencies: ["Verbs", "NotifierEngine", "Monitors", "MemoryRegistration"]),
]

/// libfabric's fid_mem_monitor, its import and the preload constructor (Debian: libfabric-dev).
let libfabric: [Target] = [
    .target(name: "CLibfabricMonitor", dependencies: ["CMemoryHooks"], linkerSettings: [.linkedLibrary("fabric")]),
    .target(name: "RDMAMemoryLibfabric", dependencies: ["CLibfabricMonitor", "NotifierEngine", "Monitors"]),
]

/// UCX's memory event source: UCM's VM_UNMAPPED events from the process's engine and monitor, and
/// the interposed calls that tell it what UCX registers (no link to UCX: found at run time).
let ucx: [Target] = [
    .target(name: "CUCXMonitor", dependencies: ["CMemoryHooks"], linkerSettings: [.linkedLibrary("ibverbs"), .linkedLibrary("dl")]),
    .target(name: "RDMAMemoryUCX", dependencies: ["CUCXMonitor", "NotifierEngine", "Monitors"]),
]

/// The examples and `rdmamemory`.
let programs: [Target] = [
    .executableTarget(name: "StaleRegistration", dependencies: ["RDMAMemory", "MemoryMapping"], path: "Examples/StaleRegistration"),
    // zlib's CRC-32 for the transfer example (Debian: zlib1g-dev).
    .systemLibrary(name: "CZlib", path: "Examples/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
    .executableTarget(
        name: "Transfer",
        dependencies: ["Verbs", "MemoryRegistration", "MemoryMapping", "CZlib", argumentParser],
        path: "Examples/Transfer"
    ),
    .executableTarget(
        name: "RDMAMemoryTool",
        dependencies: ["Verbs", "Monitors", "MemoryRegistration", "MemoryMapping", "CShims", argumentParser]
    ),
]

/// Figures, never part of the tests (scripts/run-benchmarks).
let benchmarks: [Target] = [
    // What every benchmark executable shares: threads, clocks, medians.
    .target(name: "BenchmarkSupport", path: "Benchmarks/BenchmarkSupport"),
    .executableTarget(name: "EngineBenchmark", dependencies: ["NotifierEngine", "BenchmarkSupport"], path: "Benchmarks/EngineBenchmark"),
    .executableTarget(
        name: "MonitorBenchmark",
        dependencies: ["Monitors", "MemoryMapping", "BenchmarkSupport", "CShims", "CTestShims"],
        path: "Benchmarks/MonitorBenchmark"
    ),
    .executableTarget(
        name: "CacheBenchmark",
        dependencies: ["MemoryRegistration", "Monitors", "MemoryMapping", "BenchmarkSupport", "Verbs", "CTestShims", argumentParser],
        path: "Benchmarks/CacheBenchmark"
    ),
]

/// One test target per layer, the integration tests on real rxe, and the programs' tests.
let tests: [Target] = [
    // What more than one test target needs (a seeded generator), in no product.
    .target(name: "SharedTestSupport", path: "Tests/SharedTestSupport"),
    // C only tests and benchmarks call (raw system calls no hook sees, fork), in no product.
    .target(name: "CTestShims", path: "Tests/CTestShims"),
    .testTarget(name: "VerbsTests", dependencies: ["Verbs", "MemoryMapping"]),
    .testTarget(name: "NotifierEngineTests", dependencies: ["NotifierEngine", "SharedTestSupport"]),
    .testTarget(name: "MonitorsTests", dependencies: ["Monitors", "MemoryMapping", "CShims", "CTestShims", "SharedTestSupport"]),
    .testTarget(
        name: "MemoryRegistrationTests",
        dependencies: [
            "MemoryRegistration", "MemoryMapping", "CShims", "CTestShims", "SharedTestSupport",
            .product(name: "MetricsTestKit", package: "swift-metrics"),
        ]
    ),
    .testTarget(name: "LibfabricMonitorTests", dependencies: ["RDMAMemoryLibfabric", "NotifierEngine", "Monitors"]),
    .testTarget(name: "IntegrationTests", dependencies: ["Verbs", "MemoryMapping", "MemoryRegistration", "CShims", "CTestShims", "SharedTestSupport"]),
    .testTarget(name: "RDMAMemoryToolTests", dependencies: ["RDMAMemoryTool", "Verbs"]),
    .testTarget(name: "TransferTests", dependencies: ["Transfer"]),
]

let package = Package(
    name: "RDMAMemory",
    // Linux only (rdma-core, userfaultfd). macOS 15 is named so that an editor on a Mac can
    // resolve the Synchronization module's Atomic and Mutex, which are macOS 15 API.
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RDMAMemory", targets: ["RDMAMemory"]),
        .library(name: "Verbs", targets: ["Verbs"]),
        .library(name: "NotifierEngine", targets: ["NotifierEngine"]),
        // What a C program loads (or LD_PRELOADs) to make RDMAMemory libfabric's memory monitor.
        .library(name: "RDMAMemoryLibfabric", type: .dynamic, targets: ["RDMAMemoryLibfabric"]),
        // What scripts/with-rdmamemory preloads: libfabric's monitor and UCX's event source over one
        // engine and monitor, serving whichever of the two stacks the program has.
        .library(name: "RDMAMemoryPreload", type: .dynamic, targets: ["RDMAMemoryLibfabric", "RDMAMemoryUCX"]),
        .executable(name: "stale-registration", targets: ["StaleRegistration"]),
        // The two-host example: a data set over rdma_cm, every byte verified, cache against plain.
        .executable(name: "rdma-transfer", targets: ["Transfer"]),
        // `rdmamemory info` and `rdmamemory check`: devices, ODP, how invalidations reach this
        // process, limits; and proof that the cache stays fresh on this machine.
        .executable(name: "rdmamemory", targets: ["RDMAMemoryTool"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: cTargets + layers + libfabric + ucx + programs + benchmarks + tests,
    swiftLanguageModes: [.v6]
)
