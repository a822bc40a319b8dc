"""Two CPU processes under ``accelerate launch`` must reproduce the single-process loss.

The worker script computes each loss on its rows of a fixed global batch. Here
the same losses run in this process on the whole global batch, and the mean of
the per-process values must equal the single-process value. The gradient that
reaches each process's inputs must be world_size times the single-process
gradient of those rows, and the parameter gradients after the averaging of
DistributedDataParallel must equal the single-process ones.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lungsound_ssl.losses import COLALoss, NTXentLoss

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_dist_loss_worker.py")
NUM_PROCESSES = 2
LAUNCH_TIMEOUT_S = 300


def load_worker():
    spec = importlib.util.spec_from_file_location("_dist_loss_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    """Run the worker on NUM_PROCESSES CPU processes and load what each rank saved."""
    output_dir = tmp_path_factory.mktemp("dist_loss")

    # NOTE: `accelerate launch --cpu --num_processes 2` starts a single process in
    # accelerate 1.16, because its multi-CPU launch needs mpirun and a hostfile.
    # `--multi_gpu` launches through torchrun instead, and ACCELERATE_USE_CPU plus
    # Accelerator(cpu=True) in the worker keep both processes on the CPU (gloo).
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes", str(NUM_PROCESSES),
        "--num_machines", "1",
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(free_port()),
        str(WORKER), str(output_dir),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["ACCELERATE_USE_CPU"] = "true"
    # One thread per process, because the processes share the machine's cores.
    env["OMP_NUM_THREADS"] = "1"

    try:
        completed = subprocess.run(
            command,
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=LAUNCH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"accelerate launch timed out after {LAUNCH_TIMEOUT_S} s: {' '.join(command)}")
    if completed.returncode != 0:
        pytest.fail(
            f"accelerate launch failed with exit code {completed.returncode}:\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )

    return [torch.load(output_dir / f"rank{rank}.pt") for rank in range(NUM_PROCESSES)]


@pytest.fixture(scope="module")
def worker():
    return load_worker()


def single_process_ntxent(worker, batch):
    z_a = batch["z_a"].clone().requires_grad_(True)
    z_b = batch["z_b"].clone().requires_grad_(True)
    loss = NTXentLoss(temperature=worker.TEMPERATURE)(z_a, z_b)
    loss.backward()
    return loss.item(), z_a.grad, z_b.grad


def test_launch_uses_two_processes(rank_results):
    assert [result["world_size"] for result in rank_results] == [NUM_PROCESSES] * NUM_PROCESSES


@pytest.mark.parametrize("case", ["ntxent", "ntxent_uneven"])
def test_ntxent_loss_matches_single_process(rank_results, worker, case):
    expected, _, _ = single_process_ntxent(worker, worker.make_global_batch())
    mean_loss = sum(result[case]["loss"] for result in rank_results) / NUM_PROCESSES
    assert mean_loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", ["ntxent", "ntxent_uneven"])
def test_ntxent_input_grad_matches_single_process(rank_results, worker, case):
    _, grad_a, grad_b = single_process_ntxent(worker, worker.make_global_batch())
    for result in rank_results:
        start, stop = result[case]["rows"]
        torch.testing.assert_close(result[case]["grad_a"] / NUM_PROCESSES, grad_a[start:stop])
        torch.testing.assert_close(result[case]["grad_b"] / NUM_PROCESSES, grad_b[start:stop])


def test_cola_matches_single_process(rank_results, worker):
    batch = worker.make_global_batch()
    z_a = batch["z_a"].clone().requires_grad_(True)
    z_b = batch["z_b"].clone().requires_grad_(True)
    cola = COLALoss(embedding_dim=worker.EMBEDDING_DIM)
    with torch.no_grad():
        cola.bilinear.copy_(batch["bilinear"])
    expected = cola(z_a, z_b)
    expected.backward()

    mean_loss = sum(result["cola"]["loss"] for result in rank_results) / NUM_PROCESSES
    assert mean_loss == pytest.approx(expected.item(), rel=1e-5)
    for result in rank_results:
        start, stop = result["cola"]["rows"]
        torch.testing.assert_close(result["cola"]["grad_a"] / NUM_PROCESSES, z_a.grad[start:stop])
        torch.testing.assert_close(result["cola"]["grad_b"] / NUM_PROCESSES, z_b.grad[start:stop])


def test_ddp_parameter_grads_match_single_process(rank_results, worker):
    batch = worker.make_global_batch()
    torch.manual_seed(worker.SEED)
    model = worker.ContrastiveModel()
    loss = model(batch["x_a"], batch["x_b"])
    loss.backward()

    mean_loss = sum(result["model"]["loss"] for result in rank_results) / NUM_PROCESSES
    assert mean_loss == pytest.approx(loss.item(), rel=1e-5)
    expected = dict(model.named_parameters())
    for result in rank_results:
        assert set(result["model"]["grads"]) == set(expected)
        for name, grad in result["model"]["grads"].items():
            torch.testing.assert_close(grad, expected[name].grad, msg=f"gradient of {name}")
