"""Multi-node on one machine: two ``accelerate launch`` invocations (launch/accelerate/cpu-2node.yaml,
one CPU process per "machine", gloo over loopback) form one job, exactly as two real machines would
(``--machine_rank 0|1 --main_process_ip 127.0.0.1 --main_process_port P``).

* plain DDP: world size 2 formed, the ranks read disjoint shards, weights bitwise equal on both
  ranks after the last step, one checkpoint directory holds every rank's files;
* DeepSpeed ZeRO-2 through ``launch/slurm/pretrain.sh`` with ``srun``/``scontrol`` stand-ins (they
  start the script's per-node command twice with SLURM_NODEID=0|1): ``kill -9`` of node 1 mid-run
  makes node 0 exit non-zero within ``dist.timeout_s`` (no hang); the requeue (the same command
  again) resumes and ends bitwise equal to an uninterrupted two-node run;
* bad input fails fast naming the cause: nodes with different process counts, a main address
  nobody listens on, a port in use, a checkpoint of another model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_helpers import (PRESET, REPO, assert_bitwise_equal, env, final_weights, kill_tree, losses,
                            shards, tiny_overrides)  # noqa: F401  (shards is a fixture)

from pretrain.train.checkpoint import find_latest, list_checkpoints

CPU_2NODE = str(REPO / "launch" / "accelerate" / "cpu-2node.yaml")
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TIMEOUT_S = 20  # dist.timeout_s of these runs: a dead peer must end the survivor within this (+ exit)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_cmd(rank: int, port: int, overrides: list[str], ip: str = "127.0.0.1", extra=()) -> list[str]:
    return [ACCELERATE, "launch", "--config_file", CPU_2NODE, "--machine_rank", str(rank), "--main_process_ip", ip,
            "--main_process_port", str(port), *extra, "-m", "pretrain", "--config", PRESET, *overrides]


def _start(cmd: list[str], log: Path, extra_env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env={**env(), **(extra_env or {})}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _two_nodes(overrides: list[str], tmp: Path, tag: str, timeout: float = 300, extra1=()) -> tuple[list[int], list[str]]:
    port = _free_port()
    procs = [_start(_node_cmd(r, port, overrides, extra=extra1 if r == 1 else ()), tmp / f"{tag}.node{r}.log")
             for r in (0, 1)]
    rcs = [p.wait(timeout=timeout) for p in procs]
    return rcs, [(tmp / f"{tag}.node{r}.log").read_text() for r in (0, 1)]


def _over(shards, run_dir, **extra) -> list[str]:
    base = {"run.max_steps": 12, "run.save_every": 4, "run.keep_last": 3, "data.num_workers": 0,
            "dist.timeout_s": TIMEOUT_S}
    return tiny_overrides(shards, run_dir, **{**base, **extra})


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory):
    """A finished two-node DDP run: (run dir, [node 0 log, node 1 log], [exit codes])."""
    tmp = tmp_path_factory.mktemp("ddp")
    run = tmp / "ddp"
    rcs, logs = _two_nodes(_over(shards, run, **{"run.max_steps": 6, "run.save_every": 3}), tmp, "ddp")
    return run, logs, rcs


def test_two_nodes_ddp_world_shards_weights_checkpoint(shards, ddp_run):
    from pretrain.data.stream import TrainOrder, list_shards

    run, logs, rcs = ddp_run
    assert rcs == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "DDP, 2 process(es) on cpu, gloo collectives" in logs[0]
    assert "weights identical on all 2 ranks" in logs[0]
    ckpt = find_latest(run)
    marker = json.loads((ckpt / "COMPLETE.json").read_text())
    assert marker["world_size"] == 2 and ckpt.name == "step_00000006"
    assert {"rank00000.pt", "rank00001.pt", "model.safetensors", "optimizer.pt", "trainer.json"} <= set(marker["files"])
    import torch

    states = [torch.load(ckpt / f"rank0000{r}.pt", weights_only=True)["loader"] for r in (0, 1)]
    assert [(s["rank"], s["world_size"]) for s in states] == [(0, 2), (1, 2)]
    # the shards each rank's stream read so far (its rounds 0..current): disjoint within the epoch
    urls = list_shards(str(shards / "pretrain"))
    read = []
    for s in states:
        order = TrainOrder(urls, 0, s["rank"], 2, 0)
        read.append({i for k in range(s["roles"][0]["round"] + 1) for i in order.round_shards(k)})
    assert read[0] and read[1] and not read[0] & read[1], read
    assert len(losses(run)) == 6


def test_zero2_slurm_kill9_then_requeue_resumes_bitwise(shards, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "slurm"
    over = {"dist.deepspeed": "true", "dist.zero_stage": 2}
    rcs, logs = _two_nodes(_over(shards, ref, **over), tmp_path, "ref")
    assert rcs == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "DeepSpeed ZeRO-2, 2 process(es) on cpu" in logs[0] and "weights identical on all 2 ranks" in logs[0]

    # slurm stand-ins: srun starts its command once per node (SLURM_NODEID=0|1), each in its own
    # session, and records the pids; scontrol prints the node list
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("""#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for n in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$n SLURM_PROCID=$n setsid "$@" > "$SRUN_LOGS/node$n.log" 2>&1 &
  pids+=($!); echo $! > "$SRUN_LOGS/node$n.pid"
