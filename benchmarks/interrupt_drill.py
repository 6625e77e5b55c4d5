"""Interrupt a run again and again, then check that nothing was lost or duplicated.

    python benchmarks/interrupt_drill.py --out /tmp/drill                 # serial, 20 interrupts
    python benchmarks/interrupt_drill.py --out /tmp/drill-dask --executor dask --kill-workers
    python benchmarks/interrupt_drill.py --out /tmp/drill-2 --drivers 2 --interrupts 0

Runs a 72-row grid (resnet20 on synthetic data: 3 methods × 2 repairs × 6 sparsities × 2
seeds) as a `reflow run` subprocess, interrupts it at random moments (SIGINT or SIGKILL of the
driver; with ``--kill-workers``, SIGKILL of a Dask worker process mid-task instead, half the
time), restarts it, and after the last interruption runs it to the end. Then it counts rows,
duplicate keys, and probe or layer rows without a result row. Not a test (it takes minutes);
its output is what the issue notes quote.

With ``--drivers N`` it starts N `reflow run` processes on the same folder at once (interrupting
one of them at random each round, if ``--interrupts``), then reports how many rows each driver
computed: with claims (`reflow.claims`) their sum is the grid's size, every row computed once.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

RUN = [
    sys.executable,
    "-m",
    "reflow.cli",
    "run",
    "--model",
    "resnet20",
    "--dataset",
    "synthetic",
    "--method",
    "mp,random,mp_layer",
    "--repair",
    "none,reflow",
    "--sparsity",
    "0.4,0.5,0.6,0.7,0.8,0.9",
    "--seed",
    "0,1",
    "--calib-batches",
    "2",
    "--calib-batch-size",
    "16",
    "--probe-samples",
    "100",
    "--device",
    "cpu",
    "--no-progress",
]


def worker_pids(driver: int) -> list[int]:
    """Processes descended from ``driver`` that run Dask workers."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, stack = [], [driver]
    while stack:
        for pid, args in children.get(stack.pop(), []):
            stack.append(pid)
            if "multiprocessing" in args or "spawn_main" in args:
                found.append(pid)
    return found


def check(folder: Path) -> dict[str, int]:
    db = sqlite3.connect(folder / "results.sqlite")
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "rows": one("SELECT COUNT(*) FROM results"),
        "finished": one("SELECT COUNT(*) FROM results WHERE error IS NULL"),
        "duplicate keys": one(
            "SELECT COUNT(*) FROM (SELECT COUNT(*) c FROM results GROUP BY model, checkpoint, "
            "dataset, method, repair, sparsity, seed, config_hash HAVING c > 1)"
        ),
        "orphan probe rows": one(
            "SELECT COUNT(*) FROM probes WHERE run_id NOT IN (SELECT run_id FROM results)"
        ),
        "orphan layer rows": one(
            "SELECT COUNT(*) FROM layers WHERE run_id NOT IN (SELECT run_id FROM results)"
        ),
        "results without their 19 probe rows": one(
            "SELECT COUNT(*) FROM results r WHERE error IS NULL AND (SELECT COUNT(*) FROM probes "
            "p WHERE p.run_id = r.run_id) != 19"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interrupts", type=int, default=20)
    parser.add_argument("--executor", default="serial")
    parser.add_argument("--kill-workers", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--earliest", type=float, default=8.0, help="seconds before an interrupt")
    parser.add_argument("--latest", type=float, default=16.0)
    parser.add_argument("--drivers", type=int, default=1, help="drivers on one folder at once")
    args = parser.parse_args()
    if args.drivers > 1:
        return drivers_drill(args)
    rng = random.Random(args.seed)
    command = [*RUN, "--out", str(args.out), "--executor", args.executor]
    if args.executor == "dask":
        command += ["--workers", "2", "--threads", "1"]
    done = 0
    kinds: dict[str, int] = {}
    start = time.perf_counter()
    while done < args.interrupts:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(rng.uniform(args.earliest, args.latest))
        if proc.poll() is not None:  # finished before the interrupt: start again from empty
            print("the run finished before interrupt", done + 1, "; restarting from empty")
            subprocess.run(["rm", "-rf", str(args.out)], check=True)
            continue
        workers = worker_pids(proc.pid) if args.kill_workers else []
        if workers and rng.random() < 0.5:
            kind = "SIGKILL of a Dask worker"
            os.kill(rng.choice(workers), signal.SIGKILL)
            time.sleep(rng.uniform(1.0, 3.0))
            os.killpg(proc.pid, signal.SIGINT)
        elif rng.random() < 0.5:
            kind = "SIGINT of the driver"
            os.killpg(proc.pid, signal.SIGINT)
        else:
            kind = "SIGKILL of the driver"
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        done += 1
        kinds[kind] = kinds.get(kind, 0) + 1
        state = check(args.out) if (args.out / "results.sqlite").exists() else {}
        print(f"interrupt {done:2d} ({kind}): {state.get('rows', 0)} rows so far", flush=True)
    final = subprocess.run(command, capture_output=True, text=True)
    print(final.stdout.strip().splitlines()[-1] if final.stdout.strip() else final.stderr[-500:])
    # errored rows (crashes from killed workers) are rerun by a further run, as a user would
    rerun = subprocess.run(command, capture_output=True, text=True)
    print(rerun.stdout.strip().splitlines()[-1] if rerun.stdout.strip() else rerun.stderr[-500:])
    print(f"interrupts: {kinds}; wall {time.perf_counter() - start:.0f} s")
    for key, value in check(args.out).items():
        print(f"{key}: {value}")


def drivers_drill(args: argparse.Namespace) -> None:
    """N drivers on one folder: interrupt one of them per round, then let them all finish."""
    rng = random.Random(args.seed)
    command = [*RUN, "--out", str(args.out)]
    start = time.perf_counter()
    for round_ in range(args.interrupts):
        procs = [
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(args.drivers)
        ]
        time.sleep(rng.uniform(args.earliest, args.latest))
        victim = rng.choice(procs)
        victim.send_signal(rng.choice([signal.SIGINT, signal.SIGKILL]))
        time.sleep(rng.uniform(1.0, 4.0))
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            proc.wait()
        state = check(args.out) if (args.out / "results.sqlite").exists() else {}
        print(f"round {round_ + 1}: {state.get('rows', 0)} rows so far", flush=True)
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(args.drivers)
    ]
    ran = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate()
        line = out.strip().splitlines()[-1] if out.strip() else err[-500:]
        print(f"driver {i + 1} (exit {proc.returncode}): {line}")
        ran.append(int(line.split(" rows run")[0].split()[-1]) if " rows run" in line else -1)
    print(f"rows computed by the final drivers: {ran} (sum {sum(ran)})")
    db = sqlite3.connect(args.out / "results.sqlite")
    workers = db.execute("SELECT worker, COUNT(*) FROM results GROUP BY worker").fetchall()
    print(f"rows per worker process: {dict(workers)}; wall {time.perf_counter() - start:.0f} s")
    for key, value in check(args.out).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
