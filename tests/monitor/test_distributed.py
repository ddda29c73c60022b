"""The monitor under DDP (2 CPU processes, gloo): sharded probes, gathered results, rank 0 logs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from saliency_monitor.monitor.distributed import shard, shard_sizes

SCRIPT = Path(__file__).with_name("_ddp_fit.py")


def run_fit(out: Path, devices: int, *extra: str) -> dict:
    process = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), *extra],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_shards_cover_every_probe_once() -> None:
    for count in range(1, 12):
        for world in range(1, 6):
            covered = [i for rank in range(world) for i in shard(count, world, rank)[0][: shard(count, world, rank)[1]]]
            assert covered == list(range(count)), (count, world)
            assert sum(shard_sizes(count, world)) == count


@pytest.mark.slow
def test_ddp_gives_the_single_process_values(tmp_path) -> None:
    single = run_fit(tmp_path / "single", 1)
    ddp = run_fit(tmp_path / "ddp", 2)
    assert ddp["identities"] == single["identities"]
    assert ddp["errors"] == 0
    # same weights at fit start: the baseline evaluations agree key by key
    base_single, base_ddp = single["evaluations"][0], ddp["evaluations"][0]
    assert base_single["step"] == base_ddp["step"] == 0
    keys = {k for k in base_single if k != "step" and k != "saliency_run/time_s"}
    assert keys == {k for k in base_ddp if k != "step" and k != "saliency_run/time_s"}
    assert {"Saliency/gap_NGsel", "layer_gap/gap_NG_stem", "stderr/Saliency_gap_NG"} <= keys
    for key in keys:
        a, b = base_single[key], base_ddp[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), key
    # DDP halves the steps per epoch (3 batches over 2 ranks): fit start + 2 epoch ends, logged once each
    assert [row["step"] for row in ddp["evaluations"]] == [0, 2, 4]
    pictures = [p for p in ddp["pictures"] if p.startswith("saliency_maps")]
    filmstrips = [p for p in ddp["pictures"] if p.startswith("saliency_evolution")]
    assert len(pictures) == 3 * 2 * 2  # evaluations x splits x methods, written by rank 0 only
    assert len(filmstrips) == 3 * 2 and len(ddp["pictures"]) == 3 * 2 * 3  # one strip per evaluation and split


@pytest.mark.slow
def test_a_fault_on_one_rank_is_counted_and_no_rank_hangs(tmp_path) -> None:
    result = run_fit(tmp_path / "fault", 2, "--fault-rank", "1")
    assert result["global_step"] == 4  # training finished on both ranks
    assert [row["saliency_run/errors"] for row in result["evaluations"]] == [0.0, 1.0, 2.0]


@pytest.mark.slow
def test_a_fault_at_fit_start_on_one_rank_stops_every_rank(tmp_path) -> None:
    process = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "2", "--fault-rank", "1",
                              "--fault-at-fit-start"], capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert "[rank1]: RuntimeError: injected fault on rank 1" in process.stderr  # rank 1 raises its own fault,
    assert "[rank0]: RuntimeError: the saliency evaluation failed on rank(s) [1]" in process.stderr  # rank 0 says so