done
rc=0; for p in "${pids[@]}"; do wait $p || rc=$?; done; exit $rc
""")
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && tr "," "\\n" <<< "$3"\n')
    for f in ("srun", "scontrol"):
        (bin_dir / f).chmod(0o755)
    logs_dir = tmp_path / "slurm_logs"
    logs_dir.mkdir()
    slurm_env = {**env(), "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                 "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_SUBMIT_DIR": str(REPO),
                 "GPUS_PER_NODE": "1", "ACCEL_CONFIG": CPU_2NODE, "SRUN_LOGS": str(logs_dir)}
    cmd = ["bash", str(REPO / "launch" / "slurm" / "pretrain.sh"), PRESET,
           *_over(shards, run, **over, **{"run.max_steps": 12})]

    def sbatch():
        return subprocess.Popen(cmd, cwd=tmp_path, env={**slurm_env, "MAIN_PORT": str(_free_port())},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    job = sbatch()
    deadline = time.monotonic() + 300
    while find_latest(run) is None or int(find_latest(run).name[5:]) < 4:
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.02)
    kill_tree(int((logs_dir / "node1.pid").read_text()))        # node 1 dies (kill -9, whole tree)
    killed = time.monotonic()
    out = job.communicate(timeout=TIMEOUT_S + 60)[0]
    took = time.monotonic() - killed
    node0 = (logs_dir / "node0.log").read_text()
    assert job.returncode != 0 and not (run / "final").exists(), out[-2000:]
    assert took < TIMEOUT_S + 60, took
    print(f"node 0 exited {took:.1f} s after node 1 was killed")

    job = sbatch()                                                # the requeue: the same command again
    out = job.communicate(timeout=300)[0]
    node0 = (logs_dir / "node0.log").read_text()
    assert job.returncode == 0, out[-2000:] + node0[-3000:]
    assert f"resumed from {run / 'checkpoints'}" in node0
    assert losses(run) == losses(ref)
    assert_bitwise_equal(final_weights(run), final_weights(ref))
    assert {"rank00000.pt", "rank00001.pt", "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", "elastic.pt"} <= \
        set(json.loads((list_checkpoints(run)[-1][1] / "COMPLETE.json").read_text())["files"])


def _fails_fast(cmd, tmp_path, tag, within: float, extra_env=None) -> tuple[str, float]:
    t0 = time.monotonic()
    p = _start(cmd, tmp_path / f"{tag}.log", extra_env)
    try:
        rc = p.wait(timeout=within)
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        pytest.fail(f"{tag}: still running after {within} s")
    assert rc != 0
    return (tmp_path / f"{tag}.log").read_text(), time.monotonic() - t0


def test_bad_input_fails_fast_naming_the_cause(shards, tmp_path, ddp_run):
    run = tmp_path / "bad"
    # nodes launched with different process counts (node 1 brings 2): every worker refuses at start
    rcs, logs = _two_nodes(_over(shards, run), tmp_path, "nproc", timeout=120, extra1=("--num_processes", "4"))
    assert rcs[0] != 0 and rcs[1] != 0
    for log in logs:
        assert "config error: the nodes were launched with different numbers of processes: 3 in total over 2 " \
               "node(s)" in log, log[-2000:]
    assert not run.exists()

    # port already in use on the main node: torchrun's store cannot listen
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        log, took = _fails_fast(_node_cmd(0, port, _over(shards, run)), tmp_path, "port", within=90)
    last = log.strip().splitlines()[-1]  # accelerate checks the port before starting torchrun
    assert str(port) in last and ("another process is utilizing it" in last or "EADDRINUSE" in last), log[-2000:]
    print(f"port in use: failed in {took:.1f} s: {last[:120]}")

    # main address where nobody listens: the rendezvous gives up after its timeout
    log, took = _fails_fast(_node_cmd(1, _free_port(), _over(shards, run), ip="127.0.0.1",
                                      extra=("--rdzv_conf", "timeout=5")), tmp_path, "addr", within=90)
    last = log.strip().splitlines()[-1]
    assert "timed out" in last or "TimeoutError" in last or "Timeout" in last, log[-2000:]
    print(f"main address not listening: failed in {took:.1f} s: {last[:160]}")

    # a checkpoint of another model (another patch size) in run.dir: one line, nothing written
    good = ddp_run[0]
    before = sorted(str(p) for p in good.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "pretrain", "--config", PRESET,
                          *_over(shards, good, **{"run.max_steps": 6, "model.kwargs.patch_size": 4})], cwd=REPO,
                         env=env(), capture_output=True, text=True, timeout=120)
    lines = [x for x in out.stderr.splitlines() if "CheckpointError" in x]
    assert out.returncode == 1 and len(lines) == 1 and "holds another model" in lines[0], out.stderr[-2000:]
    assert sorted(str(p) for p in good.rglob("*")) == before


def test_launch_layout_check_is_pure():
    from pretrain.config import ConfigError
    from pretrain.train.dist_config import check_launch_layout

    check_launch_layout({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2"})
    check_launch_layout({})  # not under torchrun: nothing to check
    with pytest.raises(ConfigError, match="3 in total over 2 node.*this node runs 2"):
        check_launch_layout({"WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2"})
