"""scripts/slurm.sh, run as Slurm would run it: `srun` starts its line once per node. There is no Slurm here,
so `srun` and `scontrol` are stand-ins (two nodes, each line run with its own SLURM_NODEID), and `accelerate`
is Accelerate's own argument parser, which reads each node's command as `accelerate launch` would. What this
cannot see (a real cluster's rendezvous) the multi-machine tests run on one machine (tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

ACCELERATE = f"""#!{sys.executable}
import json, sys
from accelerate.commands.launch import launch_command_parser
assert sys.argv[1] == "launch", sys.argv
args = launch_command_parser().parse_args(sys.argv[2:])
print(json.dumps({{k: getattr(args, k) for k in ("multi_gpu", "num_machines", "num_processes", "machine_rank",
                  "main_process_ip", "main_process_port", "max_restarts", "mixed_precision", "training_script",
                  "training_script_args")}}))
"""


def test_the_slurm_script_gives_each_node_its_own_rank(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"srun": 'for id in 0 1; do SLURM_NODEID=$id "$@"; done\n', "scontrol": "printf 'gpu-a\\ngpu-b\\n'\n",
             "accelerate": None}
    for name, body in stubs.items():
        (bin_dir / name).write_text(ACCELERATE if body is None else "#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_NODEID": "0",
                        "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_JOB_NAME": "big", "SLURM_GPUS_ON_NODE": "4"}
    result = subprocess.run(["bash", "scripts/slurm.sh", "train.epochs=3"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    nodes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [n["machine_rank"] for n in nodes] == [0, 1]  # each node's own, not the submitting node's
    for node in nodes:
        assert node["multi_gpu"] and node["num_machines"] == 2 and node["num_processes"] == 8
        assert node["main_process_ip"] == "gpu-a" and node["max_restarts"] == 3 and node["mixed_precision"] == "bf16"
        assert node["training_script"] == "train.py"
        assert node["training_script_args"] == ["--resume", "auto", "run.name=big", "train.epochs=3"]
