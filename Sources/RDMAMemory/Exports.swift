// What users import: `import RDMAMemory` brings every layer they need.
@_exported import MMUNotifier
@_exported import MemoryMonitor
@_exported import MemoryRegistration
@_exported import Verbs
