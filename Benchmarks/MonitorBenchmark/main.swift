print("MonitorBenchmark: not written yet")
