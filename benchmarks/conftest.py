def pytest_terminal_summary(terminalreporter):
    from test_bench_cpu import speedups

    lines = speedups()
    if lines:
        terminalreporter.section("cpu vs reference (same session)")
        for line in lines:
            terminalreporter.line(line)
