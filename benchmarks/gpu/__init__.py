"""The GPU kernel benchmark suite (suite.py: measure; report.py: tables; run.sh: the GPU host's driver)."""
