"""benchmarks/device_check.py is run by hand on a GPU machine (results in benchmarks/results/device_check_*.json);
this keeps it from rotting on CI, where there is no GPU: its accuracy and sync sections run on the CPU in
quick mode (the sync checks themselves SKIP without CUDA) and must report no failure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_runs_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        rc = module.main(["--device", "cpu", "--quick", "--threads", "1", "--sections", "1", "2", "3",
                          "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the script sets it process-wide
    assert rc == 0
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["counts"]["FAIL"] == 0 and report["counts"]["PASS"] >= 20
    statuses = {c["section"]: set() for c in report["checks"]}
    for c in report["checks"]:
        statuses[c["section"]].add(c["status"])
    assert statuses["2"] == {"PASS"}  # every divergence x dtype, CPU against CPU
    assert statuses["3"] <= {"SKIP", "PASS"}
