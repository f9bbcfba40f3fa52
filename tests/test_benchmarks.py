"""The benchmark suite's runner and one script on small sizes, so that the scripts keep working."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runner_runs_a_benchmark_quickly():
    res = subprocess.run([sys.executable, "benchmarks/run.py", "rdm", "--", "--quick", "--reps", "1"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "pozfast.rdm condensed" in res.stdout and "insertion curve" in res.stdout
    bad = subprocess.run([sys.executable, "benchmarks/run.py", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown benchmark" in bad.stderr


def test_llm_benchmark_quick():
    res = subprocess.run([sys.executable, "benchmarks/llm.py", "--quick", "--no-compile", "--reps", "1"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "tracking, mask, 4 thresholds" in res.stdout and "masked counting hooks" in res.stdout
